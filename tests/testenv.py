"""Environment defaults for the test run, loaded as a pytest plugin (`-p
tests.testenv` in pyproject) so they are set before Django reads its settings.

PostgreSQL and Redis on localhost; the broker is a Redis database of its own
(OPS_TEST_REDIS_DB, default 11), flushed at the start of the session.
"""

from __future__ import annotations

import os

REDIS_DB = int(os.environ.get("OPS_TEST_REDIS_DB", "11"))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/ops")
os.environ.setdefault("CELERY_BROKER_URL", f"redis://127.0.0.1:6379/{REDIS_DB}")
os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz")
os.environ.setdefault("OPS_OPERATION_TYPE_MODULES", "tests.optypes")
os.environ.setdefault("OPS_LOG_LEVEL", "WARNING")
# Tests size their slot plans themselves; the built-in consolidation
# reservation (2) is tested where it is the point.
os.environ.setdefault("OPS_WORKER_CONSOLIDATION_RESERVED_SLOTS", "0")
