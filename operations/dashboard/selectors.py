"""What the live dashboard shows, read in a handful of index-backed queries.

Each query touches only the rows it is about, through a partial index, so the
page costs the same with a million finished operations as with none:
pending rows (`ops_pending_queue`), processing rows (`ops_processing_heartbeat`),
and operations finished in a bounded recent window (`ops_terminal_completed`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from django.db.models import Count, Min, Q
from django.utils import timezone

from operations import registry
from operations.models import Operation, OperationStatus
from operations.worker.nodes import live_nodes

FAILED_WINDOW = timedelta(hours=1)
# Latest failures are looked for in this window only, so the lookup is a
# bounded index range even when nothing failed for a long time.
FAILURES_LOOKBACK = timedelta(hours=24)
RUNNING_SHOWN = 50
FAILURES_SHOWN = 10


@dataclass
class TypeRow:
    name: str
    due: int = 0
    parked: int = 0
    processing: int = 0
    failed_last_hour: int = 0
    oldest_pending: datetime | None = None

    @property
    def idle(self) -> bool:
        return not (self.due or self.parked or self.processing or self.failed_last_hour)


@dataclass
class Pool:
    """One Celery worker of a node's slot plan: a reserved type's, the shared pool, or the system worker."""

    worker: str
    kind: str  # "reserved", "shared" or "system"
    label: str
    slots: int
    used: int

    @property
    def percent(self) -> int:
        return round(100 * min(self.used, self.slots) / self.slots) if self.slots else 0


@dataclass
class Node:
    hostname: str
    pools: list[Pool] = field(default_factory=list)

    @property
    def reserved_slots(self) -> int:
        return sum(p.slots for p in self.pools if p.kind == "reserved")

    @property
    def shared_slots(self) -> int:
        return sum(p.slots for p in self.pools if p.kind == "shared")

    @property
    def used_slots(self) -> int:
        return sum(p.used for p in self.pools if p.kind != "system")


@dataclass
class Snapshot:
    now: datetime
    types: list[TypeRow]
    nodes: list[Node]
    running: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    oldest_pending: datetime | None

    @property
    def totals(self) -> TypeRow:
        total = TypeRow("all types")
        for row in self.types:
            total.due += row.due
            total.parked += row.parked
            total.processing += row.processing
            total.failed_last_hour += row.failed_last_hour
        total.oldest_pending = self.oldest_pending
        return total


def type_rows(now: datetime) -> list[TypeRow]:
    """Per registered type (plus any unknown type that still has rows):
    pending due and parked, processing, failed in the last hour, oldest pending."""
    rows = {t.name: TypeRow(t.name) for t in registry.all_types()}

    def row(name: str) -> TypeRow:
        return rows.setdefault(name, TypeRow(name))

    due = Q(next_retry_at__isnull=True) | Q(next_retry_at__lte=now)
    for item in (
        Operation.objects.filter(status=OperationStatus.PENDING)
        .values("operation_type")
        .annotate(due=Count("pk", filter=due), parked=Count("pk", filter=~due), oldest=Min("created_at"))
        .order_by()
    ):
        target = row(item["operation_type"])
        target.due, target.parked, target.oldest_pending = item["due"], item["parked"], item["oldest"]
    for busy in (
        Operation.objects.filter(status=OperationStatus.PROCESSING)
        .values("operation_type")
        .annotate(n=Count("pk"))
        .order_by()
    ):
        row(busy["operation_type"]).processing = busy["n"]
    # The terminal-rows index is on completed_at: the range comes first, then
    # the status filter, so only the last hour's finished rows are read.
    for failed in (
        Operation.objects.filter(
            status__in=[OperationStatus.COMPLETED, OperationStatus.FAILED, OperationStatus.CANCELLED],
            completed_at__gte=now - FAILED_WINDOW,
        )
        .filter(status=OperationStatus.FAILED)
        .values("operation_type")
        .annotate(n=Count("pk"))
        .order_by()
    ):
        row(failed["operation_type"]).failed_last_hour = failed["n"]
    return sorted(rows.values(), key=lambda r: (r.idle, r.name))


def _pool(worker: str, concurrency: int, used: int) -> Pool:
    prefix = worker.split("@", 1)[0]
    if prefix == "shared":
        return Pool(worker, "shared", "shared pool", concurrency, used)
    if prefix == "system":
        return Pool(worker, "system", "system (sweeper)", concurrency, used)
    return Pool(worker, "reserved", f"reserved: {prefix}", concurrency, used)


def nodes() -> list[Node]:
    """Live worker processes grouped by host: each pool's slots and how many are busy.

    A worker's name is `<pool>@<node>` (runworkers names them so), the pool
    being a reserved type, "shared" or "system"."""
    by_host: dict[str, Node] = {}
    for item in live_nodes():
        host = item["name"].split("@", 1)[1] if "@" in item["name"] else item["hostname"]
        by_host.setdefault(host, Node(host)).pools.append(_pool(item["name"], item["concurrency"], item["busy"]))
    for node in by_host.values():
        order = {"reserved": 0, "shared": 1, "system": 2}
        node.pools.sort(key=lambda p: (order[p.kind], p.label))
    return sorted(by_host.values(), key=lambda n: n.hostname)


def running(now: datetime) -> list[dict[str, Any]]:
    # Plain dicts for the template (the stubs type .values() rows as TypedDicts).
    rows = cast(
        list[dict[str, Any]],
        list(
            Operation.objects.filter(status=OperationStatus.PROCESSING)
            .order_by("started_at")
            .values(
                "id",
                "bank_id",
                "operation_type",
                "worker",
                "started_at",
                "progress",
                "cancel_requested_at",
                "retry_count",
            )[:RUNNING_SHOWN]
        ),
    )
    for item in rows:
        started = item["started_at"] or now
        item["run_seconds"] = (now - started).total_seconds()
    return rows


def failures(now: datetime) -> list[dict[str, Any]]:
    found = cast(
        list[dict[str, Any]],
        list(
            Operation.objects.filter(
                status__in=[OperationStatus.COMPLETED, OperationStatus.FAILED, OperationStatus.CANCELLED],
                completed_at__gte=now - FAILURES_LOOKBACK,
            )
            .filter(status=OperationStatus.FAILED)
            .order_by("-completed_at")
            .values("id", "bank_id", "operation_type", "completed_at", "error_message", "retry_count")[:FAILURES_SHOWN]
        ),
    )
    return found


def snapshot() -> Snapshot:
    now = timezone.now()
    types = type_rows(now)
    oldest = min((t.oldest_pending for t in types if t.oldest_pending), default=None)
    return Snapshot(
        now=now,
        types=types,
        nodes=nodes(),
        running=running(now),
        failures=failures(now),
        oldest_pending=oldest,
    )
