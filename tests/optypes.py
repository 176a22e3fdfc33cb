"""Operation types that exist only for the tests (loaded through
OPS_OPERATION_TYPE_MODULES by the test processes and the workers they start).

Handlers append one JSON line per event to the file named by `payload["log"]`,
so a test can count runs across processes, including killed ones.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any

from operations.handlers import OperationContext, PermanentError
from operations.registry import OperationType, Scope, register
from operations.worker import leases


def tracked(handler: Callable[[OperationContext], dict[str, Any]]) -> Callable[[OperationContext], dict[str, Any]]:
    """Record "start" and, on success, "end"; hold an exclusive lock on the
    operation while running and record "overlap" if another run holds it (the
    kernel drops the lock of a killed process, so only a live run counts)."""

    @functools.wraps(handler)
    def run(ctx: OperationContext) -> dict[str, Any]:
        path = ctx.payload.get("log")
        lock = open(f"{path}.{ctx.operation_id}.lock", "w") if path else None
        try:
            if lock is not None:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    record(ctx, "overlap")
            record(ctx, "start")
            result = handler(ctx)
            record(ctx, "end")
            return result
        finally:
            if lock is not None:
                lock.close()

    return run


def record(ctx: OperationContext, event: str, **extra: Any) -> None:
    path = ctx.payload.get("log")
    if not path:
        return
    line = json.dumps(
        {
            "op": ctx.operation_id,
            "event": event,
            "attempt": ctx.attempt,
            "pid": os.getpid(),
            "worker": ctx.lease.worker,
            "at": time.time(),
            **extra,
        }
    )
    with open(path, "a") as f:
        f.write(line + "\n")


@tracked
def echo(ctx: OperationContext) -> dict[str, Any]:
    ctx.progress("echo", processed=1, total=1)
    return {"echo": ctx.payload.get("value"), "worker": ctx.lease.worker}


@tracked
def sleep(ctx: OperationContext) -> dict[str, Any]:
    """Sleeps `seconds`, checking for cancellation every 50 ms."""
    seconds = float(ctx.payload.get("seconds", 1))
    deadline = time.monotonic() + seconds
    ctx.progress("sleeping", processed=0, total=1)
    while time.monotonic() < deadline:
        time.sleep(0.05)
        ctx.checkpoint()
    return {"slept": seconds, "worker": ctx.lease.worker}


@tracked
def busy(ctx: OperationContext) -> dict[str, Any]:
    """Sleeps `seconds` without ever checking for cancellation or reporting
    progress: only the process's heartbeat keeps its lease. With
    `"renew": false`, the first attempt stops this process's lease renewal
    while it sleeps, as a hung heartbeat would."""
    ctx.progress("busy")
    renew = ctx.payload.get("renew", True) or ctx.attempt > 0
    beat_once = leases.beat_once
    if not renew:
        leases.beat_once = lambda held: None
    try:
        time.sleep(float(ctx.payload.get("seconds", 1)))
    finally:
        leases.beat_once = beat_once
    return {"renewed": renew}


@tracked
def flaky(ctx: OperationContext) -> dict[str, Any]:
    """Fails transiently on the first `failures` attempts; `permanent` fails at once."""
    ctx.progress("flaky")
    if ctx.payload.get("permanent"):
        raise PermanentError("bad input: this will never work")
    if ctx.attempt < int(ctx.payload.get("failures", 0)):
        raise RuntimeError(f"transient failure on attempt {ctx.attempt}")
    return {"attempts": ctx.attempt + 1}


@tracked
def dbloop(ctx: OperationContext) -> dict[str, Any]:
    """`steps` database round trips (progress reports), `pause` seconds apart."""
    steps = int(ctx.payload.get("steps", 10))
    for step in range(steps):
        ctx.progress("looping", processed=step, total=steps)
        time.sleep(float(ctx.payload.get("pause", 0.1)))
    return {"steps": steps}


def runs_so_far(ctx: OperationContext) -> int:
    """How many times this operation started before (from the log file)."""
    with open(ctx.payload["log"]) as f:
        return sum(1 for line in f if json.loads(line)["op"] == ctx.operation_id and '"start"' in line) - 1


@tracked
def dberror(ctx: OperationContext) -> dict[str, Any]:
    """The first `failures` runs hit a real database error: the server raises
    SQLSTATE `sqlstate`, or (`"lost"`) terminates this very connection."""
    from django.db import connection

    ctx.progress("querying")
    if runs_so_far(ctx) < int(ctx.payload.get("failures", 1)):
        with connection.cursor() as cursor:
            if ctx.payload["sqlstate"] == "lost":
                cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
            else:
                cursor.execute(
                    f"DO $$ BEGIN RAISE EXCEPTION 'injected by the test' USING ERRCODE = '{ctx.payload['sqlstate']}'; END $$"
                )
    return {"runs": runs_so_far(ctx) + 1}


@tracked
def stubborn(ctx: OperationContext) -> dict[str, Any]:
    """Ignores every interruption (time limits, cancel signals) for `seconds`."""
    ctx.progress("stubborn")
    deadline = time.monotonic() + float(ctx.payload.get("seconds", 30))
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except BaseException:
            record(ctx, "ignored")
    return {}


register(OperationType(name="test_echo", handler="tests.optypes.echo", soft_time_limit=30))
register(OperationType(name="test_sleep", handler="tests.optypes.sleep", soft_time_limit=60))
register(OperationType(name="test_busy", handler="tests.optypes.busy", soft_time_limit=60))
register(OperationType(name="test_flaky", handler="tests.optypes.flaky", soft_time_limit=30))
register(OperationType(name="test_dberror", handler="tests.optypes.dberror", soft_time_limit=30))
register(OperationType(name="test_reserved", handler="tests.optypes.echo", soft_time_limit=30))
register(OperationType(name="test_dedupe", handler="tests.optypes.sleep", dedupe=Scope.BANK, serialize=Scope.BANK))
register(OperationType(name="test_serial", handler="tests.optypes.sleep", serialize=Scope.BANK))
register(OperationType(name="test_serial_doc", handler="tests.optypes.echo", serialize=Scope.DOCUMENT))
register(OperationType(name="test_dedupe_doc", handler="tests.optypes.echo", dedupe=Scope.DOCUMENT))
register(OperationType(name="test_dbloop", handler="tests.optypes.dbloop"))
register(OperationType(name="test_slow", handler="tests.optypes.busy", soft_time_limit=1, time_limit=4))
register(OperationType(name="test_stubborn", handler="tests.optypes.stubborn", soft_time_limit=60))
register(OperationType(name="test_stubborn_timeout", handler="tests.optypes.stubborn", soft_time_limit=1, time_limit=2))
register(OperationType(name="test_batch", rollup=True))
