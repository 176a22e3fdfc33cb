"""Prometheus metrics, read from the database at scrape time, so every API
process reports the same figures whatever process did the work.

- ops_operations{type,status}: operations pending or processing now
- ops_queue_depth{type}: pending operations that are due (waiting for a slot)
- ops_operations_finished_total{type,status}: operations that finished
  (completed, failed, cancelled)
- ops_run_seconds{type}: histogram of run time (started -> finished) of
  completed operations
- ops_queue_wait_seconds{type}: histogram of queue wait (created -> started)
  of finished operations that ran

The last three are counters: each scrape first adds the operations that
finished since the previous one to rollup rows (`MetricsRollup`), so they only
grow (pruning old operations takes nothing away) and a scrape reads a few
hundred rows however large the table. The gauges count pending and processing
rows through their partial indexes.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import reduce
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, QuerySet, Sum
from django.db.models.functions import Now, TruncMinute
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from operations import registry
from operations.models import (
    ACTIVE_DAY,
    TERMINAL_STATUSES,
    FinishedPerMinute,
    MetricsRollup,
    MetricsWatermark,
    Operation,
    OperationStatus,
)

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
# Finished operations are counted once they finished this long ago: by then
# the transaction that finished them has committed, so none is skipped.
SETTLE = timedelta(seconds=5)
HISTOGRAMS = {
    # series prefix: (rows it observes, from, to)
    "run": (Q(status=OperationStatus.COMPLETED), "started_at", "completed_at"),
    "wait": (Q(), "created_at", "started_at"),
}


def _bucket_counts(rows: QuerySet[Operation], start: str, end: str) -> dict[str, dict[str, float]]:
    """Per type: cumulative bucket counts (series `<i>`) and the sum of seconds."""
    duration = ExpressionWrapper(F(end) - F(start), output_field=DurationField())
    buckets = {f"b{i}": Count("id", filter=Q(d__lte=timedelta(seconds=b))) for i, b in enumerate(BUCKETS)}
    per_type = (
        rows.filter(**{f"{start}__isnull": False, f"{end}__isnull": False})
        .annotate(d=duration)
        .values("operation_type")
        .annotate(n=Count("id"), seconds=Sum("d"), **buckets)
        .order_by()
    )
    result: dict[str, dict[str, float]] = {}
    for row in per_type:
        seconds = row["seconds"]
        total = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds or 0) / 1e6
        buckets_of: dict[str, Any] = dict(row)  # the bucket columns are named at run time
        series = {str(i): buckets_of[f"b{i}"] for i in range(len(BUCKETS))}
        series[str(len(BUCKETS))] = row["n"]
        result[row["operation_type"]] = {**series, "sum": total}
    return result


def roll_up_finished() -> None:
    """Add the operations finished since the watermark (up to SETTLE ago) to the
    rollup rows, and move the watermark. One scrape at a time does it (the
    others skip the locked watermark and read the rollup as it stands)."""
    horizon = timezone.now() - SETTLE
    with transaction.atomic():
        mark = MetricsWatermark.objects.select_for_update(skip_locked=True).filter(pk=1).first()
        if mark is None:
            try:
                # The first scrape ever: count from now on.
                with transaction.atomic():
                    MetricsWatermark.objects.create(pk=1, counted_until=horizon)
            except IntegrityError:
                pass  # it exists, and another scrape holds it
            return
        if mark.counted_until >= horizon:
            return
        finished = Operation.objects.filter(_finished_between(mark.counted_until, horizon))
        increments: dict[tuple[str, str], tuple[int, float]] = {}
        for optype, status, n in finished.values_list("operation_type", "status").annotate(n=Count("id")).order_by():
            increments[(optype, f"finished:{status}")] = (n, 0.0)
        parent_types = registry.parent_type_names()
        for prefix, (condition, start, end) in HISTOGRAMS.items():
            rows = finished.filter(condition).exclude(operation_type__in=parent_types)
            for optype, series in _bucket_counts(rows, start, end).items():
                total = series.pop("sum")
                for index, n in series.items():
                    # The sum rides on the +Inf bucket's row.
                    increments[(optype, f"{prefix}:{index}")] = (int(n), total if index == str(len(BUCKETS)) else 0.0)
        if increments:
            _add(increments)
        _add_minutes(finished, horizon)
        mark.counted_until = horizon
        mark.save(update_fields=["counted_until"])


def _finished_between(after: datetime, until: datetime) -> Q:
    """One arm per terminal status, each a range scan of `ops_terminal_completed`
    (status, completed_at). Written as `status IN (…)`, the condition is the
    index's own predicate: PostgreSQL drops it and walks the whole index for the
    time range (224 ms at a million rows, against 2 ms this way). The rows are
    still in the live rows' partition or filed under the days they finished:
    saying so spares PostgreSQL planning and reading every other week's."""
    in_window = reduce(
        operator.or_,
        (Q(status=status, completed_at__gt=after, completed_at__lte=until) for status in sorted(TERMINAL_STATUSES)),
    )
    filed = Q(finished_on__gte=after.astimezone(UTC).date(), finished_on__lte=until.astimezone(UTC).date())
    return in_window & (Q(finished_on=ACTIVE_DAY) | filed)


# The dashboard charts a day; minutes are kept two, then dropped.
MINUTES_KEPT = timedelta(days=2)


def _add_minutes(finished: QuerySet[Operation], horizon: datetime) -> None:
    """Add the finished operations to their minute's count (`FinishedPerMinute`),
    and drop minutes older than MINUTES_KEPT (the watermark lock makes this
    pass the only writer)."""
    per_minute = (
        finished.annotate(minute=TruncMinute("completed_at"))
        .values_list("minute", "operation_type", "status")
        .annotate(n=Count("id"))
        .order_by()
    )
    found = {(minute, optype, status): n for minute, optype, status, n in per_minute}
    if found:
        current = {
            (row.minute, row.operation_type, row.status): row
            for row in FinishedPerMinute.objects.filter(minute__in={minute for minute, _, _ in found})
        }
        rows = []
        for key, n in found.items():
            row = current.get(key) or FinishedPerMinute(minute=key[0], operation_type=key[1], status=key[2])
            row.count += n
            rows.append(row)
        FinishedPerMinute.objects.bulk_create(
            rows, update_conflicts=True, unique_fields=["minute", "operation_type", "status"], update_fields=["count"]
        )
    FinishedPerMinute.objects.filter(minute__lt=horizon - MINUTES_KEPT).delete()


def _add(increments: dict[tuple[str, str], tuple[int, float]]) -> None:
    """Add to the rollup rows, in one read and one upsert (the watermark lock
    makes this scrape the only writer)."""
    current = {
        (r.operation_type, r.series): r
        for r in MetricsRollup.objects.filter(operation_type__in={t for t, _ in increments})
    }
    rows = []
    for (optype, series), (n, total) in increments.items():
        row = current.get((optype, series)) or MetricsRollup(operation_type=optype, series=series)
        row.count += n
        row.total += total
        rows.append(row)
    MetricsRollup.objects.bulk_create(
        rows, update_conflicts=True, unique_fields=["operation_type", "series"], update_fields=["count", "total"]
    )


class OperationsCollector(Collector):
    def collect(self) -> Iterator[Any]:
        roll_up_finished()
        types = [t.name for t in registry.all_types()]
        runnable = [t.name for t in registry.runnable_types()]

        current = GaugeMetricFamily("ops_operations", "Operations pending or processing", labels=["type", "status"])
        for status in (OperationStatus.PENDING, OperationStatus.PROCESSING):
            # One status at a time, so each count reads its partial index.
            counts = dict(
                Operation.objects.live()
                .filter(status=status)
                .values_list("operation_type")
                .annotate(n=Count("id"))
                .order_by()
            )
            for name in types:
                current.add_metric([name, status], counts.get(name, 0))
        yield current

        depth = GaugeMetricFamily("ops_queue_depth", "Due pending operations by type", labels=["type"])
        due = dict(
            Operation.objects.live()
            .filter(status=OperationStatus.PENDING)
            .filter(Q(next_retry_at__isnull=True) | Q(next_retry_at__lte=Now()))
            .values_list("operation_type")
            .annotate(n=Count("id"))
            .order_by()
        )
        for name in runnable:
            depth.add_metric([name], due.get(name, 0))
        yield depth

        rollup = {(r.operation_type, r.series): r for r in MetricsRollup.objects.all()}
        finished = CounterMetricFamily(
            "ops_operations_finished", "Operations that finished, by type and status", labels=["type", "status"]
        )
        for name in types:
            for status in sorted(TERMINAL_STATUSES):
                row = rollup.get((name, f"finished:{status}"))
                finished.add_metric([name, status], row.count if row else 0)
        yield finished
        yield _histogram("ops_run_seconds", "Run time of completed operations", "run", runnable, rollup)
        yield _histogram("ops_queue_wait_seconds", "Wait from submission to start", "wait", runnable, rollup)


def _histogram(
    name: str, doc: str, prefix: str, types: list[str], rollup: dict[tuple[str, str], MetricsRollup]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["type"])
    for optype in types:
        rows = [rollup.get((optype, f"{prefix}:{i}")) for i in range(len(BUCKETS) + 1)]
        counts = [row.count if row else 0 for row in rows]
        buckets = [(str(b), counts[i]) for i, b in enumerate(BUCKETS)] + [("+Inf", counts[-1])]
        family.add_metric([optype], buckets, sum_value=rows[-1].total if rows[-1] else 0.0)
    return family
