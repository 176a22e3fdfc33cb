"""Operation types that exist only for the tests (loaded through
OPS_OPERATION_TYPE_MODULES by the test processes and the workers they start).

Handlers append one JSON line per event to the file named by `payload["log"]`,
so a test can count runs across processes, including killed ones.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from operations.handlers import OperationContext, PermanentError
from operations.registry import OperationType, Scope, register


def record(ctx: OperationContext, event: str, **extra: Any) -> None:
    path = ctx.payload.get("log")
    if not path:
        return
    line = json.dumps(
        {"op": ctx.operation_id, "event": event, "attempt": ctx.attempt, "pid": os.getpid(),
         "worker": ctx.lease.worker, "at": time.time(), **extra}
    )
    with open(path, "a") as f:
        f.write(line + "\n")


def echo(ctx: OperationContext) -> dict[str, Any]:
    record(ctx, "start")
    ctx.progress("echo", processed=1, total=1)
    record(ctx, "end")
    return {"echo": ctx.payload.get("value"), "worker": ctx.lease.worker}


def sleep(ctx: OperationContext) -> dict[str, Any]:
    """Sleeps `seconds`, checking for cancellation every 50 ms."""
    record(ctx, "start")
    seconds = float(ctx.payload.get("seconds", 1))
    deadline = time.monotonic() + seconds
    ctx.progress("sleeping", processed=0, total=1)
    while time.monotonic() < deadline:
        time.sleep(0.05)
        ctx.checkpoint()
    record(ctx, "end")
    return {"slept": seconds, "worker": ctx.lease.worker}


def busy(ctx: OperationContext) -> dict[str, Any]:
    """Sleeps `seconds` without ever checking for cancellation."""
    record(ctx, "start")
    ctx.progress("busy")
    time.sleep(float(ctx.payload.get("seconds", 1)))
    record(ctx, "end")
    return {}


def flaky(ctx: OperationContext) -> dict[str, Any]:
    """Fails transiently on the first `failures` attempts; `permanent` fails at once."""
    record(ctx, "start")
    ctx.progress("flaky")
    if ctx.payload.get("permanent"):
        raise PermanentError("bad input: this will never work")
    if ctx.attempt < int(ctx.payload.get("failures", 0)):
        raise RuntimeError(f"transient failure on attempt {ctx.attempt}")
    record(ctx, "end")
    return {"attempts": ctx.attempt + 1}


register(OperationType(name="test_echo", handler="tests.optypes.echo", soft_time_limit=30))
register(OperationType(name="test_sleep", handler="tests.optypes.sleep", soft_time_limit=60))
register(OperationType(name="test_busy", handler="tests.optypes.busy", soft_time_limit=60))
register(OperationType(name="test_flaky", handler="tests.optypes.flaky", soft_time_limit=30))
register(OperationType(name="test_reserved", handler="tests.optypes.echo", soft_time_limit=30))
register(
    OperationType(
        name="test_dedupe", handler="tests.optypes.sleep", dedupe=Scope.BANK, serialize=Scope.BANK
    )
)
register(OperationType(name="test_serial", handler="tests.optypes.sleep", serialize=Scope.BANK))
register(OperationType(name="test_batch", rollup=True))
