"""Pausing the dispatch of an operation type, from the console: while a type
is paused no worker claims it (`queries.claim` refuses it, and a message
already in the broker is dropped with its row's published mark undone), the
pick, the sweeper, retries' offers and serial successors publish nothing of
it, so its operations wait, pending, in their order; what runs already
finishes. (A submission made meanwhile is published once, as usual, and
dropped at the claim.) Resuming publishes its window again at once."""

from __future__ import annotations

from django.db import IntegrityError, transaction

from operations import registry
from operations.lifecycle import dispatch
from operations.lifecycle.common import timestamp
from operations.models import PausedType


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
    """Resume a paused type; False when it was not paused. Its window is
    published again at once: a message the claim dropped meanwhile had its
    row's published mark undone (the pick takes it now), and a message still
    in the broker is claimed as it comes."""
    deleted, _ = PausedType.objects.filter(operation_type=operation_type).delete()
    if not deleted:
        return False
    dispatch.top_up(operation_type)
    return True


def paused_types() -> dict[str, PausedType]:
    return {paused.operation_type: paused for paused in PausedType.objects.all()}
