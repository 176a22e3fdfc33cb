"""Running one operation: claim it, call its handler, record the outcome.

Called by the thin Celery task of each type; knows nothing of any type.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from celery.exceptions import SoftTimeLimitExceeded
from django.core.exceptions import ValidationError
from django.db import DatabaseError, IntegrityError, InterfaceError, OperationalError, connection

from core import transient
from operations import lifecycle, registry
from operations.handlers import LeaseLost, OperationCancelled, OperationContext, OperationYielded, PermanentError
from operations.lifecycle import dispatch
from operations.models import OperationStatus
from operations.worker import leases

log = logging.getLogger(__name__)
T = TypeVar("T")


# What `execute` returns when the run left its operation failed.
FAILED_OUTCOMES = frozenset({"failed", "timed out"})


def execute(operation_id: str, *, operation_type: str, worker: str, task_id: str) -> str:
    """Run the operation if it is claimable; returns what happened (for logs;
    one of FAILED_OUTCOMES when the operation ended failed)."""
    # Riding out a connection that died since the last task (none is health
    # checked before each task): reconnect and claim again.
    # This message left the broker: the next waiting operation takes its place
    # (picked by the claim's own statement where it can).
    lease = _record(
        lifecycle.operation_claim,
        operation_id=operation_id,
        worker=worker,
        task_id=task_id,
        replace=(operation_type, lambda: _replace_taken(operation_type)),
    )
    if lease is None:
        return "dropped"
    optype = registry.get(lease.operation_type)
    ctx = OperationContext(lease=lease, lifecycle=lifecycle)
    leases.install_cancel_signal()
    leases.hold(lease)
    try:
        try:
            leases.set_in_handler(lease.operation_id, True)
            try:
                result = optype.handler_function(ctx)
            finally:
                leases.set_in_handler(lease.operation_id, False)
        except OperationCancelled:
            _recover_connection()  # an interrupt may have cut a query short
            _record(lifecycle.operation_confirm_cancel, lease=lease, stage=ctx.stage)
            return "cancelled"
        except LeaseLost:
            log.warning("operation %s: lease lost, result discarded", operation_id)
            return "lease lost"
        except OperationYielded:
            if _record(lifecycle.operation_yield, lease=lease, progress=ctx.last_report):
                return "yielded to another bank"
            _record(lifecycle.operation_confirm_cancel, lease=lease, stage=ctx.stage)
            return "cancelled"
        except SoftTimeLimitExceeded:
            _recover_connection()
            outcome = _record(
                lifecycle.operation_fail,
                lease=lease,
                error=f"timed out after {optype.soft_time_limit:g}s",
                permanent=True,
                stage=ctx.stage,
            )
            return "timed out" if outcome == OperationStatus.FAILED else f"timed out, now {outcome}"
        except Exception as exc:
            _recover_connection()
            why = transient.reason(exc)
            permanent = why is None and isinstance(exc, (PermanentError, ValidationError, IntegrityError))
            if not permanent:
                log.warning("operation %s failed:\n%s", operation_id, traceback.format_exc())
            outcome = _record(
                lifecycle.operation_fail,
                lease=lease,
                error=_describe(exc),
                permanent=permanent,
                stage=ctx.stage,
                transient=why,
            )
            return "failed" if outcome == OperationStatus.FAILED else f"error, now {outcome}"
        if not _record(lifecycle.operation_complete, lease=lease, result=result):
            # Fenced: the lease went to another worker meanwhile (this one was
            # cut off past its lease), whose outcome is the one recorded.
            return "lease lost"
        return "completed"
    finally:
        leases.release(lease.operation_id)


def _replace_taken(operation_type: str) -> None:
    try:
        dispatch.replace_taken(operation_type, in_background=leases.in_pool_process())
    except Exception:  # the sweeper tops up too; never fail a run over it
        log.exception("publishing the next %s operation failed", operation_type)
        _recover_connection()


RECORD_ATTEMPTS = 5


def _record(transition: Callable[..., T], **kwargs: Any) -> T:
    """Make a transition, riding out a dropped database connection: for an
    outcome, the work is done and losing it would make it run again; for a
    claim, the message would be lost with the task. If the database stays
    away, the lease expires and the reaper settles the row (or, for a claim,
    the sweeper publishes it again)."""
    for attempt in range(1, RECORD_ATTEMPTS + 1):
        try:
            return transition(**kwargs)
        except (OperationalError, InterfaceError):
            if attempt == RECORD_ATTEMPTS:
                raise
            log.warning("recording an outcome failed (attempt %d); reconnecting", attempt)
            connection.close()
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, PermanentError) else f"{type(exc).__name__}: {text}"


def _recover_connection() -> None:
    """After a database error the connection may be dead (e.g. the server
    terminated it); drop it so recording the outcome opens a fresh one. Inside
    a caller's transaction (run in-process) the connection is not ours to drop."""
    if connection.in_atomic_block:
        return
    try:
        connection.close_if_unusable_or_obsolete()
    except DatabaseError:
        connection.close()
