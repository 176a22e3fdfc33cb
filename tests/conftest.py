"""The test cast and the real parts: PostgreSQL, Redis and Celery worker processes.

The environment (database, broker) is set by `tests/testenv.py` before Django starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], *, timeout: float = 30, interval: float = 0.05,
             message: str = "condition") -> Any:
    """Poll until `predicate()` is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@pytest.fixture(scope="session", autouse=True)
def _clean_broker() -> None:
    import redis

    redis.Redis.from_url(os.environ["CELERY_BROKER_URL"]).flushdb()


@pytest.fixture
def alpha(db: None) -> Any:
    from banks.models import Bank

    return Bank.objects.create(bank_id="alpha", name="Alpha")


@pytest.fixture
def beta(db: None) -> Any:
    from banks.models import Bank

    return Bank.objects.create(bank_id="beta", name="Beta")


def worker_environment(**overrides: str) -> dict[str, str]:
    """The environment of a worker process: the test database, the test broker."""
    from django.db import connection

    settings_dict = connection.settings_dict
    env = dict(os.environ)
    env.update(
        DATABASE_URL=(
            f"postgres://{settings_dict['USER']}@{settings_dict['HOST']}:{settings_dict['PORT']}"
            f"/{settings_dict['NAME']}"
        ),
        PYTHONPATH=str(PROJECT_DIR),
        OPS_LOG_LEVEL="INFO",
        OPS_NODE_NAME="testnode",
    )
    env.update(overrides)
    return env


class Workers:
    """A `manage.py runworkers` process tree started by a test."""

    def __init__(self, log_path: Path, env: dict[str, str]) -> None:
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, str(PROJECT_DIR / "manage.py"), "runworkers", "--loglevel", "INFO"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, count: int, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"runworkers exited early:\n{self.output()[-3000:]}")
            return self.output().count(" ready.") >= count

        wait_for(ready, timeout=timeout, message=f"{count} workers to be ready")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


@pytest.fixture
def start_workers(transactional_db: None, tmp_path: Path) -> Iterator[Callable[..., Workers]]:
    """Start `runworkers` with environment overrides; waits until every worker
    of the plan (plus the system worker) is ready. Stopped after the test."""
    started: list[Workers] = []

    def start(*, ready: int, **env: str) -> Workers:
        workers = Workers(tmp_path / f"workers-{len(started)}.log", worker_environment(**env))
        started.append(workers)
        workers.wait_ready(ready)
        return workers

    yield start
    for workers in started:
        workers.stop()


def operation(pk: Any) -> Any:
    from operations.models import Operation

    return Operation.objects.get(pk=pk)
