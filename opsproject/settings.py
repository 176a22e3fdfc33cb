"""The one settings module.

Everything comes from the environment through the strict helpers in
`opsproject.env`, with defaults that make up the embedded deployment: SQLite in
WAL mode and kombu's filesystem broker under `OPS_DATA_DIR` (default `./var`).
Setting `DATABASE_URL` and `CELERY_BROKER_URL` switches to the scaled deployment
(PostgreSQL and Redis); nothing else changes.
"""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from opsproject.env import env_bool, env_float, env_float_list, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

# Where the embedded deployment keeps its database, broker folders and secrets.
# Relative paths are taken from the working directory, so one checkout can run
# several embedded platforms side by side.
DATA_DIR = Path(env_str("OPS_DATA_DIR", "var")).resolve()


def _secret_key() -> str:
    configured = env_str("DJANGO_SECRET_KEY", "")
    if configured:
        return configured
    if env_str("DATABASE_URL", ""):
        # Scaled: every web and worker node must share one key, or sessions and
        # signed values made by one replica are rejected by the next.
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. With DATABASE_URL set (the scaled deployment) every node "
            "must share one secret key; set DJANGO_SECRET_KEY to a long random string, e.g. the "
            "output of: python -c 'import secrets; print(secrets.token_urlsafe(50))'"
        )
    # The embedded deployment keeps a generated key on disk so sessions survive
    # restarts without anyone having to invent a secret.
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    path = DATA_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's assets, served by whitenoise (no CDN)
    "django_celery_results",
    "tenancy",
    "operations",
    "banks",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "opsproject.urls"
WSGI_APPLICATION = "opsproject.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- REST API -------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tenancy.auth.ApiKeyAuthentication",
        "tenancy.auth.StaffSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["core.api.renderers.JSONRenderer"],
    # JSON bodies only; the file upload endpoint declares multipart itself.
    "DEFAULT_PARSER_CLASSES": ["core.api.parsers.JSONParser"],
    # No OPTIONS introspection: the OpenAPI schema describes every endpoint.
    "DEFAULT_METADATA_CLASS": None,
    "EXCEPTION_HANDLER": "core.api.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Operations platform API",
    "DESCRIPTION": (
        "Bank-scoped operations of memory banks, wire-compatible with Hindsight's API. "
        "Authenticate with `Authorization: Bearer <api key>`. Errors are "
        '`{"detail": "...", "errors": {"field": ["reason"]}}`.'
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Swagger UI would otherwise ask validator.swagger.io about the schema.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    "ENUM_NAME_OVERRIDES": {
        "OperationStatusEnum": ["pending", "processing", "completed", "failed", "cancelled"],
        "HealthStatusEnum": ["healthy", "unhealthy"],
    },
}
# Largest accepted request body (JSON); larger is 413.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("OPS_MAX_REQUEST_BYTES", 10 * 1024 * 1024, minimum=1024)
# Uploaded files above this size are spooled to a temporary file while parsed.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024

# --- Database -------------------------------------------------------------------

DATABASE_URL = env_str("DATABASE_URL", "")
if DATABASE_URL:
    try:
        _database = dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)
    except ValueError as exc:
        raise ImproperlyConfigured(f"DATABASE_URL is not a database URL: {exc}") from None
else:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    _database = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(DATA_DIR / "ops.sqlite3"),
        # A file, not memory: the worker processes of a test run share it.
        "TEST": {"NAME": str(DATA_DIR / "test-ops.sqlite3")},
    }
if _database["ENGINE"].endswith("sqlite3"):
    _database["OPTIONS"] = {
        # WAL lets the API read while workers write; IMMEDIATE takes the write
        # lock up front so concurrent transactions queue on busy_timeout
        # instead of failing with "database is locked" on lock upgrade.
        "init_command": "PRAGMA journal_mode=WAL;PRAGMA synchronous=NORMAL",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
DATABASES = {"default": _database}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
EMBEDDED_DATABASE = _database["ENGINE"].endswith("sqlite3")

# --- Auth, i18n, static ---------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LANGUAGE_CODE = "en-us"
# Times to the second in the admin (opsproject/formats).
FORMAT_MODULE_PATH = ["opsproject.formats"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
try:  # whitenoise warns of a missing one at every start (the files come from the apps)
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
except OSError:  # a read-only data folder: only that warning
    pass
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Admin assets are served straight from the installed apps: no collectstatic step.
WHITENOISE_USE_FINDERS = True

OPS_LOG_LEVEL = env_str("OPS_LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": OPS_LOG_LEVEL},
    # Beat's "Sending due task" every few seconds buries what matters (the
    # start-up banner scrolled away within seconds): shown only when debugging.
    "loggers": {"celery.beat": {"level": "DEBUG" if OPS_LOG_LEVEL == "DEBUG" else "WARNING"}},
}

# --- Celery ---------------------------------------------------------------------

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "")
EMBEDDED_BROKER = not CELERY_BROKER_URL
if EMBEDDED_BROKER:
    _broker_dir = DATA_DIR / "broker"
    for _folder in ("queue", "processed", "control"):
        (_broker_dir / _folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://localhost/"  # a host named: kombu warns at every connection otherwise
    # kombu's filesystem transport with atomic writes and claims (see the module).
    CELERY_BROKER_TRANSPORT = "operations.worker.embedded_broker:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
        # Idle workers poll the folder; 20 ms keeps pick-up well under 100 ms.
        "polling_interval": env_float("OPS_BROKER_POLL_SECONDS", 0.02, minimum=0.005),
    }
elif CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    if CELERY_BROKER_URL.startswith("redis://"):
        # kombu's Redis transport with one publishing client per channel (see the module).
        CELERY_BROKER_TRANSPORT = "operations.worker.redis_broker:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # A message a worker fetched but never acknowledged comes back after this
        # long. It must outlast the longest hard time limit: a redelivery of a
        # running operation is dropped by the claim, but it is wasted work.
        "visibility_timeout": env_int("OPS_BROKER_VISIBILITY_TIMEOUT", 3600, minimum=60),
        "socket_connect_timeout": 3,
        "socket_timeout": 10,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {}
    if CELERY_BROKER_URL.startswith(("amqp://", "amqps://", "pyamqp://")):
        # RabbitMQ: queues with priorities, so a bank's first message goes ahead
        # of another bank's window (see dispatch.FIRST_OF_ITS_BANK). A queue
        # declared earlier without them must be deleted once (RabbitMQ refuses
        # to redeclare a queue with other arguments).
        CELERY_TASK_QUEUE_MAX_PRIORITY = 9

CELERY_RESULT_BACKEND = "django-db"
# The Operation row is the record of a run. Celery stores only errors that
# escape the platform (a crash outside a handler, a hard time limit): the
# success path pays nothing for the result backend.
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_STORE_ERRORS_EVEN_IF_IGNORED = True
CELERY_RESULT_EXTENDED = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
# A killed worker's message is acknowledged, not requeued: the lease reaper puts
# the operation back, which also stops an out-of-memory kill from looping.
CELERY_TASK_REJECT_ON_WORKER_LOST = False
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# How long the pool waits for a dead process's result before declaring it lost
# (default 10 s); the platform records outcomes itself, so settle it quickly.
CELERY_WORKER_LOST_WAIT = 1.0
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Celery's Django fixup closes the database connection before and after every
# task unless this is set, so each operation paid for a new PostgreSQL
# connection. Connections are kept as a web process keeps them (CONN_MAX_AGE);
# `operations.tasks` drops a broken or expired one before each task, as Django
# does before each request.
CELERY_DB_REUSE_MAX = 1_000_000_000
# Celery's task events feed Flower (`celery -A opsproject flower`); off by
# default because every task then publishes several event messages (see
# docs/performance.md for the measured cost). Flower also switches them on at run time.
OPS_TASK_EVENTS = env_bool("OPS_TASK_EVENTS", False)
CELERY_WORKER_SEND_TASK_EVENTS = OPS_TASK_EVENTS
CELERY_TASK_SEND_SENT_EVENT = OPS_TASK_EVENTS
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = "ops.system"
# A failed publish must not hold a request: the sweeper re-publishes what the
# broker did not take.
CELERY_TASK_PUBLISH_RETRY = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")

# --- The platform -----------------------------------------------------------------

# This node's name, shown on the operations it runs.
OPS_NODE_NAME = env_str("OPS_NODE_NAME", socket.gethostname())
# Extra modules that declare operation types (imported at start-up).
OPS_OPERATION_TYPE_MODULES = env_list("OPS_OPERATION_TYPE_MODULES", [])
OPS_WORKER_MAX_SLOTS = env_int("OPS_WORKER_MAX_SLOTS", 10, minimum=1)
OPS_WORKER_MAX_RETRIES = env_int("OPS_WORKER_MAX_RETRIES", 3, minimum=0)
# The CPU priority (nice) of the operation workers `runworkers` starts: on a
# host they share with the API server, a crowd of retains takes every core
# left over, not the ones requests need (the system worker, which sweeps and
# reaps, keeps the normal priority). 0 runs them like everything else; on a
# host of their own it changes nothing.
OPS_WORKER_NICE = env_int("OPS_WORKER_NICE", 10, minimum=0, maximum=19)
# Deadlocks, serialization failures, lost connections: retried at once without
# spending OPS_WORKER_MAX_RETRIES, this many times per attempt (core.transient).
OPS_TRANSIENT_RETRIES = env_int("OPS_TRANSIENT_RETRIES", 10, minimum=0)
# The hot path's statements (claim, pick, finish) as server-side prepared
# statements on PostgreSQL: planned once per connection, not per operation.
# Off behind a pooler in transaction mode that does not track them
# (PgBouncer before 1.21, or without max_prepared_statements).
OPS_PREPARED_STATEMENTS = env_bool("OPS_PREPARED_STATEMENTS", True)
OPS_RETRY_BACKOFF_SECONDS = env_float("OPS_RETRY_BACKOFF_SECONDS", 2.0, minimum=0)
OPS_RETRY_BACKOFF_CAP_SECONDS = env_float("OPS_RETRY_BACKOFF_CAP_SECONDS", 600.0, minimum=0)
OPS_LEASE_SECONDS = env_float("OPS_LEASE_SECONDS", 60.0, minimum=1)
OPS_HEARTBEAT_SECONDS = env_float("OPS_HEARTBEAT_SECONDS", OPS_LEASE_SECONDS / 4, minimum=0.1)
if OPS_HEARTBEAT_SECONDS >= OPS_LEASE_SECONDS:
    raise ImproperlyConfigured(
        f"OPS_HEARTBEAT_SECONDS ({OPS_HEARTBEAT_SECONDS}) must be shorter than OPS_LEASE_SECONDS ({OPS_LEASE_SECONDS})."
    )
OPS_SWEEP_INTERVAL_SECONDS = env_float("OPS_SWEEP_INTERVAL_SECONDS", 5.0, minimum=0.1)
OPS_REDISPATCH_SECONDS = env_float("OPS_REDISPATCH_SECONDS", 120.0, minimum=1)
# While another bank waits, one bank holds at most this share of a worker
# pool's slots (at least one); all of them when nobody else waits (operations.fair_share).
OPS_BANK_SHARE = env_float("OPS_BANK_SHARE", 0.5, minimum=0.01, maximum=1.0)
# Messages per operation type in the broker at once; a backlog waits in the database.
OPS_DISPATCH_WINDOW = env_int("OPS_DISPATCH_WINDOW", 100, minimum=1)
OPS_CANCEL_GRACE_SECONDS = env_float("OPS_CANCEL_GRACE_SECONDS", 30.0, minimum=0)
OPS_OPERATION_RETENTION_DAYS = env_int("OPS_OPERATION_RETENTION_DAYS", 30, minimum=1)
# PostgreSQL: seconds after it finished that the sweep moves an operation from
# the live rows' partition to its span's, the days one partition of finished
# operations spans (the prune drops one whole: a week keeps the partitions
# few, and planning a query costs per partition), and how many days ahead
# the prune makes them.
OPS_FILE_FINISHED_AFTER_SECONDS = env_float("OPS_FILE_FINISHED_AFTER_SECONDS", 10.0, minimum=0)
OPS_PARTITION_DAYS = env_int("OPS_PARTITION_DAYS", 7, minimum=1, maximum=366)
OPS_PARTITIONS_AHEAD_DAYS = env_int("OPS_PARTITIONS_AHEAD_DAYS", 7, minimum=1, maximum=366)
# The memory-bank domain.
OPS_EXTRACTOR = env_str("OPS_EXTRACTOR", "banks.extraction.RuleBasedExtractor")
OPS_RETAIN_BATCH_ITEMS = env_int("OPS_RETAIN_BATCH_ITEMS", 100, minimum=1)
OPS_SYNC_RETAIN_MAX_ITEMS = env_int("OPS_SYNC_RETAIN_MAX_ITEMS", 50, minimum=1)
OPS_SYNC_RETAIN_MAX_BYTES = env_int("OPS_SYNC_RETAIN_MAX_BYTES", 256 * 1024, minimum=1024)
# Webhooks: private, loopback, link-local, multicast and reserved addresses are
# refused (SSRF) unless this is set; the delays between delivery attempts.
OPS_WEBHOOK_ALLOW_PRIVATE = env_bool("OPS_WEBHOOK_ALLOW_PRIVATE", False)
OPS_WEBHOOK_RETRY_DELAYS = env_float_list("OPS_WEBHOOK_RETRY_DELAYS", [5, 300, 1800, 7200, 18000], minimum=0)
# Deepest nesting of objects and arrays a JSON body may have (400 beyond).
OPS_MAX_JSON_DEPTH = env_int("OPS_MAX_JSON_DEPTH", 32, minimum=4, maximum=512)
OPS_MAX_UPLOAD_BYTES = env_int("OPS_MAX_UPLOAD_BYTES", 20 * 1024 * 1024, minimum=1024)
OPS_BIND = env_str("OPS_BIND", "127.0.0.1:8000")
OPS_WEB_WORKERS = env_int("OPS_WEB_WORKERS", 2, minimum=1)
# How often the live dashboard refreshes its panels (while its tab is visible).
OPS_DASHBOARD_REFRESH_SECONDS = env_float("OPS_DASHBOARD_REFRESH_SECONDS", 3.0, minimum=0.2)

SUPERSEDED_AFTER = 10.0  # seconds: the shortest expiry of a beat task
CELERY_BEAT_SCHEDULE = {
    "sweep": {
        "task": "ops.sweep",
        "schedule": OPS_SWEEP_INTERVAL_SECONDS,
        # A sweep nobody ran in time is superseded by the next one. Not
        # sooner than 10 s: on a busy host (the cores taken, the broker
        # holding publishers back) one can wait a few seconds, and still runs.
        "options": {"queue": "ops.system", "expires": max(OPS_SWEEP_INTERVAL_SECONDS * 2, SUPERSEDED_AFTER)},
    },
}
CELERY_BEAT_SCHEDULE["delete_finished_files"] = {
    "task": "ops.delete_finished_files",
    "schedule": 60.0,
    "options": {"queue": "ops.system", "expires": 60.0},
}
# Scheduled mental-model refreshes: due runs are looked for as often as the sweep runs.
CELERY_BEAT_SCHEDULE["refresh_scheduled_mental_models"] = {
    "task": "ops.refresh_scheduled_mental_models",
    "schedule": OPS_SWEEP_INTERVAL_SECONDS,
    "options": {"queue": "ops.system", "expires": max(OPS_SWEEP_INTERVAL_SECONDS * 2, SUPERSEDED_AFTER)},
}
CELERY_BEAT_SCHEDULE["prune"] = {
    "task": "ops.prune",
    "schedule": 3600.0,
    "options": {"queue": "ops.system", "expires": 3600.0},
}
