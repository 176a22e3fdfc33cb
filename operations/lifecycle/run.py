"""The worker's side: claim, progress, complete, yield, fail (with the retry
policy), and a confirmed cancel, each fenced by the lease."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timedelta
from typing import Any

import orjson
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import BooleanField
from django.db.models.expressions import RawSQL

from core import prepared
from operations import fair_share, finish_hooks, registry
from operations.handlers import Lease, LeaseState
from operations.lifecycle import dispatch, queries
from operations.lifecycle.common import (
    CANCELLED,
    COMPLETED,
    FAILED,
    PENDING,
    PROCESSING,
    clip_error,
    retry_delay,
    timestamp,
)
from operations.lifecycle.rollup import roll_up
from operations.lifecycle.submit import publish_on_commit
from operations.models import (
    Operation,
    OperationQuerySet,
)

log = logging.getLogger(__name__)


def _one_statement() -> AbstractContextManager[Any]:
    """For a single statement that may fail on a constraint: in the caller's
    transaction, a savepoint so the failure does not abort it; in autocommit,
    nothing (the statement is its own transaction)."""
    return transaction.atomic() if connection.in_atomic_block else nullcontext()


def _claim_statement() -> AbstractContextManager[Any]:
    """Where the claim's clock is read. SQLite serializes writers: a claim
    waiting for the write lock while the holder of its serialization key
    finishes would otherwise record a `started_at` from before that finish.
    Its IMMEDIATE transaction takes the lock at BEGIN, so the clock read inside
    is the moment the claim really happens. On PostgreSQL a busy key fails at
    once instead of waiting for the holder to finish, so the single statement
    keeps that order without a transaction around it."""
    if connection.vendor == "sqlite":
        return transaction.atomic()
    return _one_statement()


def _with_parent(parent_id: str | uuid.UUID | None) -> AbstractContextManager[Any]:
    """A child's transition and its parent's roll-up commit together; a row
    without a parent needs no transaction around its one UPDATE."""
    return transaction.atomic() if parent_id is not None else nullcontext()


def _finish(
    lease: Lease,
    leased: OperationQuerySet,
    transition: str,
    status: str,
    fields: dict[str, Any],
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> bool:
    """processing -> completed | failed, with whatever the finish hooks write
    (webhook deliveries) and the parent's roll-up in the same transaction.

    Most finishes have neither: then it is one UPDATE in autocommit, which
    applies only while no hook's condition holds for the row. Otherwise (or
    when that UPDATE did not apply) one transaction: the UPDATE returns each
    hook's answer, and only the hooks that may act are asked what to do."""
    conditions = finish_hooks.conditions()
    if lease.parent_id is None:
        quiet = [RawSQL(f"NOT ({condition})", [], output_field=BooleanField()) for condition in conditions.values()]
        if leased.filter(*quiet).transition(transition, **fields):
            _after_finish(lease)
            return True
    with transaction.atomic():
        rows = leased.transition_returning(transition, ("id",), extra=conditions, **fields)
        if rows:
            found = finish_hooks.followers_where(
                bank_id=lease.bank_id, operation_type=lease.operation_type, answers=rows[0]
            )
            finish_hooks.run(found, _finished(lease, status, result=result, error=error))
            _after_finish(lease)
    return bool(rows)


def _finished(
    lease: Lease, status: str, *, result: dict[str, Any] | None = None, error: str | None = None
) -> finish_hooks.Finished:
    return finish_hooks.Finished(
        operation_id=lease.operation_id,
        bank_id=lease.bank_id,
        operation_type=lease.operation_type,
        status=status,
        result=result or {},
        error=error,
        document_id=lease.document_id,
        tag=lease.tag,
        parent_id=lease.parent_id,
    )


def operation_claim(
    *, operation_id: str, worker: str, task_id: str, replace: tuple[str, Callable[[], None]] | None = None
) -> Lease | None:
    """pending -> processing, if the operation is due. None when it is not
    claimable (already claimed, finished, cancelled, parked until later, its
    bank at its fair share while another waits, or its serialization key
    held by another running operation). One statement (`queries.claim`) for
    a row without a parent.

    `replace` = (the message's type, a fallback): the message left the broker,
    so the next waiting operation of that type takes its place in the window.
    On PostgreSQL the claim picks it in the same statement
    (`queries.CLAIM_AND_PICK`); elsewhere, or when the claim failed on its
    serialization key, the fallback does it."""
    lease_id = uuid.uuid4()
    picked_in_claim = False
    row: dict[str, Any] | None = None
    try:
        with _claim_statement():
            now = timestamp()
            statement = queries.claim()
            params = queries.claim_params(
                operation_id=operation_id,
                worker=worker,
                task_id=task_id,
                lease_id=lease_id,
                now=now,
                connection=connection,
            )
            picked: dict[str, Any] | None = None
            next_task = str(uuid.uuid4())
            if replace is not None and connection.vendor == "postgresql":
                statement = queries.claim_and_pick(statement)
                params += queries.pick_params(
                    operation_type=replace[0],
                    after=dispatch.cursor_for(replace[0]),
                    task_id=next_task,
                    now=prepared.adapt(now, connection),
                    stale_before=prepared.adapt(now - timedelta(seconds=settings.OPS_REDISPATCH_SECONDS), connection),
                )
                picked_in_claim = True
            fetched = prepared.fetchone(statement, params)
            if picked_in_claim:
                assert fetched is not None  # the statement answers one row, its values null when nothing moved
                claimed, picked = (prepared.json_value(value) for value in fetched)
                row = claimed
            elif fetched is not None:
                row = dict(zip(queries.CLAIMED, fetched, strict=True))
        if picked is not None:
            dispatch.picked_by_claim(replace[0], picked, next_task)  # type: ignore[index]
    except IntegrityError:
        # Another operation with the same serialization key is running. This one
        # stays pending; it is published again when that one finishes.
        Operation.objects.filter(pk=operation_id).transition("dispatch", dispatched_at=None)
        log.info("operation %s waits: its serialization key is busy", operation_id)
        picked_in_claim = False
        if replace is not None:
            replace[1]()
        return None
    if replace is not None and not picked_in_claim:
        replace[1]()
    if row is None:
        # Not claimable. If it is still pending under this message (its bank
        # is at its fair share while another bank waits, or it is not due),
        # it is published again later.
        Operation.objects.filter(pk=operation_id, task_id=task_id).transition("dispatch", dispatched_at=None)
        return None
    if row["parent_id"] is not None:
        # Right after the claim, in a transaction of its own (a parent shows
        # pending for that moment; the next child change would fix it anyway).
        with transaction.atomic():
            roll_up(row["parent_id"])
    return Lease(
        operation_id=str(uuid.UUID(str(row["id"]))),
        lease_id=str(lease_id),
        operation_type=row["operation_type"],
        bank_id=row["bank_id"],
        worker=worker,
        task_id=task_id,
        attempt=row["retry_count"],
        payload=prepared.json_value(row["task_payload"]) or {},
        document_id=row["document_id"],
        filename=row["filename"],
        mental_model_id=row["mental_model_id"],
        tag=row["tag"],
        parent_id=str(uuid.UUID(str(row["parent_id"]))) if row["parent_id"] else None,
        serial_key=row["serial_key"],
        progress=prepared.json_value(row["progress"]),
        resumable=registry.get(row["operation_type"]).resumable,
    )


def _leased(lease: Lease, stale_before: datetime | None = None) -> OperationQuerySet:
    """The row, only while this lease holds it (and, for the reaper, only while
    its heartbeat is older than `stale_before`: a late heartbeat wins)."""
    rows = Operation.objects.live().filter(pk=lease.operation_id, lease_id=lease.lease_id)
    return rows if stale_before is None else rows.filter(heartbeat_at__lt=stale_before)


def operation_progress(*, lease: Lease, progress: dict[str, Any]) -> bool:
    """Record progress (and renew the heartbeat). False when the lease is lost."""
    now = timestamp()
    return bool(_leased(lease).transition("progress", progress=progress, heartbeat_at=now, updated_at=now))


def operation_lease_state(*, lease: Lease) -> LeaseState:
    """'ok', 'cancel_requested', or 'lost' (not ours any more)."""
    row = (
        Operation.objects.live()
        .filter(pk=lease.operation_id)
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
        roll_up(lease.parent_id)
    if lease.serial_key is not None:
        serial_key = lease.serial_key
        transaction.on_commit(lambda: dispatch.publish_next_serial(serial_key), robust=True)


def operation_complete(*, lease: Lease, result: dict[str, Any] | None) -> bool:
    """processing -> completed, with whatever the finish hooks queue (webhook
    deliveries) in the same transaction. False when the lease was lost.

    The hot path's finish, so its statements are `queries.complete`, not
    built per call: for a row with no parent where no hook may act, one
    UPDATE in autocommit; otherwise one transaction (see `_finish`)."""
    conditions = tuple(finish_hooks.conditions().items())
    params = queries.complete_params(
        operation_id=lease.operation_id,
        lease_id=lease.lease_id,
        result=orjson.dumps(result or {}).decode(),
        now=timestamp(),
        connection=connection,
    )
    if lease.parent_id is None:
        won = prepared.fetchone(queries.complete(conditions, quiet=True), params) is not None
        if won:
            _after_finish(lease)
            return True
    with transaction.atomic():
        row = prepared.fetchone(queries.complete(conditions, quiet=False), params)
        if row is not None:
            answers = dict(zip((name for name, _ in conditions), row[1:], strict=True))
            found = finish_hooks.followers_where(
                bank_id=lease.bank_id, operation_type=lease.operation_type, answers=answers
            )
            finish_hooks.run(found, _finished(lease, COMPLETED, result=result))
            _after_finish(lease)
    return row is not None


def operation_over_share(*, lease: Lease) -> bool:
    """Whether this running operation should give its slot back to another
    bank's waiting work (see `fair_share`)."""
    return fair_share.should_yield(
        operation_id=lease.operation_id,
        operation_type=lease.operation_type,
        bank_id=lease.bank_id,
        worker=lease.worker,
        now=timestamp(),
    )


def operation_yield(*, lease: Lease, progress: dict[str, Any] | None) -> bool:
    """processing -> pending, with its latest progress and its retry count: the slot
    goes to another bank's waiting work, and the next waiting operation of
    the type (chosen fairly across banks) is published. False when the lease
    was lost or a cancel request is pending (the handler stops at once then)."""
    now = timestamp()
    with _with_parent(lease.parent_id):
        won = _leased(lease).transition(
            "yield",
            lease_id=None,
            dispatched_at=None,
            next_retry_at=None,
            updated_at=now,
            **({"progress": progress} if progress is not None else {}),  # type: ignore[arg-type]
        )
        if won:
            _after_finish(lease)
    if won:
        operation_type = lease.operation_type
        transaction.on_commit(lambda: dispatch.publish_next(operation_type), robust=True)
    return bool(won)


def operation_confirm_cancel(*, lease: Lease, stage: str | None = None, stale_before: datetime | None = None) -> bool:
    """processing -> cancelled, after the handler stopped at a checkpoint."""
    now = timestamp()
    with _with_parent(lease.parent_id):
        won = _leased(lease, stale_before).transition(
            "confirm_cancel",
            completed_at=now,
            next_retry_at=None,
            lease_id=None,
            error_message=f"cancelled during stage {stage}" if stage else "cancelled",
            updated_at=now,
        )
        if won:
            _after_finish(lease)
    return bool(won)


def _transient_in_a_row(history: list[dict[str, Any]], attempt: int) -> int:
    """How many runs of this attempt ended in a transient error (each spent
    retry starts a fresh count)."""
    return sum(1 for entry in history if entry.get("transient") and entry.get("attempt") == attempt)


def _reschedule(
    lease: Lease,
    leased: OperationQuerySet,
    common: dict[str, Any],
    *,
    retry_count: int,
    next_retry_at: datetime | None,
) -> bool:
    """processing -> pending for another attempt. False when it did not apply
    (a cancel request is pending, the lease is gone), or when a newer pending
    operation with the same dedupe key covers this work: then `common`'s
    message says so for the failure that follows."""
    try:
        with _with_parent(lease.parent_id), _one_statement():
            won = leased.transition(
                "reschedule", retry_count=retry_count, next_retry_at=next_retry_at, dispatched_at=None, **common
            )
            if won:
                _after_finish(lease)
        return bool(won)
    except IntegrityError:
        common["error_message"] = clip_error(
            f"{common['error_message']}; not retried: a pending operation of the same kind covers it"
        )
        return False


def operation_fail(
    *,
    lease: Lease,
    error: str,
    permanent: bool,
    stage: str | None = None,
    stale_before: datetime | None = None,
    transient: str | None = None,
) -> str | None:
    """processing -> failed, or back to pending with `next_retry_at` while the
    retry budget lasts and the error is not permanent. A cancel request wins:
    `fail` and `reschedule` only apply while none is pending (their guard, at
    the moment of the UPDATE), so one landing at any point makes the operation
    cancelled. Returns the new status, or None when the lease was lost.

    A `transient` database error (its reason: "deadlock", "connection lost",
    see `core.transient`) is no fault of the work: the operation is due
    again at once and published on commit, without spending `max_retries`, up
    to `OPS_TRANSIENT_RETRIES` in a row; beyond that it counts as an error."""
    leased = _leased(lease, stale_before)
    row = leased.values("retry_count", "max_retries", "error_history").first()
    if row is None:
        return None
    now = timestamp()
    attempt = row["retry_count"]
    message = clip_error(f"{error} (stage: {stage})" if stage else error)
    entry: dict[str, Any] = {"attempt": attempt, "at": now.isoformat(), "stage": stage, "error": message}
    if transient is not None:
        entry["transient"] = transient
    history = row["error_history"] + [entry]
    common = {
        "error_message": message,
        "error_history": history,
        "lease_id": None,
        "updated_at": now,
    }
    in_a_row = _transient_in_a_row(history, attempt)
    if transient is not None and in_a_row <= settings.OPS_TRANSIENT_RETRIES:
        log.warning(
            "operation %s: transient %s (%d in a row), due again at once", lease.operation_id, transient, in_a_row
        )
        if _reschedule(lease, leased, common, retry_count=attempt, next_retry_at=None):
            publish_on_commit(lease.operation_id, lease.operation_type)
            return PENDING
    elif not permanent and attempt < row["max_retries"]:
        delay = retry_delay(registry.get(lease.operation_type), attempt + 1)
        if _reschedule(lease, leased, common, retry_count=attempt + 1, next_retry_at=now + timedelta(seconds=delay)):
            return PENDING
    # Only the final failure is an event; a rescheduled attempt is not.
    finished = {"completed_at": now, "next_retry_at": None, **common}
    if _finish(lease, leased, "fail", FAILED, finished, error=common["error_message"]):
        return FAILED
    # Neither applied: a cancel request is pending (it wins), or the lease is gone.
    return CANCELLED if operation_confirm_cancel(lease=lease, stage=stage, stale_before=stale_before) else None
