"""Prometheus metrics, read from the operations table at scrape time.

- ops_operations{type,status}: operations retained in the database
- ops_queue_depth{type}: pending operations that are due (waiting for a slot)
- ops_run_seconds{type}: histogram of run time (started -> completed) of
  finished operations retained in the database
- ops_queue_wait_seconds{type}: histogram of queue wait (created -> started)

The histograms cover the operations still retained (OPS_OPERATION_RETENTION_DAYS),
so they can shrink when old rows are pruned.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from django.db.models.functions import Now
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from operations import registry
from operations.models import Operation, OperationStatus

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


def _histogram(name: str, doc: str, rows: Any, start: str, end: str) -> HistogramMetricFamily:
    from datetime import timedelta

    family = HistogramMetricFamily(name, doc, labels=["type"])
    duration = ExpressionWrapper(F(end) - F(start), output_field=DurationField())
    counts = {f"le_{i}": Count("id", filter=Q(d__lte=timedelta(seconds=b))) for i, b in enumerate(BUCKETS)}
    per_type = (
        rows.filter(**{f"{start}__isnull": False, f"{end}__isnull": False})
        .annotate(d=duration)
        .values("operation_type")
        .annotate(total=Count("id"), seconds=Sum("d"), **counts)
        .order_by()
    )
    for row in per_type:
        buckets = [(str(b), row[f"le_{i}"]) for i, b in enumerate(BUCKETS)] + [("+Inf", row["total"])]
        seconds = row["seconds"]
        total = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds or 0) / 1e6
        family.add_metric([row["operation_type"]], buckets, sum_value=total)
    return family


class OperationsCollector(Collector):
    def collect(self) -> Iterator[Any]:
        counts = GaugeMetricFamily("ops_operations", "Operations by type and status", labels=["type", "status"])
        seen = {
            (t, s): n
            for t, s, n in Operation.objects.values_list("operation_type", "status")
            .annotate(n=Count("id"))
            .order_by()
        }
        for optype in registry.all_types():
            for status in OperationStatus.values:
                counts.add_metric([optype.name, status], seen.get((optype.name, status), 0))
        yield counts

        depth = GaugeMetricFamily("ops_queue_depth", "Due pending operations by type", labels=["type"])
        due = dict(
            Operation.objects.filter(status=OperationStatus.PENDING)
            .filter(Q(next_retry_at__isnull=True) | Q(next_retry_at__lte=Now()))
            .values_list("operation_type")
            .annotate(n=Count("id"))
            .order_by()
        )
        for optype in registry.all_types():
            if not optype.rollup:
                depth.add_metric([optype.name], due.get(optype.name, 0))
        yield depth

        finished = Operation.objects.filter(status=OperationStatus.COMPLETED)
        yield _histogram("ops_run_seconds", "Run time of completed operations", finished, "started_at", "completed_at")
        started = Operation.objects.exclude(operation_type__in=[t.name for t in registry.all_types() if t.rollup])
        yield _histogram("ops_queue_wait_seconds", "Wait from submission to start", started, "created_at", "started_at")
