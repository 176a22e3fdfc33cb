"""The test cast and the real parts: PostgreSQL, Redis and Celery worker processes.

The environment (database, broker) is set by `tests/testenv.py` before Django starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from bench.procs import terminate

PROJECT_DIR = Path(__file__).resolve().parent.parent


def wait_for(
    predicate: Callable[[], Any], *, timeout: float = 30, interval: float = 0.05, message: str = "condition"
) -> Any:
    """Poll until `predicate()` is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


EMBEDDED = os.environ.get("OPS_TEST_DEPLOYMENT") == "embedded"
RABBITMQ = os.environ.get("OPS_TEST_DEPLOYMENT") == "rabbitmq"
# Fixtures that start processes or servers: a test using one is slow, and
# `make test-fast` (-m "not workers") leaves it out.
SLOW_FIXTURES = {"start_workers", "live_server", "private_broker"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.workers)


@pytest.fixture(scope="session", autouse=True)
def _clean_broker() -> None:
    """Start from an empty broker. Embedded: a fresh folder already. Scaled: the
    Redis database testenv checked is the suite's own (never db 0). RabbitMQ:
    the suite's virtual host, deleted and made again."""
    if EMBEDDED:
        return
    if RABBITMQ:
        from tests.testenv import rabbitmq_vhost

        vhost = rabbitmq_vhost(os.environ["CELERY_BROKER_URL"])
        user = urlparse(os.environ["CELERY_BROKER_URL"]).username or "guest"
        for command in (
            ["delete_vhost", vhost],
            ["add_vhost", vhost],
            ["set_permissions", "-p", vhost, user, ".*", ".*", ".*"],
        ):
            done = subprocess.run(["rabbitmqctl", "-q", *command], capture_output=True, text=True, check=False)
            if done.returncode != 0 and command[0] != "delete_vhost":
                pytest.exit(f"rabbitmqctl {' '.join(command)} failed: {done.stderr.strip()} (is RabbitMQ running?)")
        return
    import redis

    from tests.testenv import check_test_broker

    redis.Redis.from_url(check_test_broker(os.environ["CELERY_BROKER_URL"])).flushdb()


@pytest.fixture(autouse=True)
def _fresh_dispatch_state() -> None:
    """Each test's database starts empty: so do this process's estimates of
    the dispatch windows and its fair-pick cursors."""
    from operations.lifecycle import dispatch

    dispatch.forget_process_state()


def needs_redis(what: str) -> None:
    """Skip, on the deployments whose broker is not Redis, a test of the Redis broker's own path."""
    if EMBEDDED or RABBITMQ:
        pytest.skip(f"tests {what}: runs in the scaled (PostgreSQL + Redis) session")


def needs_scaled(what: str) -> None:
    """Skip on the embedded deployment a test of something only the scaled one has."""
    if EMBEDDED:
        pytest.skip(f"needs {what}: runs in the scaled (PostgreSQL + Redis) session")


@pytest.fixture
def alpha(db: None) -> Any:
    from tenancy.models import Bank

    return Bank.objects.create(bank_id="alpha", name="Alpha")


@pytest.fixture
def beta(db: None) -> Any:
    from tenancy.models import Bank

    return Bank.objects.create(bank_id="beta", name="Beta")


# Short leases and a fast sweeper, so that recovery (the reaper, re-publishing,
# retries) happens within seconds: what the fault tests run workers with.
FAST_RECOVERY = {
    "OPS_LEASE_SECONDS": "3",
    "OPS_HEARTBEAT_SECONDS": "0.5",
    "OPS_SWEEP_INTERVAL_SECONDS": "0.5",
    "OPS_REDISPATCH_SECONDS": "3",
    "OPS_RETRY_BACKOFF_SECONDS": "0.2",
    "OPS_RETRY_BACKOFF_CAP_SECONDS": "1",
}


def worker_environment(**overrides: str) -> dict[str, str]:
    """The environment of a worker process: the test database, the test broker."""
    from django.db import connection

    settings_dict = connection.settings_dict
    if connection.vendor == "sqlite":
        database_url = f"sqlite:///{settings_dict['NAME']}"
    else:
        database_url = (
            f"postgres://{settings_dict['USER']}@{settings_dict['HOST']}:{settings_dict['PORT']}"
            f"/{settings_dict['NAME']}"
        )
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        PYTHONPATH=str(PROJECT_DIR),
        OPS_LOG_LEVEL="INFO",
        OPS_NODE_NAME="testnode",
    )
    env.update(overrides)
    return env


class Workers:
    """A `manage.py runworkers` process tree (and optionally a beat scheduler)
    started by a test."""

    def __init__(
        self, log_path: Path, env: dict[str, str], *, beat: bool = False, prefix: tuple[str, ...] = ()
    ) -> None:
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.env = env
        # `prefix`: what runs it elsewhere, e.g. `ip netns exec <host>` (tests/integration/test_hosts.py).
        self.process = subprocess.Popen(
            [*prefix, sys.executable, str(PROJECT_DIR / "manage.py"), "runworkers", "--loglevel", "INFO"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.beat: subprocess.Popen[bytes] | None = None
        if beat:
            self.beat = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "opsproject",
                    "beat",
                    "--loglevel",
                    "INFO",
                    "--schedule",
                    str(log_path.with_suffix(".beat")),
                ],
                env=env,
                stdout=self.log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
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
        """Beat, then the workers: each asked to stop, killed (with what it
        started) when it has not in time, so that none outlives the test."""
        if self.beat is not None:
            terminate(self.beat, timeout=20)
        terminate(self.process, timeout=40)
        self.log.close()


@pytest.fixture
def start_workers(transactional_db: None, tmp_path: Path) -> Iterator[Callable[..., Workers]]:
    """Start `runworkers` with environment overrides; waits until every worker
    of the plan (plus the system worker) is ready. Stopped after the test."""
    started: list[Workers] = []

    def start(*, ready: int, beat: bool = False, prefix: tuple[str, ...] = (), **env: str) -> Workers:
        workers = Workers(tmp_path / f"workers-{len(started)}.log", worker_environment(**env), beat=beat, prefix=prefix)
        started.append(workers)
        workers.wait_ready(ready)
        return workers

    yield start
    for workers in started:
        workers.stop()


def operation(pk: Any) -> Any:
    from operations.models import Operation

    return Operation.objects.get(pk=pk)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of the test's own, so a test can stop, restart and flush
    the broker without touching anything else. Like the machine's, it keeps
    nothing on disk: a restart loses every queued message."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_for(up, timeout=10, message="the private redis-server")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def flush(self) -> None:
        import redis

        redis.Redis(port=self.port).flushall()


def _point_celery_at(url: str) -> None:
    from kombu import pools

    from opsproject.celery import app

    pools.reset()  # closes and forgets kombu's process-wide connection pools
    app.conf.update(broker_url=url, broker_write_url=url, broker_read_url=url)
    app._after_fork()  # drops the app's references to them


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private Redis that this test process publishes to; give workers
    CELERY_BROKER_URL=private_broker.url."""
    from django.conf import settings

    needs_scaled("a Redis broker of the test's own")
    broker = PrivateRedis(tmp_path)
    broker.start()
    _point_celery_at(broker.url)
    try:
        yield broker
    finally:
        _point_celery_at(settings.CELERY_BROKER_URL)
        broker.stop()


# --- the API cast: two banks, an admin key, scoped keys, an outsider ------------------


class Caller:
    """An API client holding one key (or none)."""

    def __init__(self, raw_key: str | None) -> None:
        from rest_framework.test import APIClient

        self.client = APIClient()
        if raw_key:
            self.client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")

    def __getattr__(self, method: str) -> Any:
        call = getattr(self.client, method)

        def request(url: str, data: Any = None, **kwargs: Any) -> Any:
            if method in ("post", "put", "patch", "delete") and "format" not in kwargs:
                kwargs["format"] = "json"
            return call(f"/v1/default/{url.lstrip('/')}", data, **kwargs)

        return request


def _key(**kwargs: Any) -> str:
    from tenancy.api_keys import api_key_create

    return api_key_create(**kwargs)[1]


@pytest.fixture
def admin(db: None) -> Caller:
    return Caller(_key(name="admin", admin=True))


@pytest.fixture
def alice(db: None) -> Caller:
    """Scoped to bank alpha."""
    return Caller(_key(name="alice", bank_ids=["alpha"]))


@pytest.fixture
def bob(db: None) -> Caller:
    """Scoped to banks alpha and beta."""
    return Caller(_key(name="bob", bank_ids=["alpha", "beta"]))


@pytest.fixture
def charlie(db: None) -> Caller:
    """Scoped to a bank nobody else uses: an outsider to alpha and beta."""
    return Caller(_key(name="charlie", bank_ids=["gamma"]))


@pytest.fixture
def anonymous(db: None) -> Caller:
    return Caller(None)


def race(*sides: Callable[[], Any]) -> list[Any]:
    """Run every side in its own thread (its own connection), released together."""
    barrier = threading.Barrier(len(sides))
    results: list[Any] = [None] * len(sides)
    errors: list[BaseException] = []

    def run(index: int, side: Callable[[], Any]) -> None:
        try:
            barrier.wait()
            results[index] = side()
        except BaseException as exc:  # reported to the test below
            errors.append(exc)
        finally:
            from django.db import connection

            connection.close()

    threads = [threading.Thread(target=run, args=(i, s)) for i, s in enumerate(sides)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results
