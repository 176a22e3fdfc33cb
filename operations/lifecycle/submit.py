"""Submitting: one operation, a parent with its children, many at once;
deduplication, the dispatch window, and publishing once the caller commits."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from core import prepared
from operations import registry
from operations.lifecycle import dispatch, queries
from operations.lifecycle.common import PENDING, timestamp
from operations.lifecycle.rollup import progress as roll_up_progress
from operations.lifecycle.rollup import roll_up
from operations.models import (
    ACTIVE_DAY,
    Operation,
)


@dataclass(frozen=True)
class Submission:
    operation: Operation
    deduplicated: bool


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
    fields["dispatched_at"] = timestamp()
    fields["task_id"] = str(uuid.uuid4())


_FIELDS = [field.attname for field in Operation._meta.concrete_fields]


def _refuse_finished_id(operation_id: Any) -> None:
    """A caller's own ids (a client's operation id) are unique among the
    active rows by the active partition's primary key, but PostgreSQL cannot
    index them unique across partitions: one that already finished (in a
    week's partition) is refused here, as the key would. Run after the INSERT,
    this statement's snapshot sees any row that left the active partition
    before ours entered it (the INSERT waited for that move to commit)."""
    if Operation.objects.filter(pk=operation_id).exclude(finished_on=ACTIVE_DAY).exists():
        raise IntegrityError("operation id already taken by a finished operation")


def _insert(fields: dict[str, Any], *, chosen_id: Any = None) -> Operation:
    """Write one new pending row; see `_insert_many`."""
    return _insert_many([fields], chosen_id=chosen_id)[0]


def _insert_many(many: list[dict[str, Any]], *, chosen_id: Any = None) -> list[Operation]:
    """Write new pending rows (`queries.insert`, prepared: one statement per
    `insert_batch_size()` rows) and return them as create() would: every
    column set, the others as the database has them. `chosen_id`: an id among
    them the caller chose (a client's), refused if a finished row has it."""
    now = timezone.now()
    rows = []
    for fields in many:
        row: dict[str, Any] = dict.fromkeys(queries.INSERTED)
        row.update(
            status=PENDING.value, result_metadata={}, error_history=[], retry_count=0, created_at=now, updated_at=now
        )
        row.update(fields)
        row["id"] = uuid.UUID(str(row["id"])) if row["id"] is not None else uuid.uuid4()
        row["finished_on"] = ACTIVE_DAY  # the column's default: not in the INSERT
        rows.append(row)
    size = queries.insert_batch_size()
    for start in range(0, len(rows), size):
        batch = rows[start : start + size]
        params = [param for row in batch for param in queries.insert_params(row, connection)]
        with prepared.execute(queries.insert(len(batch)), params):
            pass
    if chosen_id is not None and connection.vendor == "postgresql":
        _refuse_finished_id(chosen_id)
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
    # A plain row is one INSERT. A duplicate (of a dedupe key or of a chosen
    # id) needs a savepoint to fail in (the caller's transaction goes on), a
    # child its parent's roll-up beside it.
    guarded = dedupe_key is not None or parent_id is not None or operation_id is not None
    # A duplicate can lose its pending twin between our failed INSERT and the
    # lookup (it was just claimed); then the INSERT is simply tried again.
    for _ in range(5):
        try:
            if guarded:
                with transaction.atomic():
                    operation = _insert(fields, chosen_id=operation_id)
                    if parent_id is not None:
                        roll_up(parent_id)
            else:
                operation = _insert(fields)
        except IntegrityError:
            if dedupe_key is None:
                raise
            existing = Operation.objects.live().filter(dedupe_key=dedupe_key, status=PENDING).first()
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
    fresh_id: bool = False,
) -> tuple[Operation, list[Operation]]:
    """A parent (an async retain's `retain_batch`) and its children, in the
    caller's transaction: one bulk INSERT of them all (the window checked
    once per type), the children published on commit. The
    parent is written already rolled up (every child pending), so no roll-up
    runs. Types that deduplicate are refused as children (a batch cannot be
    half-deduplicated); IntegrityError for an id already taken (callers own
    id idempotency). `fresh_id`: `operation_id` was just drawn at random by
    the caller (not a client's), so it needs no check against finished rows."""
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
        parent, *created = _insert_many(
            [fields, *rows], chosen_id=fields["id"] if operation_id is not None and not fresh_id else None
        )
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


def publish_on_commit(operation_id: uuid.UUID | str, operation_type: str) -> None:
    transaction.on_commit(lambda: dispatch.offer(operation_id, operation_type), robust=True)


def operation_amend_pending(*, operation: Operation, payload: dict[str, Any]) -> bool:
    """Replace the payload of an operation still pending with the payload it
    was read with (compare and set): a deduplicated request widens the one it
    joined. False when a worker claimed it meanwhile, or another request
    amended it first; the caller then submits again."""
    amended = Operation.objects.filter(pk=operation.pk, status=PENDING, task_payload=operation.task_payload).update(
        task_payload=payload
    )
    if amended:
        operation.task_payload = payload
    return bool(amended)
