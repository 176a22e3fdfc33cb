"""Publishing operations to the broker: the outbox side of the lifecycle.

The database is the source of truth; a broker message is only a nudge that says
"operation X may be claimable now". A message can be lost (broker restart,
publish failure, a worker killed after fetching it) or duplicated (a sweep
re-publishes): the claim in `services` drops whatever is not claimable, and the
sweeper re-publishes pending operations that are due and were not picked up.

`dispatched_at` marks the last publish. A publisher first marks the row with a
conditional UPDATE, so two sweepers racing over one row publish it once.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from operations import registry
from operations.models import Operation, OperationStatus

log = logging.getLogger(__name__)

# A freshly submitted row is published by its own transaction's on_commit hook;
# the sweeper leaves it alone for this long so it is not published twice.
SUBMIT_GRACE_SECONDS = 2.0


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


def publish_due(*, limit: int = 1000) -> int:
    """Publish pending operations that are due and have no live message: never
    published (or the publish failed), parked until a retry time now passed,
    or published so long ago that the message must have been lost."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.OPS_REDISPATCH_SECONDS)
    settled = now - timedelta(seconds=SUBMIT_GRACE_SECONDS)
    runnable = [t.name for t in registry.all_types() if not t.rollup]
    candidates = (
        Operation.objects.filter(status=OperationStatus.PENDING, operation_type__in=runnable)
        .filter(Q(next_retry_at__isnull=True) | Q(next_retry_at__lte=now))
        .filter(
            Q(dispatched_at__isnull=True, updated_at__lt=settled)
            | Q(dispatched_at__lt=stale)
        )
        .order_by("created_at")
        .values("pk", "operation_type", "dispatched_at")[:limit]
    )
    published = 0
    for row in candidates:
        if publish(row["pk"], row["operation_type"], expected_dispatched_at=row["dispatched_at"]):
            published += 1
    return published

