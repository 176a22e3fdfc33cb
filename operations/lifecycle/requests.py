"""The user's side: cancel (one, or a bank's pending), retry, delete."""

from __future__ import annotations

import enum
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import QuerySet

from core import transient
from operations import registry
from operations.lifecycle.common import (
    CANCELLED,
    FAILED,
    PENDING,
    PROCESSING,
    OperationNotFound,
    TransitionRefused,
    timestamp,
)
from operations.lifecycle.rollup import roll_up
from operations.lifecycle.submit import publish_on_commit
from operations.models import (
    TERMINAL_STATUSES,
    TRANSITIONS,
    Operation,
)

log = logging.getLogger(__name__)


class CancelOutcome(enum.Enum):
    CANCELLED = "cancelled"  # it was pending: now cancelled
    REQUESTED = "cancel_requested"  # it is processing: it stops at its next checkpoint


def _parent_of(operation_id: str | uuid.UUID) -> tuple[uuid.UUID | None, bool]:
    """(parent id, is-a-parent) of an operation; raises OperationNotFound."""
    row = Operation.objects.filter(pk=operation_id).values("parent_id", "operation_type").first()
    if row is None:
        raise OperationNotFound(str(operation_id))
    try:
        is_parent = registry.is_parent(row["operation_type"])
    except registry.UnknownOperationType:
        is_parent = False
    return row["parent_id"], is_parent


def operation_cancel(*, operation_id: str | uuid.UUID) -> CancelOutcome:
    """pending -> cancelled at once; processing -> cancel requested (the handler
    stops at its next checkpoint, or its process is stopped after the grace
    period). A parent cancels its pending children and requests cancel of its
    running ones. Raises OperationNotFound, or TransitionRefused when terminal."""
    parent_id, is_parent = _parent_of(operation_id)
    if is_parent:
        return _cancel_parent(operation_id)
    row = Operation.objects.filter(pk=operation_id)
    for _ in range(5):
        now = timestamp()
        with transaction.atomic():
            if row.transition("cancel", **_cancelled_fields(now, "cancelled before it ran")):
                if parent_id is not None:
                    roll_up(parent_id)
                return CancelOutcome.CANCELLED
        if row.transition("request_cancel", cancel_requested_at=now):
            return CancelOutcome.REQUESTED
        status = row.values_list("status", flat=True).first()
        if status is None:
            raise OperationNotFound(str(operation_id))
        if status == PROCESSING:
            return CancelOutcome.REQUESTED  # already requested
        if status in TERMINAL_STATUSES:
            raise TransitionRefused(str(operation_id), "cancel", status)
        # It went back to pending between our two UPDATEs (a retry); try again.
    raise TransitionRefused(str(operation_id), "cancel", PENDING, "the operation kept changing; try again")


def _cancelled_fields(now: datetime, message: str) -> dict[str, Any]:
    return {"completed_at": now, "next_retry_at": None, "error_message": message, "updated_at": now}


@dataclass(frozen=True)
class _ChildrenCancelled:
    cancelled: int  # pending children now cancelled
    requested: int  # running children asked to stop
    parent_status: str | None  # the parent's status after the roll-up (None: unchanged)


def _cancel_children(parent_id: str | uuid.UUID, now: datetime) -> _ChildrenCancelled:
    """Cancel a parent's pending children and request cancel of its running
    ones, then roll it up; in the caller's transaction. Children are changed
    before the parent is locked (by the roll-up), the order a child's own
    transition takes, so the two never deadlock."""
    children = Operation.objects.filter(parent_id=parent_id)  # type: ignore[misc]  # an id's text works too
    cancelled = children.transition("cancel", **_cancelled_fields(now, "cancelled with its parent"))
    requested = children.transition("request_cancel", cancel_requested_at=now)
    return _ChildrenCancelled(cancelled, requested, roll_up(parent_id))


def _cancel_parent(operation_id: str | uuid.UUID) -> CancelOutcome:
    status = Operation.objects.filter(pk=operation_id).values_list("status", flat=True).first()
    if status is None:
        raise OperationNotFound(str(operation_id))
    if status in TERMINAL_STATUSES:
        raise TransitionRefused(str(operation_id), "cancel", status)
    with transaction.atomic():
        outcome = _cancel_children(operation_id, timestamp())
    return CancelOutcome.REQUESTED if outcome.requested else CancelOutcome.CANCELLED


def operations_cancel_pending(*, bank_id: str, operation_type: str | None = None) -> int:
    """Cancel every pending operation of a bank (optionally of one type). A
    pending parent is cancelled with its children, never on its own. Returns
    how many operations became cancelled (parents included)."""
    pending = Operation.objects.filter(bank_id=bank_id, status=PENDING)
    if operation_type:
        pending = pending.filter(operation_type=operation_type)
    parent_types = registry.parent_type_names()
    rows = list(pending.exclude(operation_type__in=parent_types).values_list("pk", "parent_id"))
    pending_parents = set(pending.filter(operation_type__in=parent_types).values_list("pk", flat=True))
    now = timestamp()
    with transaction.atomic():
        count = Operation.objects.filter(pk__in=[pk for pk, _ in rows]).transition(
            "cancel", **_cancelled_fields(now, "cancelled before it ran")
        )
        parent_statuses = []
        for parent_id in sorted(pending_parents, key=str):
            outcome = _cancel_children(parent_id, now)
            count += outcome.cancelled
            parent_statuses.append(outcome.parent_status)
        others = {parent_id for _, parent_id in rows if parent_id is not None} - pending_parents
        parent_statuses += [roll_up(parent_id) for parent_id in sorted(others, key=str)]
    return count + parent_statuses.count(CANCELLED)


def operation_retry(*, operation_id: str | uuid.UUID) -> None:
    """failed | cancelled -> pending, retry count reset. A parent re-queues its
    failed and cancelled children; a child re-opens its finished parent.
    Raises OperationNotFound or TransitionRefused. Tried again after a
    transient error: on PostgreSQL a finished row may be moving to its week's
    partition at that moment (`operations.partitions`)."""
    transient.retrying(lambda: _retry(operation_id), what=f"retry of {operation_id}")


def _retry(operation_id: str | uuid.UUID) -> None:
    parent_id, is_parent = _parent_of(operation_id)
    if is_parent:
        _retry_parent(operation_id)
        return
    try:
        with transaction.atomic():
            won = Operation.objects.filter(pk=operation_id).transition("retry", **_requeue_fields())
            if won and parent_id is not None:
                _reopen(parent_id)
    except IntegrityError:
        raise TransitionRefused(
            str(operation_id),
            "retry",
            "failed",
            "a pending operation of the same kind already covers this work",
        ) from None
    if not won:
        status = Operation.objects.filter(pk=operation_id).values_list("status", flat=True).first()
        if status is None:
            raise OperationNotFound(str(operation_id))
        raise TransitionRefused(str(operation_id), "retry", status)
    publish_on_commit(operation_id, Operation.objects.get(pk=operation_id).operation_type)


def _requeue_fields() -> dict[str, Any]:
    return {
        "retry_count": 0,
        "next_retry_at": None,
        "error_message": None,
        "cancel_requested_at": None,
        "completed_at": None,
        "dispatched_at": None,
        "lease_id": None,
        "progress": None,
        "updated_at": timestamp(),
    }


def _reopen(parent_id: str | uuid.UUID) -> None:
    """A finished parent one of whose children was queued again: pending, then
    rolled up from its children (in the caller's transaction)."""
    Operation.objects.filter(pk=parent_id).transition("retry_parent", completed_at=None, error_message=None)
    roll_up(parent_id)


def _retry_parent(operation_id: str | uuid.UUID) -> None:
    children = Operation.objects.filter(parent_id=operation_id, status__in=[FAILED, CANCELLED])  # type: ignore[misc]  # an id's text works too
    with transaction.atomic():
        status = Operation.objects.select_for_update().filter(pk=operation_id).values_list("status", flat=True).first()
        if status not in (FAILED, CANCELLED):
            raise TransitionRefused(str(operation_id), "retry", str(status))
        requeued = []
        for child_id, child_type in children.values_list("pk", "operation_type"):
            try:
                with transaction.atomic():
                    if Operation.objects.filter(pk=child_id).transition("retry", **_requeue_fields()):
                        requeued.append((child_id, child_type))
            except IntegrityError:
                log.info("child %s not re-queued: a pending duplicate covers it", child_id)
        _reopen(operation_id)
    for child_id, child_type in requeued:
        publish_on_commit(child_id, child_type)


def operation_delete(*, operation_id: str | uuid.UUID) -> None:
    """Delete a terminal operation (and its children). Raises OperationNotFound
    or TransitionRefused when it is still pending or processing. Tried again
    after a transient error, as `operation_retry`."""
    transient.retrying(lambda: _delete(operation_id), what=f"delete of {operation_id}")


def _delete(operation_id: str | uuid.UUID) -> None:
    with transaction.atomic():
        row = Operation.objects.select_for_update().filter(pk=operation_id).values("status", "parent_id").first()
        if row is None:
            raise OperationNotFound(str(operation_id))
        if row["status"] not in TRANSITIONS["delete"].sources:
            raise TransitionRefused(str(operation_id), "delete", row["status"])
        Operation.objects.filter(pk=operation_id).delete()
        if row["parent_id"] is not None:
            roll_up(row["parent_id"])


# The most one console action retries: a larger batch is the next click.
RETRY_FAILED_LIMIT = 1000


def failed_matching(
    *, operation_type: str | None = None, bank_id: str | None = None, within_hours: int | None = None
) -> QuerySet[Operation]:
    """The failed operations a bulk retry takes: of a type, of a bank,
    finished in the last hours (each filter optional), newest first. Parents
    are left out: their failed children are the ones retried."""
    rows = Operation.objects.filter(status=FAILED).exclude(operation_type__in=registry.parent_type_names())
    if operation_type:
        rows = rows.filter(operation_type=operation_type)
    if bank_id:
        rows = rows.filter(bank_id=bank_id)
    if within_hours:
        rows = rows.filter(completed_at__gte=timestamp() - timedelta(hours=within_hours))
    return rows.order_by("-completed_at")


def operations_retry_failed(
    *, operation_type: str | None = None, bank_id: str | None = None, within_hours: int | None = None
) -> int:
    """Retry the failed operations that match (see `failed_matching`), at most
    RETRY_FAILED_LIMIT, each as `operation_retry` does; one that cannot be
    retried any more (retried or deleted meanwhile, or covered by a pending
    duplicate) is skipped. Returns how many went back to pending."""
    ids = list(
        failed_matching(operation_type=operation_type, bank_id=bank_id, within_hours=within_hours).values_list(
            "pk", flat=True
        )[:RETRY_FAILED_LIMIT]
    )
    retried = 0
    for operation_id in ids:
        try:
            operation_retry(operation_id=operation_id)
        except (TransitionRefused, OperationNotFound):
            continue
        retried += 1
    return retried
