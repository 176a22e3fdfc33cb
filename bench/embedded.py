"""The embedded comparison, `make bench`'s second section: the embedded
platform against bare Celery on the same filesystem broker, in one run.

Each side runs in a child process of its own, in a fresh temporary directory,
on the embedded defaults (SQLite in WAL mode, kombu's filesystem transport):

- platform: `runworkers` with N slots and beat; a backlog of no-op operations
  is submitted through the lifecycle service, then timed until every row is
  `completed`; then single operations submitted to idle workers time the
  pick-up (submitted -> seen completed).
- bare Celery: a worker with the same concurrency and a no-op task; the same
  number of messages is sent and timed until every task has run.

`--task-events` compares the platform with Celery task events off, on, and on
with Flower listening (what docs/consoles.md's Flower section quotes).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.procs import Processes, stop_on_sigterm, wait_until
from bench.report import ratio_text

PROJECT_DIR = Path(__file__).resolve().parent.parent
Say = Callable[[str], None]


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The embedded defaults: nothing of the scaled deployment's environment."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SECRET_KEY") and not k.startswith("OPS_")
    }
    env.update(
        OPS_DATA_DIR=str(data_dir),
        PYTHONPATH=str(PROJECT_DIR),
        OPS_LOG_LEVEL="WARNING",
        OPS_OPERATION_TYPE_MODULES="bench.optypes",
        **extra,
    )
    return env


def _pickups(submit: Callable[[], Callable[[], bool]], rounds: int) -> list[float]:
    """Seconds from submitting one job to idle workers until it is seen done;
    `submit()` returns a predicate telling whether that job is done. Both
    sides are measured alike, polling every 2 ms."""
    latencies = []
    for _ in range(rounds):
        sent = time.monotonic()
        done = submit()
        wait_until(done, timeout=60, what="one job", interval=0.002)
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


def platform_side(count: int, slots: int, rounds: int, say: Say) -> dict[str, Any]:
    """Run in a child process whose settings are the embedded defaults."""
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import transaction

    from operations import lifecycle
    from operations.models import Operation, WorkerNode
    from tenancy.models import Bank

    call_command("migrate", verbosity=0)
    data_dir = Path(os.environ["OPS_DATA_DIR"])
    with Processes(data_dir) as procs:
        procs.start("workers", [sys.executable, str(PROJECT_DIR / "manage.py"), "runworkers"], dict(os.environ))
        procs.start(
            "beat",
            [sys.executable, "-m", "celery", "-A", "opsproject", "beat", "-s", str(data_dir / "beat")],
            dict(os.environ),
        )
        flower = _start_flower(procs, data_dir) if os.environ.get("OPS_BENCH_FLOWER") else None
        wait_until(lambda: WorkerNode.objects.count() >= 2, timeout=120, what="workers")
        Bank.objects.get_or_create(bank_id="bench")
        started = time.monotonic()
        with transaction.atomic():
            for _ in range(count):
                lifecycle.operation_submit(bank_id="bench", operation_type="bench_noop")
        submitted = time.monotonic()
        say(f"  platform: {count:,} operations submitted in {submitted - started:.1f}s; draining")

        def drained() -> bool:
            return not Operation.objects.exclude(status="completed").exists()

        wait_until(drained, timeout=3600, what="the backlog to drain")
        finished = time.monotonic()

        def submit_one() -> Callable[[], bool]:
            pk = lifecycle.operation_submit(bank_id="bench", operation_type="bench_noop").operation.pk
            return Operation.objects.filter(pk=pk, status="completed").exists

        figures = _figures(count, started, submitted, finished, _pickups(submit_one, rounds))
        if flower is not None:
            figures["flower_tasks_seen"] = _flower_task_count(flower)
        return figures


def _start_flower(procs: Processes, data_dir: Path) -> str:
    """Flower listening to the workers' events, as an operator would run it."""
    import httpx

    from bench.load import free_port

    port = free_port()
    procs.start(
        "flower",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "opsproject",
            "flower",
            "--address=127.0.0.1",
            f"--port={port}",
            f"--db={data_dir / 'flower.db'}",
            "--max_tasks=100000",
        ],
        {**os.environ, "FLOWER_UNAUTHENTICATED_API": "true"},
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/healthcheck", timeout=2).text == "OK"
        except httpx.HTTPError:
            return False

    wait_until(up, timeout=120, what="flower")
    return url


def _flower_task_count(url: str) -> int:
    """How many tasks Flower saw (it keeps them in memory, from the events)."""
    import httpx

    return len(httpx.get(f"{url}/api/tasks", params={"limit": 200_000}, timeout=60).json())


def celery_side(count: int, slots: int, rounds: int, say: Say) -> dict[str, Any]:
    """Bare Celery on the same filesystem broker, a no-op task that leaves a mark."""
    from bench.bare_fs import app, marks_file

    data_dir = Path(os.environ["OPS_DATA_DIR"])
    with Processes(data_dir) as procs:
        procs.start(
            "celery",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.bare_fs",
                "worker",
                "-c",
                str(slots),
                "--prefetch-multiplier",
                "1",
                "--without-mingle",
                "--without-gossip",
                "-l",
                "WARNING",
            ],
            dict(os.environ),
        )
        marks = marks_file()
        marks.touch()

        def done() -> int:
            return marks.stat().st_size  # one byte per task

        app.send_task("bench.noop")  # warm up: the worker is ready when it has run
        wait_until(lambda: done() >= 1, timeout=120, what="the celery worker")
        started = time.monotonic()
        for _ in range(count):
            app.send_task("bench.noop")
        submitted = time.monotonic()
        say(f"  bare celery: {count:,} tasks sent in {submitted - started:.1f}s; draining")
        wait_until(lambda: done() >= count + 1, timeout=3600, what="the celery backlog")
        finished = time.monotonic()

        def submit_one() -> Callable[[], bool]:
            before = done()
            app.send_task("bench.noop")
            return lambda: done() > before

        return _figures(count, started, submitted, finished, _pickups(submit_one, rounds))


def side_main(side: str, count: int, slots: int, rounds: int) -> None:
    """Entry point of a side's child process: its JSON result on stdout."""
    stop_on_sigterm()

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    run = platform_side if side == "platform" else celery_side
    print("RESULT " + json.dumps(run(count, slots, rounds, say)), flush=True)


def run_side(side: str, count: int, slots: int, rounds: int, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one side in a child process on the embedded defaults (plus
    `extra_env`, e.g. OPS_TASK_EVENTS); its JSON result."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"ops-bench-{side}-"))
    env = _env(
        data_dir,
        OPS_WORKER_MAX_SLOTS=str(slots),
        OPS_WORKER_CONSOLIDATION_RESERVED_SLOTS="0",
        DJANGO_SETTINGS_MODULE="opsproject.settings",
        **(extra_env or {}),
    )
    code = f"from bench.embedded import side_main; side_main({side!r}, {count}, {slots}, {rounds})"
    # Its progress goes to our stderr; its result line to a pipe.
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        cwd=data_dir,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = child.communicate(timeout=3600)
    finally:
        if child.poll() is None:
            # Interrupted: SIGTERM lets the side stop its own workers first.
            child.terminate()
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, 9)
                child.wait()
    for line in out.splitlines():
        if line.startswith("RESULT "):
            shutil.rmtree(data_dir, ignore_errors=True)
            return dict(json.loads(line.removeprefix("RESULT ")))
    # Kept for a post-mortem: the worker logs and the database are in there.
    raise RuntimeError(f"the embedded {side} side failed (exit {child.returncode}); its files are in {data_dir}")


ROWS = [
    ("submit_per_second", "submitted per second", "{:,.0f}"),
    ("drain_seconds", "backlog drained in (s)", "{:,.1f}"),
    ("drain_per_second", "completed per second", "{:,.0f}"),
    ("pickup_median_ms", "one job when idle, median (ms)", "{:,.0f}"),
    ("pickup_max_ms", "one job when idle, max (ms)", "{:,.0f}"),
]


def table(first: dict[str, Any], second: dict[str, Any], names: tuple[str, str]) -> str:
    rows = [f"| | {names[0]} | {names[1]} | ratio |", "|---|---:|---:|---:|"]
    for key, label, fmt in ROWS:
        rows.append(
            f"| {label} | {fmt.format(first[key])} | {fmt.format(second[key])} | "
            f"{ratio_text(first[key], second[key])} |"
        )
    return "\n".join(rows)


def comparison(count: int, slots: int, rounds: int, say: Say) -> dict[str, Any]:
    """The platform against bare Celery, both embedded; figures and a table."""
    platform = run_side("platform", count, slots, rounds)
    celery = run_side("celery", count, slots, rounds)
    return {
        "operations": count,
        "slots": slots,
        "platform": platform,
        "bare_celery": celery,
        "table": table(platform, celery, ("platform", "bare Celery")),
    }


def task_events(count: int, slots: int, rounds: int, say: Say) -> dict[str, Any]:
    """The platform with task events off, on, and on with Flower listening."""
    off = run_side("platform", count, slots, rounds, {"OPS_TASK_EVENTS": "false"})
    on = run_side("platform", count, slots, rounds, {"OPS_TASK_EVENTS": "true"})
    watched = run_side("platform", count, slots, rounds, {"OPS_TASK_EVENTS": "true", "OPS_BENCH_FLOWER": "1"})
    return {
        "operations": count,
        "slots": slots,
        "events_off": off,
        "events_on": on,
        "flower": watched,
        "table": table(on, off, ("events on", "events off"))
        + "\n\n"
        + table(watched, off, ("+ Flower", "events off"))
        + f"\n\nFlower saw {watched.get('flower_tasks_seen', 0):,} tasks.",
    }
