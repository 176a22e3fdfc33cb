"""The environment of a test run, loaded as a pytest plugin (`-p tests.testenv`
in pyproject) so it is set before Django reads its settings.

Three deployments, chosen by `OPS_TEST_DEPLOYMENT`:

- `scaled` (default): PostgreSQL and Redis on localhost, from `TEST_DATABASE_URL`
  and `TEST_BROKER_URL` only. A `DATABASE_URL` or `CELERY_BROKER_URL` already in
  the environment is ignored, so the suite never touches a database or broker it
  was not given for tests. The broker is flushed at the start of the session, so
  it must be a Redis database of its own: db 0 is refused.
- `embedded`: the default users' run, SQLite (a file, so worker processes share
  it) and the filesystem broker, both in a fresh temporary directory.
- `rabbitmq`: PostgreSQL from `TEST_DATABASE_URL` and RabbitMQ from
  `TEST_RABBITMQ_URL`, in a virtual host of its own (never `/`), which the
  session deletes and makes again (`rabbitmqctl`) to start empty.
"""

from __future__ import annotations

import os
import tempfile
from urllib.parse import urlparse

DEPLOYMENT = os.environ.get("OPS_TEST_DEPLOYMENT", "scaled")
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/ops"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/11"
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/ops-tests"


class UnsafeTestBroker(RuntimeError):
    pass


def redis_db(url: str) -> int:
    """The Redis database number of a redis:// URL (0 when it names none)."""
    parsed = urlparse(url)
    path = parsed.path.strip("/")
    if path:
        return int(path)
    for part in parsed.query.split("&"):
        if part.startswith("db="):
            return int(part[3:])
    return 0


def check_test_broker(url: str) -> str:
    """The suite flushes its broker: refuse anything but a numbered Redis
    database other than 0."""
    if not url.startswith(("redis://", "rediss://")):
        raise UnsafeTestBroker(f"TEST_BROKER_URL must be a redis:// URL (got {url!r})")
    if redis_db(url) == 0:
        raise UnsafeTestBroker(
            f"TEST_BROKER_URL {url!r} names Redis database 0; the suite flushes its broker, "
            "so give it a database of its own, e.g. redis://127.0.0.1:6379/11"
        )
    return url


def rabbitmq_vhost(url: str) -> str:
    """The virtual host of an amqp:// URL, refused when it is the default one
    (the suite deletes and remakes it)."""
    if not url.startswith("amqp://"):
        raise UnsafeTestBroker(f"TEST_RABBITMQ_URL must be an amqp:// URL (got {url!r})")
    vhost = urlparse(url).path[1:]
    if vhost in ("", "/"):
        raise UnsafeTestBroker(
            f"TEST_RABBITMQ_URL {url!r} names the default virtual host; the suite deletes its own, "
            "so give it one, e.g. amqp://guest:guest@127.0.0.1:5672/ops-tests"
        )
    return vhost


for _inherited in ("DATABASE_URL", "CELERY_BROKER_URL", "OPS_DATA_DIR"):
    os.environ.pop(_inherited, None)
if DEPLOYMENT == "scaled":
    os.environ["DATABASE_URL"] = os.environ.get("TEST_DATABASE_URL", DEFAULT_DATABASE_URL)
    os.environ["CELERY_BROKER_URL"] = check_test_broker(os.environ.get("TEST_BROKER_URL", DEFAULT_BROKER_URL))
elif DEPLOYMENT == "embedded":
    os.environ["OPS_DATA_DIR"] = tempfile.mkdtemp(prefix="ops-embedded-tests-")
elif DEPLOYMENT == "rabbitmq":
    os.environ["DATABASE_URL"] = os.environ.get("TEST_DATABASE_URL", DEFAULT_DATABASE_URL)
    os.environ["CELERY_BROKER_URL"] = os.environ.get("TEST_RABBITMQ_URL", DEFAULT_RABBITMQ_URL)
    rabbitmq_vhost(os.environ["CELERY_BROKER_URL"])
else:
    raise RuntimeError(f"OPS_TEST_DEPLOYMENT must be 'scaled', 'embedded' or 'rabbitmq', not {DEPLOYMENT!r}")

os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz")
os.environ.setdefault("OPS_OPERATION_TYPE_MODULES", "tests.optypes")
os.environ.setdefault("OPS_LOG_LEVEL", "WARNING")
# Tests size their slot plans themselves; the built-in consolidation
# reservation (2) is tested where it is the point.
os.environ.setdefault("OPS_WORKER_CONSOLIDATION_RESERVED_SLOTS", "0")
