"""Parents: a parent operation (a `retain_batch`, say) never runs; its status
is the roll-up of its children's.

`roll_up` is called inside the transaction that changed a child. It locks the
parent row first, then counts its children (`queries.ROLL_UP_LOCK`), so
concurrent children serialize here and the last one sees every sibling's
final status. The parent then moves by the `roll_up` transition,
a conditional UPDATE from pending or processing only: a finished parent never
moves back (a late child change cannot resurrect a cancelled batch); only a
manual retry (`retry_parent`) re-opens it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.db import connection
from django.utils import timezone

from core import prepared
from operations import finish_hooks
from operations.lifecycle import queries
from operations.models import TERMINAL_STATUSES, Operation, OperationStatus

PENDING = OperationStatus.PENDING
PROCESSING = OperationStatus.PROCESSING
COMPLETED = OperationStatus.COMPLETED
FAILED = OperationStatus.FAILED
CANCELLED = OperationStatus.CANCELLED


def rolled_up_status(counts: dict[str, int]) -> str | None:
    """A parent's status from its children's status counts (None: no children).

    `pending` until a child runs, `processing` while children run (or some
    finished and others wait), and once every child is terminal: `failed` if
    any failed, else `cancelled` if any was cancelled, else `completed`."""
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


def progress(counts: dict[str, int], now: datetime) -> dict[str, Any]:
    """A parent's progress from its children's status counts."""
    return {
        "stage": "children",
        "at": now.isoformat(),
        "processed": sum(counts.get(s, 0) for s in TERMINAL_STATUSES),
        "total": sum(counts.values()),
        # Hindsight's progress detail: counts by name.
        "detail": {s: counts.get(s, 0) for s in OperationStatus.values},
    }


def roll_up(parent_id: str | uuid.UUID) -> str | None:
    """Recompute a parent from its children, in the caller's transaction.
    Returns the parent's new status, or None when it did not move (gone,
    finished, or childless)."""
    pk = Operation._meta.pk.get_db_prep_value(parent_id, connection)
    row = prepared.fetchone(queries.roll_up_lock(), [pk])
    if row is None or row[0] in TERMINAL_STATUSES:
        return None
    parent = dict(zip(("status", "started_at", "bank_id", "operation_type", "tag", "parent_id"), row, strict=True))
    counted = prepared.fetchone(queries.roll_up_counts(), [pk])
    assert counted is not None  # an aggregate always answers one row
    counts: dict[str, int] = prepared.json_value(counted[0]) or {}
    status = rolled_up_status(counts)
    if status is None:
        return None
    now = timezone.now()
    total = sum(counts.values())
    fields: dict[str, Any] = {
        "progress": progress(counts, now),
        "updated_at": now,
        "completed_at": now if status in TERMINAL_STATUSES else None,
        "error_message": None,
    }
    if status != PENDING and parent["started_at"] is None:
        fields["started_at"] = now
    if status == FAILED:
        fields["error_message"] = f"{counts[FAILED]} of {total} child operations failed"
    moved = Operation.objects.filter(pk=parent_id).transition("roll_up", status=status, **fields)
    if moved and status in (COMPLETED, FAILED):
        # A parent finishes here, not through the lifecycle service's finish:
        # its finish hooks (webhooks) run in this same transaction.
        followers = finish_hooks.followers(bank_id=parent["bank_id"], operation_type=parent["operation_type"])
        finish_hooks.run(
            followers,
            finish_hooks.Finished(
                operation_id=str(parent_id),
                bank_id=parent["bank_id"],
                operation_type=parent["operation_type"],
                status=status,
                result={"children": fields["progress"]["detail"]},
                error=fields["error_message"],
                tag=parent["tag"],
                parent_id=str(uuid.UUID(str(parent["parent_id"]))) if parent["parent_id"] else None,
            ),
        )
    return status if moved else None
