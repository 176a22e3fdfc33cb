"""Running one operation: claim it, call its handler, record the outcome.

Called by the thin Celery task of each type; knows nothing of any type.
"""

from __future__ import annotations

import logging
import traceback

from celery.exceptions import SoftTimeLimitExceeded
from django.core.exceptions import ValidationError
from django.db import DatabaseError, IntegrityError, connection

from operations import leases, registry, services
from operations.handlers import LeaseLost, OperationCancelled, OperationContext, PermanentError

log = logging.getLogger(__name__)


def execute(operation_id: str, *, worker: str, task_id: str) -> str:
    """Run the operation if it is claimable; returns what happened (for logs)."""
    lease = services.operation_claim(operation_id=operation_id, worker=worker, task_id=task_id)
    if lease is None:
        return "dropped"
    optype = registry.get(lease.operation_type)
    ctx = OperationContext(lease=lease)
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
            services.operation_confirm_cancel(lease=lease, stage=ctx.stage)
            return "cancelled"
        except LeaseLost:
            log.warning("operation %s: lease lost, result discarded", operation_id)
            return "lease lost"
        except SoftTimeLimitExceeded:
            _recover_connection()
            services.operation_fail(
                lease=lease,
                error=f"timed out after {optype.soft_time_limit:g}s",
                permanent=True,
                stage=ctx.stage,
            )
            return "timed out"
        except (PermanentError, ValidationError, IntegrityError) as exc:
            _recover_connection()
            services.operation_fail(lease=lease, error=_describe(exc), permanent=True, stage=ctx.stage)
            return "failed"
        except Exception as exc:
            _recover_connection()
            log.warning("operation %s failed:\n%s", operation_id, traceback.format_exc())
            outcome = services.operation_fail(
                lease=lease, error=_describe(exc), permanent=False, stage=ctx.stage
            )
            return f"error, now {outcome}"
        services.operation_complete(lease=lease, result=result)
        return "completed"
    finally:
        leases.release(lease.operation_id)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, PermanentError) else f"{type(exc).__name__}: {text}"


def _recover_connection() -> None:
    """After a database error the connection may be dead (e.g. the server
    terminated it); drop it so recording the outcome opens a fresh one."""
    try:
        connection.close_if_unusable_or_obsolete()
    except DatabaseError:
        connection.close()
