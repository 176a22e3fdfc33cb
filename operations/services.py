"""Every state change of an operation, in one place.

Each transition is named in `models.TRANSITIONS` and performed by
`Operation.objects.filter(...).transition(name, ...)`: one conditional UPDATE
from the statuses the table allows (and its guard), whose row count says whether
it won. Two racing transitions cannot both win; the loser sees 0 rows and
reports it (False, None or `TransitionRefused`), never an error. Uniqueness
rules (dedupe while pending, one processing per serialization key) are partial
unique indexes, so the database enforces them under any concurrency.

A parent's status is derived from its children (`operations.rollup`) in the
same transaction as each child's transition.

Nothing here does network I/O inside a transaction: publishing to the broker is
deferred to `transaction.on_commit`.
"""

from __future__ import annotations

import enum
import logging
import random
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import BooleanField, Count, F, Q
from django.db.models.expressions import RawSQL
from django.utils import timezone

from core import prepared
from core.errors import Conflict, Missing
from operations import dispatch, fair_share, finish_hooks, registry
from operations.handlers import Lease, LeaseState
from operations.lifecycle import queries
from operations.models import (
    ERROR_MESSAGE_MAX,
    TERMINAL_STATUSES,
    TRANSITIONS,
    Operation,
    OperationQuerySet,
    OperationStatus,
)
from operations.rollup import progress as roll_up_progress
from operations.rollup import roll_up, rolled_up_status  # noqa: F401 (rolled_up_status: re-exported)

log = logging.getLogger(__name__)

PENDING = OperationStatus.PENDING
PROCESSING = OperationStatus.PROCESSING
COMPLETED = OperationStatus.COMPLETED
FAILED = OperationStatus.FAILED
CANCELLED = OperationStatus.CANCELLED


class OperationNotFound(Missing):
    def detail(self) -> str:
        return f"operation {self} not found"


class TransitionRefused(Conflict):
    """The operation is not in a status the transition starts from (HTTP 409)."""

    def __init__(self, operation_id: str, action: str, status: str, reason: str = "") -> None:
        self.operation_id = operation_id
        self.action = action
        self.status = status
        self.reason = reason or f"cannot {action} an operation that is {status}"
        super().__init__(self.reason)

    def body(self) -> dict[str, Any]:
        return {"detail": self.reason, "status": self.status, "operation_id": self.operation_id}


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


def _new_row(
    optype: registry.OperationType,
    *,
    bank_id: str,
    payload: dict[str, Any] | None,
    items_count: int,
    document_id: str | None,
    filename: str | None,
    mental_model_id: str | None,
    tag: str | None,
    parent_id: str | uuid.UUID | None,
    operation_id: str | uuid.UUID | None,
) -> dict[str, Any]:
    keys: dict[str, Any] = {"bank_id": bank_id, "document_id": document_id, "mental_model_id": mental_model_id}
    fields: dict[str, Any] = {
        "bank_id": bank_id,
        "operation_type": optype.name,
        "task_payload": payload or {},
        "items_count": items_count,
        "document_id": document_id,
        "filename": filename,
        "mental_model_id": mental_model_id,
        "tag": tag,
        "parent_id": parent_id,
        "dedupe_key": optype.key_for(optype.dedupe, **keys),
        "serial_key": optype.key_for(optype.serialize, **keys),
        "max_retries": (optype.max_retries if optype.max_retries is not None else settings.OPS_WORKER_MAX_RETRIES),
    }
    if operation_id is not None:
        fields["id"] = operation_id
    return fields


def _mark_published(fields: dict[str, Any]) -> None:
    """Write the row already marked as published: its message is sent once the
    row is committed (`_send_on_commit`), with no second UPDATE."""
    fields["dispatched_at"] = _now()
    fields["task_id"] = str(uuid.uuid4())


_FIELDS = [field.attname for field in Operation._meta.concrete_fields]


def _insert(fields: dict[str, Any]) -> Operation:
    """Write one new pending row; see `_insert_many`."""
    return _insert_many([fields])[0]


def _insert_many(many: list[dict[str, Any]]) -> list[Operation]:
    """Write new pending rows (`queries.insert`, prepared: one statement per
    `insert_batch_size()` rows) and return them as create() would: every
    column set, the others as the database has them."""
    now = timezone.now()
    rows = []
    for fields in many:
        row: dict[str, Any] = dict.fromkeys(queries.INSERTED)
        row.update(
            status=PENDING.value, result_metadata={}, error_history=[], retry_count=0, created_at=now, updated_at=now
        )
        row.update(fields)
        row["id"] = uuid.UUID(str(row["id"])) if row["id"] is not None else uuid.uuid4()
        rows.append(row)
    size = queries.insert_batch_size()
    for start in range(0, len(rows), size):
        batch = rows[start : start + size]
        params = [param for row in batch for param in queries.insert_params(row, connection)]
        with prepared.execute(queries.insert(len(batch)), params):
            pass
    return [Operation.from_db(connection.alias, _FIELDS, [row.get(name) for name in _FIELDS]) for row in rows]


def _send_on_commit(operation: Operation, priority: int) -> None:
    operation_id, operation_type, task_id = operation.pk, operation.operation_type, operation.task_id
    assert task_id is not None
    transaction.on_commit(lambda: dispatch.send(operation_id, operation_type, task_id, priority=priority), robust=True)


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
    """Create a pending operation and publish it once the transaction commits
    if its type's dispatch window has room (else a top-up publishes it later).

    When the type deduplicates and an operation with the same key is pending,
    no row is written and that operation is returned with `deduplicated=True`.
    Raises `registry.UnknownOperationType` for an undeclared type and
    IntegrityError for an id already taken (callers own id idempotency).
    """
    optype = registry.get(operation_type)
    fields = _new_row(
        optype,
        bank_id=bank_id,
        payload=payload,
        items_count=items_count,
        document_id=document_id,
        filename=filename,
        mental_model_id=mental_model_id,
        tag=tag,
        parent_id=parent_id,
        operation_id=operation_id,
    )
    published, priority = dispatch.take_window_slots(operation_type, bank_id) if not optype.rollup else (0, 0)
    if published:
        _mark_published(fields)
    dedupe_key = fields["dedupe_key"]
    # A plain row is one INSERT. A duplicate needs a savepoint to fail in (the
    # caller's transaction goes on), a child its parent's roll-up beside it.
    guarded = dedupe_key is not None or parent_id is not None
    # A duplicate can lose its pending twin between our failed INSERT and the
    # lookup (it was just claimed); then the INSERT is simply tried again.
    for _ in range(5):
        try:
            if guarded:
                with transaction.atomic():
                    operation = _insert(fields)
                    if parent_id is not None:
                        roll_up(parent_id)
            else:
                operation = _insert(fields)
        except IntegrityError:
            if dedupe_key is None:
                raise
            existing = Operation.objects.filter(dedupe_key=dedupe_key, status=PENDING).first()
            if existing is not None:
                return Submission(existing, deduplicated=True)
            continue
        if operation.task_id:
            _send_on_commit(operation, priority)
        return Submission(operation, deduplicated=False)
    raise IntegrityError(f"could not submit {operation_type}: dedupe key {dedupe_key} kept changing")


@dataclass(frozen=True)
class Child:
    """One operation of `operation_submit_parent` or `operations_submit_many`: the fields of `operation_submit`."""

    operation_type: str
    payload: dict[str, Any]
    items_count: int = 0
    document_id: str | None = None
    filename: str | None = None
    mental_model_id: str | None = None


def operation_submit_parent(
    *,
    bank_id: str,
    operation_type: str,
    children: list[Child],
    payload: dict[str, Any] | None = None,
    items_count: int = 0,
    tag: str | None = None,
    operation_id: str | uuid.UUID | None = None,
) -> tuple[Operation, list[Operation]]:
    """A parent (an async retain's `retain_batch`) and its children, in the
    caller's transaction: one bulk INSERT of them all (the window checked
    once per type), the children published on commit. The
    parent is written already rolled up (every child pending), so no roll-up
    runs. Types that deduplicate are refused as children (a batch cannot be
    half-deduplicated); IntegrityError for an id already taken (callers own
    id idempotency)."""
    optype = registry.get(operation_type)
    if not optype.rollup:
        raise ValueError(f"{optype.name} is not a parent type")
    fields = _new_row(
        optype,
        bank_id=bank_id,
        payload=payload,
        items_count=items_count,
        document_id=None,
        filename=None,
        mental_model_id=None,
        tag=tag,
        parent_id=None,
        operation_id=operation_id,
    )
    if children:
        fields["progress"] = roll_up_progress({PENDING.value: len(children)}, timezone.now())
    fields["id"] = uuid.UUID(str(operation_id)) if operation_id is not None else uuid.uuid4()
    rows, priorities = _bulk_rows(bank_id=bank_id, parent_id=fields["id"], children=children, tag=tag)
    # The parent's row goes first in the children's INSERT (the foreign keys
    # are checked at commit).
    with transaction.atomic(savepoint=False):
        parent, *created = _insert_many([fields, *rows])
    _publish_on_commit_many(created, priorities)
    return parent, created


def operations_submit_many(*, bank_id: str, operations: list[Child], tag: str | None = None) -> list[Operation]:
    """Many independent operations of one bank (the webhook deliveries of one
    finished operation), in the caller's transaction: one bulk INSERT, each
    published on commit. Types that deduplicate are refused."""
    return _submit_bulk(bank_id=bank_id, parent_id=None, children=operations, tag=tag)


def _submit_bulk(
    *, bank_id: str, parent_id: uuid.UUID | str | None, children: list[Child], tag: str | None
) -> list[Operation]:
    """One bulk INSERT (`_insert_many`), the window asked once per type,
    and the messages of those published sent in one pass after commit."""
    rows, priorities = _bulk_rows(bank_id=bank_id, parent_id=parent_id, children=children, tag=tag)
    # In the caller's transaction when there is one (no savepoint: a failure
    # here fails the caller's whole submission anyway).
    with transaction.atomic(savepoint=False):
        created = _insert_many(rows)
    _publish_on_commit_many(created, priorities)
    return created


def _bulk_rows(
    *, bank_id: str, parent_id: uuid.UUID | str | None, children: list[Child], tag: str | None
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The rows of a bulk submission, those the window has room for marked
    published; and the broker priority of each of those, by task id."""
    rows = []
    by_type: dict[str, list[dict[str, Any]]] = {}
    for child in children:
        optype = registry.get(child.operation_type)
        if optype.dedupe is not None or optype.rollup:
            raise ValueError(f"{optype.name} cannot be submitted in bulk")
        fields = _new_row(
            optype,
            bank_id=bank_id,
            payload=child.payload,
            items_count=child.items_count,
            document_id=child.document_id,
            filename=child.filename,
            mental_model_id=child.mental_model_id,
            tag=tag,
            parent_id=parent_id,
            operation_id=None,
        )
        by_type.setdefault(optype.name, []).append(fields)
        rows.append(fields)
    priorities: dict[str, int] = {}
    for name, of_type in by_type.items():
        published, priority = dispatch.take_window_slots(name, bank_id, len(of_type))
        for fields in of_type[:published]:
            _mark_published(fields)
            priorities[fields["task_id"]] = priority
            priority = dispatch.BEHIND
    return rows, priorities


def _publish_on_commit_many(created: list[Operation], priorities: dict[str, int]) -> None:
    """Send the messages of the published ones in one pass once the caller commits."""
    messages: list[dispatch.Message] = [
        (op.pk, op.operation_type, op.task_id, priorities[op.task_id]) for op in created if op.task_id
    ]
    if messages:
        transaction.on_commit(lambda: dispatch.send_many(messages), robust=True)


def _publish_on_commit(operation_id: uuid.UUID | str, operation_type: str) -> None:
    transaction.on_commit(lambda: dispatch.offer(operation_id, operation_type), robust=True)


# --- claim, progress, finish (the worker's side) -----------------------------------


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
            now = _now()
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
    rows = Operation.objects.filter(pk=lease.operation_id, lease_id=lease.lease_id)
    return rows if stale_before is None else rows.filter(heartbeat_at__lt=stale_before)


def operation_progress(*, lease: Lease, progress: dict[str, Any]) -> bool:
    """Record progress (and renew the heartbeat). False when the lease is lost."""
    now = _now()
    return bool(_leased(lease).transition("progress", progress=progress, heartbeat_at=now, updated_at=now))


def operation_lease_state(*, lease: Lease) -> LeaseState:
    """'ok', 'cancel_requested', or 'lost' (not ours any more)."""
    row = Operation.objects.filter(pk=lease.operation_id).values("lease_id", "status", "cancel_requested_at").first()
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
        now=_now(),
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
        now=_now(),
    )


def operation_yield(*, lease: Lease, progress: dict[str, Any] | None) -> bool:
    """processing -> pending, with its latest progress and its retry count: the slot
    goes to another bank's waiting work, and the next waiting operation of
    the type (chosen fairly across banks) is published. False when the lease
    was lost or a cancel request is pending (the handler stops at once then)."""
    now = _now()
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
    now = _now()
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
        common["error_message"] = _clip(
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
    now = _now()
    attempt = row["retry_count"]
    message = _clip(f"{error} (stage: {stage})" if stage else error)
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
            _publish_on_commit(lease.operation_id, lease.operation_type)
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
    row = Operation.objects.filter(pk=operation_id)
    for _ in range(5):
        now = _now()
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
        outcome = _cancel_children(operation_id, _now())
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
    now = _now()
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
    Raises OperationNotFound or TransitionRefused."""
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
    _publish_on_commit(operation_id, Operation.objects.get(pk=operation_id).operation_type)


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
        "updated_at": _now(),
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
        _publish_on_commit(child_id, child_type)


def operation_delete(*, operation_id: str | uuid.UUID) -> None:
    """Delete a terminal operation (and its children). Raises OperationNotFound
    or TransitionRefused when it is still pending or processing."""
    with transaction.atomic():
        row = Operation.objects.select_for_update().filter(pk=operation_id).values("status", "parent_id").first()
        if row is None:
            raise OperationNotFound(str(operation_id))
        if row["status"] not in TRANSITIONS["delete"].sources:
            raise TransitionRefused(str(operation_id), "delete", row["status"])
        Operation.objects.filter(pk=operation_id).delete()
        if row["parent_id"] is not None:
            roll_up(row["parent_id"])


# --- leases ---------------------------------------------------------------------------


def operations_heartbeat(*, leases: dict[str, str]) -> int:
    """Renew the leases a worker process holds ({operation_id: lease_id}), in one UPDATE."""
    if not leases:
        return 0
    return Operation.objects.filter(pk__in=list(leases), lease_id__in=list(leases.values())).transition(
        "progress", heartbeat_at=_now(), updated_at=F("updated_at")
    )


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
    "pk",
    "lease_id",
    "operation_type",
    "bank_id",
    "worker",
    "task_id",
    "retry_count",
    "progress",
    "parent_id",
    "serial_key",
    "started_at",
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
    # Written as one query with an anti-join on the children, PostgreSQL (which
    # expects few unfinished parents) may scan every child row of the table for
    # each parent: 26 s per sweep with 100 open batches (seen in make bench).
    # So: unfinished parents first, each status on its own partial index...
    unfinished = [
        pk
        for status in (PENDING, PROCESSING)
        for pk in Operation.objects.filter(status=status, operation_type__in=parent_types).values_list("pk", flat=True)[
            :limit
        ]
    ]
    # ...then their children, looked up by parent id (`ops_children`).
    stranded = list(
        Operation.objects.filter(parent_id__in=unfinished)
        .values("parent_id")
        .annotate(active=Count("pk", filter=Q(status__in=[PENDING, PROCESSING])))
        .filter(active=0)
        .values_list("parent_id", flat=True)
        .order_by()[:limit]
    )
    for parent_id in stranded:
        with transaction.atomic():
            roll_up(parent_id)
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
