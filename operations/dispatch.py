"""Publishing operations to the broker: the outbox side of the lifecycle.

The database is the source of truth; a broker message is only a nudge that says
"operation X may be claimable now". A message can be lost (broker restart,
publish failure, a worker killed after fetching it) or duplicated (a sweep
re-publishes): the claim in `services` drops whatever is not claimable, and the
sweeper re-publishes pending operations that are due and were not picked up.

`dispatched_at` marks the last publish. A publisher first marks the row with a
conditional UPDATE on the `dispatched_at` it read, so two publishers racing over
one row (a submit's on-commit hook, a sweeper, a worker topping up) publish it once.

**The dispatch window.** At most `OPS_DISPATCH_WINDOW` messages per type are in
the broker at a time; the rest of a backlog waits in the database. Each message
a worker takes tops the window up again. So a backlog of any size costs the
broker nothing (kombu's filesystem transport lists its whole folder on every
fetch), a message is only ever stale when it was really lost, and a new
operation is picked up as soon as a slot is free.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from operations import registry
from operations.models import Operation, OperationStatus

log = logging.getLogger(__name__)


def publish(
    operation_id: uuid.UUID | str,
    operation_type: str,
    *,
    expected_dispatched_at: datetime | None = None,
) -> bool:
    """Publish one pending operation to its type's queue. Returns False when the
    row was not ours to publish (not pending, or another publisher marked it)
    or the broker refused; the sweeper tries again later in the second case."""
    from opsproject.celery import app

    optype = registry.get(operation_type)
    task_id = str(uuid.uuid4())
    marked = Operation.objects.filter(
        pk=operation_id, status=OperationStatus.PENDING, dispatched_at=expected_dispatched_at
    ).update(dispatched_at=timezone.now(), task_id=task_id)
    if not marked:
        return False
    try:
        app.send_task(optype.task_name, args=[str(operation_id)], queue=optype.queue, task_id=task_id)
    except Exception as exc:  # any broker failure: the row stays pending for the sweeper
        log.warning("publish of %s %s failed, the sweeper will retry: %s", operation_type, operation_id, exc)
        Operation.objects.filter(
            pk=operation_id, status=OperationStatus.PENDING, task_id=task_id
        ).update(dispatched_at=None)
        return False
    return True


def _stale_before() -> datetime:
    return timezone.now() - timedelta(seconds=settings.OPS_REDISPATCH_SECONDS)


def in_flight(operation_type: str) -> int:
    """Messages of this type in the broker now (published, not yet claimed)."""
    return Operation.objects.filter(
        status=OperationStatus.PENDING, operation_type=operation_type, dispatched_at__gte=_stale_before()
    ).count()


def _publishable(operation_type: str) -> QuerySet[Operation]:
    """Pending operations of a type that are due, have no live message, and
    whose serialization key is free; oldest first."""
    now = timezone.now()
    busy_keys = Operation.objects.filter(
        status=OperationStatus.PROCESSING, serial_key__isnull=False
    ).values("serial_key")
    return (
        Operation.objects.filter(status=OperationStatus.PENDING, operation_type=operation_type)
        .filter(Q(next_retry_at__isnull=True) | Q(next_retry_at__lte=now))
        .filter(Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=_stale_before()))
        .exclude(serial_key__in=busy_keys)
        .order_by("created_at")
    )


def top_up(operation_type: str) -> int:
    """Publish the oldest publishable operations of a type until the window is
    full; returns how many were published."""
    room = settings.OPS_DISPATCH_WINDOW - in_flight(operation_type)
    if room <= 0:
        return 0
    published = 0
    for pk, dispatched_at in _publishable(operation_type).values_list("pk", "dispatched_at")[:room]:
        if publish(pk, operation_type, expected_dispatched_at=dispatched_at):
            published += 1
    return published


def offer(operation_id: uuid.UUID | str, operation_type: str) -> bool:
    """A new (or re-queued) operation: publish it now if its type's window has
    room, else leave it to the next top-up."""
    if in_flight(operation_type) >= settings.OPS_DISPATCH_WINDOW:
        return False
    return publish(operation_id, operation_type)


def publish_due() -> int:
    """The sweeper's part: top every type's window up (operations whose retry
    time came, whose message was lost, or that waited behind a full window)."""
    return sum(top_up(t.name) for t in registry.all_types() if not t.rollup)


def publish_next_serial(serial_key: str) -> bool:
    """After an operation holding `serial_key` finished, publish the oldest due
    pending one waiting on the same key."""
    now = timezone.now()
    waiting = (
        Operation.objects.filter(serial_key=serial_key, status=OperationStatus.PENDING)
        .filter(Q(next_retry_at__isnull=True) | Q(next_retry_at__lte=now))
        .order_by("created_at")
        .values("pk", "operation_type", "dispatched_at")
        .first()
    )
    if waiting is None:
        return False
    return publish(
        waiting["pk"], waiting["operation_type"], expected_dispatched_at=waiting["dispatched_at"]
    )
