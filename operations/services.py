"""Every state change of an operation, in one place.

Each transition (see `models.TRANSITIONS`) is a conditional UPDATE: it names the
status it starts from and checks the row count. Two racing transitions cannot
both win; the loser sees 0 rows and reports it (False, None or
`TransitionRefused`), never an error. Uniqueness rules (dedupe while pending,
one processing per serialization key) are partial unique indexes, so the
database enforces them under any concurrency.

A parent's status is derived from its children and recomputed, with the parent
row locked, in the same transaction as each child's transition.

Nothing here does network I/O inside a transaction: publishing to the broker is
deferred to `transaction.on_commit`.
"""

from __future__ import annotations

import enum
import logging
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from operations import dispatch, registry
from operations.handlers import Lease
from operations.models import (
    ERROR_MESSAGE_MAX,
    TERMINAL_STATUSES,
    Operation,
    OperationStatus,
)

log = logging.getLogger(__name__)

PENDING = OperationStatus.PENDING
PROCESSING = OperationStatus.PROCESSING
COMPLETED = OperationStatus.COMPLETED
FAILED = OperationStatus.FAILED
CANCELLED = OperationStatus.CANCELLED


class OperationNotFound(LookupError):
    pass


class TransitionRefused(Exception):
    """The operation is not in a status the transition starts from (HTTP 409)."""

    def __init__(self, operation_id: str, action: str, status: str, reason: str = "") -> None:
        self.operation_id = operation_id
        self.action = action
        self.status = status
        self.reason = reason or f"cannot {action} an operation that is {status}"
        super().__init__(self.reason)


@dataclass(frozen=True)
class Submission:
    operation: Operation
    deduplicated: bool


class CancelOutcome(enum.Enum):
    CANCELLED = "cancelled"  # it was pending: now cancelled
    REQUESTED = "cancel_requested"  # it is processing: it stops at its next checkpoint


def _now() -> datetime:
    return timezone.now()


def _clip(message: str) -> str:
    return message if len(message) <= ERROR_MESSAGE_MAX else message[: ERROR_MESSAGE_MAX - 1] + "…"


def _update(queryset: QuerySet[Operation], **fields: Any) -> int:
    """A conditional UPDATE that also stamps `updated_at`; returns rows changed."""
    fields.setdefault("updated_at", _now())
    return queryset.update(**fields)


def retry_delay(operation_type: registry.OperationType, attempt: int) -> float:
    """Seconds before retry number `attempt` (1-based).

    Explicit `retry_delays` win; otherwise exponential backoff with full jitter
    (uniform between 0 and base * 2^(attempt-1), capped), which spreads a burst
    of failures instead of retrying them in lockstep.
    """
    if operation_type.retry_delays:
        delays = operation_type.retry_delays
        return delays[min(attempt, len(delays)) - 1]
    ceiling = min(
        settings.OPS_RETRY_BACKOFF_CAP_SECONDS,
        settings.OPS_RETRY_BACKOFF_SECONDS * 2 ** (attempt - 1),
    )
    return random.uniform(0, ceiling)


# --- submit --------------------------------------------------------------------------


def operation_submit(
    *,
    bank_id: str,
    operation_type: str,
    payload: dict[str, Any] | None = None,
    items_count: int = 0,
    document_id: str | None = None,
    filename: str | None = None,
    mental_model_id: str | None = None,
    tag: str | None = None,
    parent_id: str | uuid.UUID | None = None,
    operation_id: str | uuid.UUID | None = None,
) -> Submission:
    """Create a pending operation and publish it once the transaction commits.

    When the type deduplicates and an operation with the same key is pending,
    no row is written and that operation is returned with `deduplicated=True`.
    Raises `registry.UnknownOperationType` for an undeclared type and
    IntegrityError for an id already taken (callers own id idempotency).
    """
    optype = registry.get(operation_type)
    keys = {"bank_id": bank_id, "document_id": document_id, "mental_model_id": mental_model_id}
    dedupe_key = optype.key_for(optype.dedupe, **keys)
    fields: dict[str, Any] = {
        "bank_id": bank_id,
        "operation_type": operation_type,
        "task_payload": payload or {},
        "items_count": items_count,
        "document_id": document_id,
        "filename": filename,
        "mental_model_id": mental_model_id,
        "tag": tag,
        "parent_id": parent_id,
        "dedupe_key": dedupe_key,
        "serial_key": optype.key_for(optype.serialize, **keys),
        "max_retries": (
            optype.max_retries if optype.max_retries is not None else settings.OPS_WORKER_MAX_RETRIES
        ),
    }
    if operation_id is not None:
        fields["id"] = operation_id
    # A duplicate can lose its pending twin between our failed INSERT and the
    # lookup (it was just claimed); then the INSERT is simply tried again.
    for _ in range(5):
        try:
            with transaction.atomic():
                operation = Operation.objects.create(**fields)
                if parent_id is not None:
                    _roll_up(parent_id)
        except IntegrityError:
            if dedupe_key is None:
                raise
            existing = Operation.objects.filter(dedupe_key=dedupe_key, status=PENDING).first()
            if existing is not None:
                return Submission(existing, deduplicated=True)
            continue
        if not optype.rollup:
            _publish_on_commit(operation.pk, operation_type)
        return Submission(operation, deduplicated=False)
    raise IntegrityError(f"could not submit {operation_type}: dedupe key {dedupe_key} kept changing")


def _publish_on_commit(operation_id: uuid.UUID | str, operation_type: str) -> None:
    transaction.on_commit(
        lambda: dispatch.offer(operation_id, operation_type), robust=True
    )


# --- claim, progress, finish (the worker's side) -----------------------------------


def operation_claim(*, operation_id: str, worker: str, task_id: str) -> Lease | None:
    """pending -> processing, if the operation is due. None when it is not
    claimable (already claimed, finished, cancelled, parked until later, or its
    serialization key is held by another running operation)."""
    now = _now()
    lease_id = uuid.uuid4()
    claimable = Operation.objects.filter(pk=operation_id, status=PENDING).filter(
        Q(next_retry_at__isnull=True) | Q(next_retry_at__lte=now)
    )
    try:
        with transaction.atomic():
            won = _update(
                claimable,
                status=PROCESSING,
                worker=worker,
                task_id=task_id,
                lease_id=lease_id,
                heartbeat_at=now,
                started_at=now,
                cancel_requested_at=None,
                updated_at=now,
            )
            if not won:
                return None
            row = Operation.objects.get(pk=operation_id)
            if row.parent_id is not None:
                _roll_up(row.parent_id)
    except IntegrityError:
        # Another operation with the same serialization key is running. This one
        # stays pending; it is published again when that one finishes.
        _update(Operation.objects.filter(pk=operation_id, status=PENDING), dispatched_at=None)
        log.info("operation %s waits: its serialization key is busy", operation_id)
        return None
    return Lease(
        operation_id=str(row.pk),
        lease_id=str(lease_id),
        operation_type=row.operation_type,
        bank_id=row.bank_id,
        worker=worker,
        task_id=task_id,
        attempt=row.retry_count,
        payload=row.task_payload,
        document_id=row.document_id,
        filename=row.filename,
        mental_model_id=row.mental_model_id,
        tag=row.tag,
        parent_id=str(row.parent_id) if row.parent_id else None,
        serial_key=row.serial_key,
    )


def _leased(lease: Lease, stale_before: datetime | None = None) -> QuerySet[Operation]:
    """The row, only while this lease holds it (and, for the reaper, only while
    its heartbeat is older than `stale_before`: a late heartbeat wins)."""
    rows = Operation.objects.filter(pk=lease.operation_id, lease_id=lease.lease_id, status=PROCESSING)
    return rows if stale_before is None else rows.filter(heartbeat_at__lt=stale_before)


def operation_progress(*, lease: Lease, progress: dict[str, Any]) -> bool:
    """Record progress (and renew the heartbeat). False when the lease is lost."""
    now = _now()
    return bool(_update(_leased(lease), progress=progress, heartbeat_at=now, updated_at=now))


def operation_lease_state(*, lease: Lease) -> str:
    """'ok', 'cancel_requested', or 'lost' (not ours any more)."""
    row = (
        Operation.objects.filter(pk=lease.operation_id)
        .values("lease_id", "status", "cancel_requested_at")
        .first()
    )
    if row is None or row["status"] != PROCESSING or str(row["lease_id"]) != lease.lease_id:
        return "lost"
    return "cancel_requested" if row["cancel_requested_at"] else "ok"


def _after_finish(lease: Lease) -> None:
    """Inside the finishing transaction: roll the parent up and, after commit,
    publish the next operation waiting on the same serialization key."""
    if lease.parent_id is not None:
        _roll_up(lease.parent_id)
    if lease.serial_key is not None:
        serial_key = lease.serial_key
        transaction.on_commit(lambda: dispatch.publish_next_serial(serial_key), robust=True)


def operation_complete(*, lease: Lease, result: dict[str, Any] | None) -> bool:
    """processing -> completed. False when the lease was lost."""
    now = _now()
    with transaction.atomic():
        won = _update(
            _leased(lease),
            status=COMPLETED,
            result_metadata=result or {},
            completed_at=now,
            next_retry_at=None,
            lease_id=None,
            updated_at=now,
        )
        if won:
            _after_finish(lease)
    return bool(won)


def operation_confirm_cancel(
    *, lease: Lease, stage: str | None = None, stale_before: datetime | None = None
) -> bool:
    """processing -> cancelled, after the handler stopped at a checkpoint."""
    now = _now()
    with transaction.atomic():
        won = _update(
            _leased(lease, stale_before),
            status=CANCELLED,
            completed_at=now,
            next_retry_at=None,
            lease_id=None,
            error_message=f"cancelled during stage {stage}" if stage else "cancelled",
            updated_at=now,
        )
        if won:
            _after_finish(lease)
    return bool(won)


def operation_fail(
    *,
    lease: Lease,
    error: str,
    permanent: bool,
    stage: str | None = None,
    stale_before: datetime | None = None,
) -> str | None:
    """processing -> failed, or back to pending with `next_retry_at` while the
    retry budget lasts and the error is not permanent. A cancel requested in the
    meantime wins: the operation becomes cancelled. Returns the new status, or
    None when the lease was lost."""
    leased = _leased(lease, stale_before)
    row = leased.values("retry_count", "max_retries", "error_history", "cancel_requested_at").first()
    if row is None:
        return None
    if row["cancel_requested_at"] is not None:
        won = operation_confirm_cancel(lease=lease, stage=stage, stale_before=stale_before)
        return CANCELLED if won else None
    now = _now()
    attempt = row["retry_count"]
    message = _clip(f"{error} (stage: {stage})" if stage else error)
    history = row["error_history"] + [
        {"attempt": attempt, "at": now.isoformat(), "stage": stage, "error": message}
    ]
    common = {
        "error_message": message,
        "error_history": history,
        "lease_id": None,
        "updated_at": now,
    }
    optype = registry.get(lease.operation_type)
    if not permanent and attempt < row["max_retries"]:
        delay = retry_delay(optype, attempt + 1)
        try:
            with transaction.atomic():
                won = _update(
                    leased,
                    status=PENDING,
                    retry_count=attempt + 1,
                    next_retry_at=now + timedelta(seconds=delay),
                    dispatched_at=None,
                    **common,
                )
                if won:
                    _after_finish(lease)
            return PENDING if won else None
        except IntegrityError:
            # A newer pending operation with the same dedupe key covers this work.
            message = _clip(f"{message}; not retried: a pending operation of the same kind covers it")
            common["error_message"] = message
    with transaction.atomic():
        won = _update(leased, status=FAILED, completed_at=now, next_retry_at=None, **common)
        if won:
            _after_finish(lease)
    return FAILED if won else None


# --- cancel, retry, delete (the user's side) ----------------------------------------


def _parent_of(operation_id: str | uuid.UUID) -> tuple[uuid.UUID | None, bool]:
    """(parent id, is-a-parent) of an operation; raises OperationNotFound."""
    row = Operation.objects.filter(pk=operation_id).values("parent_id", "operation_type").first()
    if row is None:
        raise OperationNotFound(str(operation_id))
    try:
        is_parent = registry.get(row["operation_type"]).rollup
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
    for _ in range(5):
        now = _now()
        with transaction.atomic():
            won = _update(
                Operation.objects.filter(pk=operation_id, status=PENDING),
                status=CANCELLED,
                completed_at=now,
                next_retry_at=None,
                error_message="cancelled before it ran",
                updated_at=now,
            )
            if won:
                if parent_id is not None:
                    _roll_up(parent_id)
                return CancelOutcome.CANCELLED
        if _update(
            Operation.objects.filter(pk=operation_id, status=PROCESSING, cancel_requested_at__isnull=True),
            cancel_requested_at=now,
        ):
            return CancelOutcome.REQUESTED
        row = Operation.objects.filter(pk=operation_id).values("status").first()
        if row is None:
            raise OperationNotFound(str(operation_id))
        if row["status"] == PROCESSING:
            return CancelOutcome.REQUESTED  # already requested
        if row["status"] in TERMINAL_STATUSES:
            raise TransitionRefused(str(operation_id), "cancel", row["status"])
        # It went back to pending between our two UPDATEs (a retry); try again.
    raise TransitionRefused(str(operation_id), "cancel", PENDING, "the operation kept changing; try again")


def _cancel_parent(operation_id: str | uuid.UUID) -> CancelOutcome:
    now = _now()
    status = Operation.objects.filter(pk=operation_id).values_list("status", flat=True).first()
    if status is None:
        raise OperationNotFound(str(operation_id))
    if status in TERMINAL_STATUSES:
        raise TransitionRefused(str(operation_id), "cancel", status)
    with transaction.atomic():
        _update(
            Operation.objects.filter(parent_id=operation_id, status=PENDING),
            status=CANCELLED,
            completed_at=now,
            next_retry_at=None,
            error_message="cancelled with its parent",
            updated_at=now,
        )
        running = _update(
            Operation.objects.filter(
                parent_id=operation_id, status=PROCESSING, cancel_requested_at__isnull=True
            ),
            cancel_requested_at=now,
        )
        _roll_up(operation_id)
    return CancelOutcome.REQUESTED if running else CancelOutcome.CANCELLED


def operations_cancel_pending(*, bank_id: str, operation_type: str | None = None) -> int:
    """Cancel every pending operation of a bank (optionally of one type)."""
    pending = Operation.objects.filter(bank_id=bank_id, status=PENDING)
    if operation_type:
        pending = pending.filter(operation_type=operation_type)
    parents = set(
        pending.exclude(parent_id=None).values_list("parent_id", flat=True).distinct()
    )
    now = _now()
    with transaction.atomic():
        count = _update(
            pending,
            status=CANCELLED,
            completed_at=now,
            next_retry_at=None,
            error_message="cancelled before it ran",
            updated_at=now,
        )
        for parent_id in sorted(parents, key=str):
            _roll_up(parent_id)
    return count


def operation_retry(*, operation_id: str | uuid.UUID) -> None:
    """failed | cancelled -> pending, retry count reset. A parent re-queues its
    failed and cancelled children. Raises OperationNotFound or TransitionRefused."""
    parent_id, is_parent = _parent_of(operation_id)
    if is_parent:
        _retry_parent(operation_id)
        return
    retryable = Operation.objects.filter(pk=operation_id, status__in=[FAILED, CANCELLED])
    try:
        with transaction.atomic():
            won = _update(retryable, **_requeue_fields())
            if won and parent_id is not None:
                _roll_up(parent_id)
    except IntegrityError:
        raise TransitionRefused(
            str(operation_id), "retry", "failed",
            "a pending operation of the same kind already covers this work",
        ) from None
    if not won:
        status = Operation.objects.filter(pk=operation_id).values_list("status", flat=True).first()
        if status is None:
            raise OperationNotFound(str(operation_id))
        raise TransitionRefused(str(operation_id), "retry", status)
    _publish_on_commit(operation_id, Operation.objects.get(pk=operation_id).operation_type)


def _requeue_fields() -> dict[str, Any]:
    return {
        "status": PENDING,
        "retry_count": 0,
        "next_retry_at": None,
        "error_message": None,
        "cancel_requested_at": None,
        "completed_at": None,
        "dispatched_at": None,
        "lease_id": None,
        "progress": None,
        "updated_at": _now(),
    }


def _retry_parent(operation_id: str | uuid.UUID) -> None:
    status = Operation.objects.filter(pk=operation_id).values_list("status", flat=True).first()
    if status not in (FAILED, CANCELLED):
        raise TransitionRefused(str(operation_id), "retry", str(status))
    children = list(
        Operation.objects.filter(parent_id=operation_id, status__in=[FAILED, CANCELLED]).values_list(
            "pk", "operation_type"
        )
    )
    with transaction.atomic():
        for child_id, _ in children:
            try:
                with transaction.atomic():
                    _update(
                        Operation.objects.filter(pk=child_id, status__in=[FAILED, CANCELLED]),
                        **_requeue_fields(),
                    )
            except IntegrityError:
                log.info("child %s not re-queued: a pending duplicate covers it", child_id)
        _roll_up(operation_id)
    for child_id, child_type in children:
        _publish_on_commit(child_id, child_type)


def operation_delete(*, operation_id: str | uuid.UUID) -> None:
    """Delete a terminal operation (and its children). Raises OperationNotFound
    or TransitionRefused when it is still pending or processing."""
    with transaction.atomic():
        row = (
            Operation.objects.select_for_update()
            .filter(pk=operation_id)
            .values("status", "parent_id")
            .first()
        )
        if row is None:
            raise OperationNotFound(str(operation_id))
        if row["status"] not in TERMINAL_STATUSES:
            raise TransitionRefused(str(operation_id), "delete", row["status"])
        Operation.objects.filter(pk=operation_id).delete()
        if row["parent_id"] is not None:
            _roll_up(row["parent_id"])


# --- parents ----------------------------------------------------------------------


def rolled_up_status(counts: dict[str, int]) -> str | None:
    """A parent's status from its children's status counts (None: no children)."""
    total = sum(counts.values())
    if total == 0:
        return None
    terminal = sum(counts.get(s, 0) for s in TERMINAL_STATUSES)
    if terminal == total:
        if counts.get(FAILED):
            return FAILED
        if counts.get(CANCELLED):
            return CANCELLED
        return COMPLETED
    if counts.get(PROCESSING) or terminal:
        return PROCESSING
    return PENDING


def _roll_up(parent_id: str | uuid.UUID) -> None:
    """Recompute a parent from its children. Call inside the transaction that
    changed a child: the parent row is locked first, so concurrent children
    serialize here and the last one sees every sibling's final status."""
    parent = (
        Operation.objects.select_for_update()
        .filter(pk=parent_id)
        .values("status", "started_at", "completed_at")
        .first()
    )
    if parent is None:
        return
    counts = dict(
        Operation.objects.filter(parent_id=parent_id)
        .values_list("status")
        .annotate(n=Count("id"))
        .order_by()
    )
    status = rolled_up_status(counts)
    if status is None:
        return
    now = _now()
    total = sum(counts.values())
    done = sum(counts.get(s, 0) for s in TERMINAL_STATUSES)
    fields: dict[str, Any] = {
        "status": status,
        "progress": {
            "stage": "children",
            "at": now.isoformat(),
            "processed": done,
            "total": total,
            "detail": ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
        },
        "updated_at": now,
    }
    if status != PENDING and parent["started_at"] is None:
        fields["started_at"] = now
    if status in TERMINAL_STATUSES:
        fields["completed_at"] = parent["completed_at"] or now
        failed = counts.get(FAILED, 0)
        fields["error_message"] = f"{failed} of {total} child operations failed" if failed else None
    else:
        fields["completed_at"] = None
        fields["error_message"] = None
    Operation.objects.filter(pk=parent_id).update(**fields)


# --- leases ---------------------------------------------------------------------------


def operations_heartbeat(*, leases: dict[str, str]) -> int:
    """Renew the leases a worker process holds ({operation_id: lease_id}), in one UPDATE."""
    if not leases:
        return 0
    now = _now()
    return Operation.objects.filter(
        pk__in=list(leases), lease_id__in=list(leases.values()), status=PROCESSING
    ).update(heartbeat_at=now)


def operations_cancel_overdue(*, leases: dict[str, str], grace_seconds: float) -> list[str]:
    """Of the given leases, the operations whose cancel request is older than the grace period."""
    if not leases:
        return []
    cutoff = _now() - timedelta(seconds=grace_seconds)
    return [
        str(pk)
        for pk in Operation.objects.filter(
            pk__in=list(leases),
            lease_id__in=list(leases.values()),
            status=PROCESSING,
            cancel_requested_at__lt=cutoff,
        ).values_list("pk", flat=True)
    ]


def _lease_from_row(row: dict[str, Any]) -> Lease:
    return Lease(
        operation_id=str(row["pk"]),
        lease_id=str(row["lease_id"]),
        operation_type=row["operation_type"],
        bank_id=row["bank_id"],
        worker=row["worker"] or "",
        task_id=row["task_id"] or "",
        attempt=row["retry_count"],
        payload={},
        parent_id=str(row["parent_id"]) if row["parent_id"] else None,
        serial_key=row["serial_key"],
    )


_LEASE_FIELDS = (
    "pk", "lease_id", "operation_type", "bank_id", "worker", "task_id", "retry_count",
    "progress", "parent_id", "serial_key", "started_at",
)


def _stage(row: dict[str, Any]) -> str:
    return (row["progress"] or {}).get("stage") or "started"


def operation_abandoned(*, operation_id: str, task_id: str, timed_out: bool, reason: str) -> str | None:
    """The worker's main process saw the process running this operation die
    (killed, out of memory) or hit its hard time limit: settle the row now
    instead of waiting for the lease to expire. Fenced by the claiming task id.
    A timeout fails for good; a lost process is retried while the budget lasts."""
    row = (
        Operation.objects.filter(pk=operation_id, status=PROCESSING, task_id=task_id)
        .exclude(lease_id=None)
        .values(*_LEASE_FIELDS)
        .first()
    )
    if row is None:
        return None
    return operation_fail(lease=_lease_from_row(row), error=reason, permanent=timed_out, stage=_stage(row))


def operations_reap(*, limit: int = 500) -> int:
    """Processing operations whose heartbeat is older than the lease: back to
    pending (retry_count + 1, with backoff) while the retry budget lasts, else
    failed ("worker lost"); failed for good when they ran past their hard time
    limit; cancelled if a cancel was requested. Returns how many were reaped."""
    now = _now()
    cutoff = now - timedelta(seconds=settings.OPS_LEASE_SECONDS)
    stale = list(
        Operation.objects.filter(status=PROCESSING, heartbeat_at__lt=cutoff)
        .exclude(lease_id=None)
        .values(*_LEASE_FIELDS)[:limit]
    )
    reaped = 0
    for row in stale:
        try:
            limit_seconds = registry.get(row["operation_type"]).hard_time_limit
        except registry.UnknownOperationType:
            limit_seconds = None
        ran = (now - row["started_at"]).total_seconds() if row["started_at"] else 0
        timed_out = limit_seconds is not None and ran > limit_seconds
        error = (
            f"timed out: ran past the hard time limit of {limit_seconds:g}s"
            if timed_out
            else f"worker lost ({row['worker']})"
        )
        outcome = operation_fail(
            lease=_lease_from_row(row),
            error=error,
            permanent=timed_out,
            stage=_stage(row),
            stale_before=cutoff,  # a heartbeat that arrives meanwhile wins
        )
        if outcome is not None:
            reaped += 1
            log.warning("reaped operation %s from %s: now %s", row["pk"], row["worker"], outcome)
    return reaped


def operations_roll_up_stranded(*, limit: int = 200) -> int:
    """Backstop: recompute unfinished parents none of whose children is
    unfinished (roll-ups run with every child transition, so this finds only
    parents whose children were changed outside the service)."""
    parent_types = [t.name for t in registry.all_types() if t.rollup]
    stranded = list(
        Operation.objects.filter(
            operation_type__in=parent_types, status__in=[PENDING, PROCESSING]
        )
        .exclude(children__status__in=[PENDING, PROCESSING])
        .filter(children__isnull=False)
        .values_list("pk", flat=True)
        .distinct()[:limit]
    )
    for parent_id in stranded:
        with transaction.atomic():
            _roll_up(parent_id)
    return len(stranded)


def operations_prune(*, older_than_days: int, batch_size: int = 1000, max_batches: int = 100) -> int:
    """Delete terminal top-level operations (with their children) finished more
    than `older_than_days` ago, in batches so no statement holds locks for
    long. Returns how many top-level rows were deleted."""
    cutoff = _now() - timedelta(days=older_than_days)
    deleted = 0
    for _ in range(max_batches):
        ids = list(
            Operation.objects.filter(
                parent__isnull=True, status__in=list(TERMINAL_STATUSES), completed_at__lt=cutoff
            ).values_list("pk", flat=True)[:batch_size]
        )
        if not ids:
            break
        with transaction.atomic():
            Operation.objects.filter(pk__in=ids, status__in=list(TERMINAL_STATUSES)).delete()
        deleted += len(ids)
        if len(ids) < batch_size:
            break
    return deleted
