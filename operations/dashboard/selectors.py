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

from django.db.models import Count, Min, Q, QuerySet
from django.db.models.functions import Substr
from django.utils import timezone

from operations import lifecycle, metrics, registry
from operations.models import (
    ConsoleAction,
    FinishedPerMinute,
    MetricsWatermark,
    Operation,
    OperationStatus,
    PausedType,
)
from operations.worker.nodes import live_nodes

FAILED_WINDOW = timedelta(hours=1)
# Latest failures are looked for in this window only, so the lookup is a
# bounded index range even when nothing failed for a long time.
FAILURES_LOOKBACK = timedelta(hours=24)
RUNNING_SHOWN = 50
FAILURES_SHOWN = 10
BANKS_SHOWN = 10
ACTIONS_SHOWN = 5
# Failures are grouped over the last day's most recent ones (a bounded range).
GROUPED_FAILURES_READ = 2000
GROUPS_SHOWN = 8
# A group is named by its message's first line, up to this long: the link to
# its operations filters on that prefix.
GROUP_PREFIX = 100
# How far the charts may lag behind (plus metrics.SETTLE) before a refresh
# brings the rollup up to date itself.
CHART_LAG = timedelta(seconds=30)


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
class Bar:
    label: str
    completed: int
    failed: int
    peak: int

    @property
    def completed_percent(self) -> int:
        return round(100 * self.completed / self.peak) if self.peak else 0

    @property
    def failed_percent(self) -> int:
        return round(100 * self.failed / self.peak) if self.peak else 0


@dataclass
class Chart:
    """Completed and failed operations per step over a span, from the
    per-minute rollup (never the operations table)."""

    title: str
    bars: list[Bar]

    @property
    def completed(self) -> int:
        return sum(b.completed for b in self.bars)

    @property
    def failed(self) -> int:
        return sum(b.failed for b in self.bars)


@dataclass
class FailureGroup:
    message: str
    count: int
    latest: datetime | None


@dataclass
class Snapshot:
    now: datetime
    types: list[TypeRow]
    nodes: list[Node]
    running: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    oldest_pending: datetime | None
    charts: list[Chart] = field(default_factory=list)
    pending_banks: list[tuple[str, int]] = field(default_factory=list)
    failure_groups: list[FailureGroup] = field(default_factory=list)
    paused: dict[str, PausedType] = field(default_factory=dict)
    actions: list[ConsoleAction] = field(default_factory=list)

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


def _recent_failures(now: datetime) -> QuerySet[Operation]:
    """The last FAILURES_LOOKBACK's failures, newest first: a bounded range of
    the finished rows' index (`ops_terminal_completed`), then the status."""
    return (
        Operation.objects.filter(
            status__in=[OperationStatus.COMPLETED, OperationStatus.FAILED, OperationStatus.CANCELLED],
            completed_at__gte=now - FAILURES_LOOKBACK,
        )
        .filter(status=OperationStatus.FAILED)
        .order_by("-completed_at")
    )


def failures(now: datetime) -> list[dict[str, Any]]:
    found = cast(
        list[dict[str, Any]],
        list(
            _recent_failures(now).values(
                "id", "bank_id", "operation_type", "completed_at", "error_message", "retry_count"
            )[:FAILURES_SHOWN]
        ),
    )
    return found


def charts(now: datetime) -> list[Chart]:
    """The last hour by minute and the last day by hour. The rollup is brought
    up to date first when it lags more than CHART_LAG (a read of its
    watermark otherwise: a refresh does not take SQLite's write lock every
    few seconds); a day is then at most 1,440 minutes per type and status."""
    mark = MetricsWatermark.objects.filter(pk=1).values_list("counted_until", flat=True).first()
    if mark is None or mark < now - CHART_LAG:
        metrics.roll_up_finished()
    minute = now.replace(second=0, microsecond=0)
    hour = minute.replace(minute=0)
    return [
        _chart("Last hour, per minute", minute, 60, timedelta(minutes=1), "%H:%M"),
        _chart("Last day, per hour", hour, 24, timedelta(hours=1), "%H:00"),
    ]


def _chart(title: str, last: datetime, count: int, step: timedelta, label: str) -> Chart:
    """`count` bars of `step` each, the last one starting at `last`."""
    starts = [last - step * n for n in range(count - 1, -1, -1)]
    rows = FinishedPerMinute.objects.filter(minute__gte=starts[0])
    done = dict.fromkeys(starts, 0)
    failed = dict.fromkeys(starts, 0)
    first = starts[0]
    for at, status, n in rows.values_list("minute", "status", "count"):
        slot = first + ((at - first) // step) * step
        if slot in done and status == OperationStatus.COMPLETED:
            done[slot] += n
        elif slot in failed and status == OperationStatus.FAILED:
            failed[slot] += n
    peak = max((done[s] + failed[s] for s in starts), default=0)
    local = timezone.get_current_timezone()
    return Chart(title, [Bar(s.astimezone(local).strftime(label), done[s], failed[s], peak) for s in starts])


def pending_banks() -> list[tuple[str, int]]:
    """The banks with the most pending operations (the pending rows' index)."""
    return list(
        Operation.objects.filter(status=OperationStatus.PENDING)
        .values_list("bank_id")
        .annotate(n=Count("pk"))
        .order_by("-n", "bank_id")[:BANKS_SHOWN]
    )


def failure_groups(now: datetime) -> list[FailureGroup]:
    """The last day's failures grouped by their message's first line (the
    most recent GROUPED_FAILURES_READ of them, a range of the finished rows'
    index), most frequent first."""
    groups: dict[str, FailureGroup] = {}
    heads = _recent_failures(now).annotate(head=Substr("error_message", 1, GROUP_PREFIX))
    for message, at in heads.values_list("head", "completed_at")[:GROUPED_FAILURES_READ]:
        key = error_prefix(message or "")
        group = groups.setdefault(key, FailureGroup(key, 0, at))
        group.count += 1
    return sorted(groups.values(), key=lambda g: (-g.count, g.message))[:GROUPS_SHOWN]


def error_prefix(message: str) -> str:
    """What names a failure's group: the first line of its message, clipped
    (the admin's `error` filter finds the group's operations by it)."""
    return message.split("\n", 1)[0][:GROUP_PREFIX]


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
        charts=charts(now),
        pending_banks=pending_banks(),
        failure_groups=failure_groups(now),
        paused=lifecycle.paused_types(),
        actions=list(ConsoleAction.objects.all()[:ACTIONS_SHOWN]),
    )
