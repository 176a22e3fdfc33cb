"""The scale section of `make bench` (`BENCH_ARGS=--scale`): the reads and
writes that must not slow down as the operations table grows, at 1M, 10M
(and, given the disk and the time, 100M) operations, each figure beside the
first size's. The goal is flat.

The table is the partitioned one of a real deployment: 30 days of finished
operations, one partition per week, in 1,000 banks, beside a live backlog of
pending work. Each size adds rows to the last; every figure is the median of
many in-process requests (Django's test client: no web server between).
Runs in its own database (`ops_scale`), dropped and made again.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

DAYS = 30
BANKS = 1000
PENDING = 5000
REQUESTS = 200


def _ms(seconds: float) -> float:
    return seconds * 1000


def _median_ms(work: Callable[[], Any], count: int = REQUESTS) -> float:
    times = []
    for _ in range(count):
        clock = time.perf_counter()
        work()
        times.append(time.perf_counter() - clock)
    return _ms(statistics.median(times))


def _layout(say: Callable[[str], None]) -> None:
    """Partitions for the last DAYS days (the migration's history partition,
    empty here, makes way), and the coming days', as the prune makes them."""
    from django.conf import settings
    from django.db import connection
    from django.utils import timezone

    from operations import partitions

    today = timezone.now().date()
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {partitions.HISTORY}")
    partitions.ensure_ahead(today - timedelta(days=DAYS), DAYS + 7, settings.OPS_PARTITION_DAYS)
    say(f"  {len(partitions.partitions())} partitions: active, default, and a week's finished operations each")


def _fill(total: int, present: int, say: Callable[[str], None]) -> None:
    from django.conf import settings
    from django.db import DatabaseError, connection
    from django.utils import timezone

    from bench.scaled import _HISTORY_OPERATIONS
    from operations import partitions

    oldest = timezone.now().date() - timedelta(days=DAYS)
    partitions.create_span(oldest, settings.OPS_PARTITION_DAYS)  # the prune dropped it
    clock = time.perf_counter()
    step = 2_000_000
    with connection.cursor() as cursor:
        while present < total:
            rows = min(step, total - present)
            cursor.execute(_HISTORY_OPERATIONS, {"prefix": "scale-", "banks": BANKS, "rows": rows, "days": DAYS})
            present += rows
            say(f"  {present:,} of {total:,} rows ({time.perf_counter() - clock:.0f}s)")
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE operations_operation")
        try:
            # The load's dirty pages written now, not by a checkpoint while
            # the figures are taken (gigabytes of them compete for the cores).
            cursor.execute("CHECKPOINT")
        except DatabaseError as exc:
            say(f"  no CHECKPOINT ({exc}): the figures may share the cores with the load's writes")
    say(f"  loaded and vacuumed in {time.perf_counter() - clock:.0f}s")


def _measure(client: Any, key: str) -> dict[str, float]:
    from django.db import connection
    from django.utils import timezone

    from operations import lifecycle, partitions

    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    counter = iter(range(10**9))

    def get(url: str) -> Callable[[], None]:
        def run() -> None:
            response = client.get(url, **headers)
            assert response.status_code == 200, (url, response.status_code, response.content[:300])

        return run

    def bank_page() -> None:
        get(f"/v1/default/banks/scale-{next(counter) % BANKS:04d}/operations?limit=20")()

    figures = {
        "bank's first page": _median_ms(bank_page),
        "cross-bank first page": _median_ms(get("/v1/default/operations?limit=20")),
        "/tasks?within_hours=24": _median_ms(get("/tasks?within_hours=24"), 50),
    }
    get("/metrics")()  # the scrape that starts (or catches up) the rollup
    figures["/metrics"] = _median_ms(get("/metrics"), 50)

    def cycle(claims: list[float], cycles: list[float]) -> None:
        """One operation submitted, claimed and finished; the claim's time and the whole's."""
        start = time.perf_counter()
        submitted = lifecycle.operation_submit(bank_id="scale-0001", operation_type="bench_noop").operation
        clock = time.perf_counter()
        lease = lifecycle.operation_claim(operation_id=str(submitted.pk), worker="shared@scale", task_id="t")
        claims.append(time.perf_counter() - clock)
        assert lease is not None
        lifecycle.operation_complete(lease=lease, result={})
        cycles.append(time.perf_counter() - start)

    claims: list[float] = []
    cycles: list[float] = []
    for _ in range(REQUESTS):
        cycle(claims, cycles)
    figures["claim"] = _ms(statistics.median(claims))
    figures["submit, claim, finish"] = _ms(statistics.median(cycles))
    # The prune drops the oldest partition (of DAYS days' rows) whole while a
    # worker goes on: its longest operation is what the prune costs the
    # platform (the table's lock is held to detach the partition, not to drop it).
    oldest_partition = min((p for p in partitions.partitions() if p.finished and p.upper), key=lambda p: p.upper)
    oldest = oldest_partition.upper
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = %s", [oldest_partition.name])
        figures["rows pruned"] = max(0, cursor.fetchone()[0])
    during: list[float] = []
    failed: list[BaseException] = []
    pruning = threading.Event()

    def worker() -> None:
        try:
            while pruning.is_set():
                cycle([], during)
        except BaseException as exc:  # reported by the main thread
            failed.append(exc)
        finally:
            connection.close()

    pruning.set()
    claimer = threading.Thread(target=worker, daemon=True)
    claimer.start()
    try:
        time.sleep(0.2)
        clock = time.perf_counter()
        kept = lifecycle.operations_partitions_keep(older_than_days=(timezone.now().date() - oldest).days)
        figures["prune (drop a partition)"] = _ms(time.perf_counter() - clock)
        time.sleep(0.2)
    finally:
        pruning.clear()
        claimer.join()
    if failed:
        raise failed[0]
    assert kept["dropped"], kept
    figures["submit, claim, finish: longest during the prune"] = _ms(max(during))
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM operations_operation_active")
        figures["live rows"] = cursor.fetchone()[0]
    return figures


def run(sizes: list[int], say: Callable[[str], None], *, reuse: bool = False) -> tuple[list[dict[str, Any]], str]:
    """Load and measure each size in turn (`reuse`: starting from the rows an
    earlier run left). Returns the figures and a table."""
    from django.db import connection
    from django.test import Client

    from bench.scaled import TABLE_ROWS
    from operations import lifecycle
    from operations.models import Operation, OperationStatus
    from tenancy.api_keys import api_key_create
    from tenancy.models import Bank

    say(f"scale: {', '.join(f'{s:,}' for s in sizes)} operations over {DAYS} days in {BANKS:,} banks")
    _layout(say)
    Bank.objects.bulk_create([Bank(bank_id=f"scale-{i:04d}") for i in range(BANKS)], ignore_conflicts=True)
    backlog = Operation.objects.filter(status=OperationStatus.PENDING, bank__bank_id__startswith="scale-").count()
    for index in range(backlog, PENDING):  # a live backlog the claim's statements must not walk
        lifecycle.operation_submit(bank_id=f"scale-{index % BANKS:04d}", operation_type="retain", payload={})
    key = api_key_create(admin=True)[1]
    client = Client()
    results = []
    present = 0
    if reuse:
        with connection.cursor() as cursor:
            cursor.execute(TABLE_ROWS)  # the statistics' count: exact enough, and a count(*) takes minutes
            present = cursor.fetchone()[0]
        say(f"  reusing about {present:,} rows of an earlier run")
        smaller = [size for size in sizes if size < present * 0.95]  # the statistics' count is close, not exact
        if smaller:
            raise SystemExit(
                f"--scale-reuse: the table already holds about {present:,} operations, more than "
                f"{', '.join(f'{size:,}' for size in smaller)}; ask for larger sizes, or run without --scale-reuse"
            )
    for size in sizes:
        if present < size:
            say(f"loading to {size:,} operations")
            _fill(size, present, say)
            present = size
        figures = _measure(client, key)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_database_size(current_database())")
            figures["database size (GB)"] = cursor.fetchone()[0] / 1e9
        results.append({"operations": size, **figures})
        say("  " + "; ".join(f"{name} {value:.1f}" for name, value in figures.items()))
        present -= int(figures["rows pruned"])
    return results, table(results)


def table(results: list[dict[str, Any]]) -> str:
    names = [name for name in results[0] if name != "operations"]
    head = "| measure | " + " | ".join(f"{r['operations']:,}" for r in results) + " |"
    lines = [head, "|---" * (len(results) + 1) + "|"]
    for name in names:
        first = results[0][name]
        cells = []
        for index, result in enumerate(results):
            value = result[name]
            counted = name in ("live rows", "rows pruned")
            unit = "" if counted or name == "database size (GB)" else " ms"
            shown = f"{value:,.0f}" if counted else f"{value:.1f}{unit}"
            if index and first and unit:
                shown += f" ({value / first:.2f}x)"
            cells.append(shown)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
