"""The benchmark behind `make bench` (`manage.py bench`): the embedded
platform against bare Celery on the same broker, in one run.

Each side runs in child processes of its own, in a fresh temporary directory,
on the embedded defaults (SQLite in WAL mode, kombu's filesystem transport):

- platform: `runworkers` with N slots and beat; a backlog of operations of a
  no-op type is submitted through the lifecycle service, then timed until every
  row is `completed`; then single operations submitted to idle workers time the
  pick-up (submitted -> seen completed).
- bare Celery: a worker with the same concurrency and a no-op task; the same
  number of messages is sent and timed until every task has run.

Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from operations.handlers import OperationContext

PROJECT_DIR = Path(__file__).resolve().parent.parent


def noop(ctx: OperationContext) -> None:
    return None


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SECRET_KEY") and not k.startswith("OPS_")
    }
    env.update(
        OPS_DATA_DIR=str(data_dir), PYTHONPATH=str(PROJECT_DIR), OPS_LOG_LEVEL="WARNING",
        OPS_OPERATION_TYPE_MODULES="operations.bench_types", **extra,
    )
    return env


def _wait(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark: timed out waiting for {what}")
        time.sleep(interval)


def _pickups(submit: Any, rounds: int = 20) -> list[float]:
    """Seconds from submitting one job to idle workers until it is seen done;
    `submit()` returns a predicate telling whether that job is done. Both
    sides are measured alike, polling every 2 ms."""
    latencies = []
    for _ in range(rounds):
        sent = time.monotonic()
        done = submit()
        _wait(done, 60, "one job", interval=0.002)
        latencies.append(time.monotonic() - sent)
    return latencies


def _figures(count: int, started: float, submitted: float, finished: float, pickups: list[float]) -> dict[str, Any]:
    return {
        "submit_per_second": count / (submitted - started),
        "drain_seconds": finished - submitted,
        "drain_per_second": count / (finished - submitted),
        "pickup_median_ms": statistics.median(pickups) * 1000,
        "pickup_max_ms": max(pickups) * 1000,
    }


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def platform_side(count: int, slots: int, progress: Any) -> dict[str, Any]:
    """Run in a child process whose settings are the embedded defaults."""
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import transaction

    from banks.models import Bank
    from operations import services
    from operations.models import Operation

    call_command("migrate", verbosity=0)
    data_dir = Path(os.environ["OPS_DATA_DIR"])
    log = open(data_dir / "workers.log", "wb")
    workers = subprocess.Popen(
        [sys.executable, str(PROJECT_DIR / "manage.py"), "runworkers"],
        env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "opsproject", "beat", "-s", str(data_dir / "beat")],
        env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    flower = _start_flower(data_dir, log) if os.environ.get("OPS_BENCH_FLOWER") else None
    try:
        from operations.models import WorkerNode

        _wait(lambda: WorkerNode.objects.count() >= 2, 120, "workers")
        Bank.objects.get_or_create(bank_id="bench")
        started = time.monotonic()
        with transaction.atomic():
            for _ in range(count):
                services.operation_submit(bank_id="bench", operation_type="bench_noop")
        submitted = time.monotonic()
        progress(f"platform: {count} operations submitted in {submitted - started:.1f}s; draining")

        def drained() -> bool:
            return not Operation.objects.exclude(status="completed").exists()

        _wait(drained, 3600, "the backlog to drain")
        finished = time.monotonic()

        def submit_one() -> Any:
            pk = services.operation_submit(bank_id="bench", operation_type="bench_noop").operation.pk
            return Operation.objects.filter(pk=pk, status="completed").exists

        figures = _figures(count, started, submitted, finished, _pickups(submit_one))
        if flower is not None:
            figures["flower_tasks_seen"] = _flower_task_count(flower[1])
        return figures
    finally:
        if flower is not None:
            _stop(flower[0])
        _stop(beat)
        _stop(workers)


def _start_flower(data_dir: Path, log: Any) -> tuple[subprocess.Popen[bytes], str]:
    """Flower listening to the workers' events, as an operator would run it."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "opsproject", "flower", "--address=127.0.0.1",
         f"--port={port}", f"--db={data_dir / 'flower.db'}", "--max_tasks=100000"],
        env={**os.environ, "FLOWER_UNAUTHENTICATED_API": "true"},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/healthcheck", timeout=2).text == "OK"
        except httpx.HTTPError:
            return False

    _wait(up, 120, "flower")
    return process, url


def _flower_task_count(url: str) -> int:
    """How many tasks Flower saw (it keeps them in memory, from the events)."""
    import httpx

    return len(httpx.get(f"{url}/api/tasks", params={"limit": 200_000}, timeout=60).json())


def celery_side(count: int, slots: int, progress: Any) -> dict[str, Any]:
    """Bare Celery on the same filesystem broker, a no-op task that leaves a mark."""
    from operations.bench_celery import app, marks_file

    data_dir = Path(os.environ["OPS_DATA_DIR"])
    log = open(data_dir / "celery.log", "wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "operations.bench_celery", "worker", "-c", str(slots),
         "--prefetch-multiplier", "1", "--without-mingle", "--without-gossip", "-l", "WARNING"],
        env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        marks = marks_file()
        marks.touch()

        def done() -> int:
            return marks.stat().st_size  # one byte per task

        app.send_task("bench.noop")  # warm up: the worker is ready when it has run
        _wait(lambda: done() >= 1, 120, "the celery worker")
        started = time.monotonic()
        for _ in range(count):
            app.send_task("bench.noop")
        submitted = time.monotonic()
        progress(f"bare celery: {count} tasks sent in {submitted - started:.1f}s; draining")
        _wait(lambda: done() >= count + 1, 3600, "the celery backlog")
        finished = time.monotonic()

        def submit_one() -> Any:
            before = done()
            app.send_task("bench.noop")
            return lambda: done() > before

        return _figures(count, started, submitted, finished, _pickups(submit_one))
    finally:
        _stop(worker)


def run_side(side: str, count: int, slots: int, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one side in a child process on the embedded defaults (plus
    `extra_env`, e.g. OPS_TASK_EVENTS); its JSON result."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"ops-bench-{side}-"))
    try:
        env = _env(
            data_dir,
            OPS_WORKER_MAX_SLOTS=str(slots),
            OPS_WORKER_CONSOLIDATION_RESERVED_SLOTS="0",
            DJANGO_SETTINGS_MODULE="opsproject.settings",
            **(extra_env or {}),
        )
        code = (
            "import json, sys; from operations import bench; "
            f"print('RESULT ' + json.dumps(bench.{side}_side({count}, {slots}, "
            "lambda m: print(m, file=sys.stderr, flush=True))))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=data_dir, stdout=subprocess.PIPE, text=True, timeout=7200
        )
        for line in done.stdout.splitlines():
            if line.startswith("RESULT "):
                shutil.rmtree(data_dir, ignore_errors=True)
                return dict(json.loads(line.removeprefix("RESULT ")))
    except BaseException:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise
    # Kept for a post-mortem: the worker logs and the database are in there.
    raise RuntimeError(f"the {side} side failed (exit {done.returncode}); its files are in {data_dir}")
