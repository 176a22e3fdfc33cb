"""Keeping leases honest and the table tidy: heartbeats, overdue cancels, runs
abandoned by a dead process, the reaper, stranded parents, pruning."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Q

from operations import partitions, registry
from operations.handlers import Lease
from operations.lifecycle.common import PENDING, PROCESSING, timestamp
from operations.lifecycle.rollup import roll_up
from operations.lifecycle.run import operation_fail
from operations.models import (
    TERMINAL_STATUSES,
    Operation,
)

log = logging.getLogger(__name__)


def operations_heartbeat(*, leases: dict[str, str]) -> int:
    """Renew the leases a worker process holds ({operation_id: lease_id}), in one UPDATE."""
    if not leases:
        return 0
    return Operation.objects.filter(pk__in=list(leases), lease_id__in=list(leases.values())).transition(
        "progress", heartbeat_at=timestamp(), updated_at=F("updated_at")
    )


def operations_cancel_overdue(*, leases: dict[str, str], grace_seconds: float) -> list[str]:
    """Of the given leases, the operations whose cancel request is older than the grace period."""
    if not leases:
        return []
    cutoff = timestamp() - timedelta(seconds=grace_seconds)
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
    now = timestamp()
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
    parent_types = registry.parent_type_names()
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
    long. Returns how many top-level rows were deleted. On PostgreSQL the
    partitions past retention are dropped whole first (`operations_partitions_keep`);
    what is left to delete row by row is in the default and history
    partitions, or not filed yet."""
    cutoff = timestamp() - timedelta(days=older_than_days)
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


def operations_file_finished(*, limit: int = 5000, batches: int = 20) -> int:
    """PostgreSQL: move the operations that finished more than
    OPS_FILE_FINISHED_AFTER_SECONDS ago from the active partition to their
    week's (`partitions.file_finished`), at most `batches` × `limit` per call
    (the sweep's). Returns how many moved."""
    if connection.vendor != "postgresql":
        return 0
    before = timestamp() - timedelta(seconds=settings.OPS_FILE_FINISHED_AFTER_SECONDS)
    moved = 0
    for _ in range(batches):
        filed = partitions.file_finished(before=before, limit=limit)
        moved += filed
        if filed < limit:
            break
    return moved


def operations_partitions_keep(*, older_than_days: int) -> dict[str, list[str]]:
    """PostgreSQL's partitions of the operations table: the coming days'
    (OPS_PARTITIONS_AHEAD_DAYS, OPS_PARTITION_DAYS each) made ahead, those
    wholly past retention dropped. Nothing to do on SQLite (one table,
    pruned row by row)."""
    if not partitions.is_partitioned():
        return {"created": [], "dropped": []}
    now = timestamp()
    with partitions.sole_keeper() as alone:
        if not alone:
            log.info("another prune is keeping the operations table's partitions; this one leaves them to it")
            return {"created": [], "dropped": []}
        created = partitions.ensure_ahead(now.date(), settings.OPS_PARTITIONS_AHEAD_DAYS, settings.OPS_PARTITION_DAYS)
        dropped = partitions.drop_before((now - timedelta(days=older_than_days)).date())
    return {"created": created, "dropped": dropped}
