"""Pausing the dispatch of an operation type, from the console: while a type
is paused nothing of it is published and no worker claims it (`queries.claim`
and the pick skip it), so its operations wait, pending, with their order kept;
what runs already finishes. Resuming publishes its window again at once."""

from __future__ import annotations

from django.db import IntegrityError, transaction

from operations import registry
from operations.lifecycle import dispatch
from operations.lifecycle.common import PENDING, timestamp
from operations.models import Operation, PausedType


def dispatch_pause(*, operation_type: str, by: str) -> bool:
    """Pause a type; False when it was paused already. Raises
    UnknownOperationType for a type the registry does not know."""
    registry.get(operation_type)
    try:
        with transaction.atomic():
            PausedType.objects.create(operation_type=operation_type, paused_at=timestamp(), paused_by=by)
    except IntegrityError:
        return False
    return True


def dispatch_resume(*, operation_type: str) -> bool:
    """Resume a paused type; False when it was not paused. Its pending
    operations lose their published mark (the claim dropped the messages
    that arrived meanwhile) and its window is published again."""
    with transaction.atomic():
        deleted, _ = PausedType.objects.filter(operation_type=operation_type).delete()
        if not deleted:
            return False
        Operation.objects.filter(status=PENDING, operation_type=operation_type, dispatched_at__isnull=False).update(
            dispatched_at=None, task_id=None
        )
    dispatch.top_up(operation_type)
    return True


def paused_types() -> dict[str, PausedType]:
    return {paused.operation_type: paused for paused in PausedType.objects.all()}
