"""The scaled deployment's figures: the platform on PostgreSQL and Redis, its
own `runworkers` nodes and gunicorn, against bare Celery on the same Redis.

Imported by the driver after Django is set up on the benchmark's database
(`bench.__main__`). Each function measures one figure of issue 11 and returns
it as `report.Figure`s; times of the platform come from its own rows
(`created_at`, `started_at`, `completed_at`), times of bare Celery from marks
its task leaves in Redis, so neither side's figure depends on how often the
driver polls.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import redis
from django.db import connection
from django.db.models import Max
from django.test import override_settings
from django.utils import timezone

from banks.memory import RetainItem
from banks.submissions import retain_async
from bench import bare
from bench.load import free_port, post_concurrently
from bench.probes import LoadProbe
from bench.procs import Processes, cpu_by, wait_until
from bench.report import Figure, median, percentile, ratio_text
from core import transient
from operations import lifecycle
from operations.models import Operation, OperationStatus, WorkerNode
from tenancy.models import Bank

PROJECT_DIR = Path(__file__).resolve().parent.parent
NOOP_BANK = "bench-noop"
LIVE = (OperationStatus.PENDING, OperationStatus.PROCESSING)
TERMINAL = (OperationStatus.COMPLETED, OperationStatus.FAILED, OperationStatus.CANCELLED)
Say = Callable[[str], None]


@dataclass(frozen=True)
class Options:
    """How much to measure (`--quick` shrinks every count)."""

    noop_operations: int = 5_000
    runs: int = 3
    latency_rounds: int = 20
    history_rows: int = 1_000_000
    history_banks: int = 1_000
    page_requests: int = 200
    scrapes: int = 10
    retains: int = 200
    retain_items: int = 5
    in_flight: int = 8
    backlog: int = 10_000
    fairness_rounds: int = 5
    workload_budget_seconds: float = 200.0


QUICK = Options(
    noop_operations=500,
    runs=1,
    latency_rounds=5,
    history_rows=50_000,
    history_banks=50,
    page_requests=40,
    scrapes=3,
    retains=40,
    backlog=2_000,
    fairness_rounds=4,
)


def _ms(seconds: float) -> float:
    return seconds * 1000


def _since(start: datetime, end: datetime | None) -> float:
    assert end is not None, "a finished operation without its timestamp"
    return (end - start).total_seconds()


# --- processes ---------------------------------------------------------------------


def slot_plan(env: dict[str, str]) -> dict[str, Any]:
    """The plan `runworkers` will start with this environment."""
    printed = subprocess.run(
        [sys.executable, str(PROJECT_DIR / "manage.py"), "runworkers", "--print-plan"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(printed.stdout))


def start_node(
    procs: Processes, env: dict[str, str], name: str
) -> tuple[list[subprocess.Popen[bytes]], dict[str, Any]]:
    """`runworkers` and beat, as a scaled node runs them; returns once every
    worker of the plan has reported itself ready (its WorkerNode row)."""
    plan = slot_plan(env)
    expected = {f"{w['name']}@{env['OPS_NODE_NAME']}" for w in [*plan["workers"], plan["system_worker"]]}
    launched = timezone.now()
    manage = [sys.executable, str(PROJECT_DIR / "manage.py")]
    workers = procs.start(f"{name}-workers", [*manage, "runworkers", "--loglevel", "WARNING"], env)
    beat = procs.start(
        f"{name}-beat",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "opsproject",
            "beat",
            "--loglevel",
            "WARNING",
            "--schedule",
            str(procs.log_dir / f"{name}-beat-schedule"),
        ],
        env,
    )

    def ready() -> bool:
        if workers.poll() is not None:
            raise RuntimeError(f"runworkers exited early:\n{procs.log_of(name + '-workers')[-3000:]}")
        seen = WorkerNode.objects.filter(name__in=expected, started_at__gte=launched).count()
        return seen == len(expected)

    wait_until(ready, timeout=120, what=f"the {name} node's workers", interval=0.2)
    return [beat, workers], plan


def start_bare_worker(procs: Processes, env: dict[str, str], concurrency: int) -> subprocess.Popen[bytes]:
    """Bare Celery with the platform's worker options: prefork, late ack, prefetch 1."""
    worker = procs.start(
        "bare-worker",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.bare",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            str(concurrency),
            "--prefetch-multiplier",
            "1",
            "--hostname",
            "bare@bench",
            "--without-mingle",
            "--without-gossip",
            "--loglevel",
            "WARNING",
        ],
        env,
    )
    marks = bare.marks()
    marks.delete(bare.DONE, bare.STAMPS)
    bare.noop.apply_async()  # the worker is ready once it has run one

    def ready() -> bool:
        if worker.poll() is not None:
            raise RuntimeError(f"the bare Celery worker exited:\n{procs.log_of('bare-worker')[-3000:]}")
        return int(marks.get(bare.DONE) or 0) >= 1

    wait_until(ready, timeout=120, what="the bare Celery worker")
    return worker


def start_web(procs: Processes, env: dict[str, str], workers: int) -> str:
    """gunicorn as `runplatform` runs it (sync workers); returns its base URL."""
    port = free_port()
    web = procs.start(
        "web",
        [sys.executable, "-m", "gunicorn", "opsproject.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", str(workers)],
        env,
        cwd=PROJECT_DIR,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if web.poll() is not None:
            raise RuntimeError(f"gunicorn exited:\n{procs.log_of('web')[-3000:]}")
        try:
            return httpx.get(f"{url}/health/live", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, timeout=60, what="gunicorn", interval=0.2)
    return url


# --- 1 and 2: no-op throughput and submit rate ------------------------------------


def _delete_operations(where: str, params: list[Any]) -> None:
    """Delete a run's operations, again if a row was being filed under its
    week meanwhile (PostgreSQL's serialization failure for a row moved to
    another partition: `operations.partitions`)."""

    def delete() -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM operations_operation WHERE {where}", params)

    transient.retrying(delete, what="the benchmark's clean-up")


def _clear_noops() -> None:
    Bank.objects.get_or_create(bank_id=NOOP_BANK)
    _delete_operations("bank_id = %s", [NOOP_BANK])
    maintain()


# The tables a run churns through, queue-like: what autovacuum keeps lean.
CHURNED = (
    "operations_operation",
    "banks_memoryunit",
    "banks_memorylink",
    "banks_unitentity",
    "banks_pendingbacklink",
    "banks_entitycooccurrencedelta",
    "banks_document",
    "banks_entity",
)


def maintain() -> None:
    """VACUUM ANALYZE the tables a run churns through, before each run. A
    production PostgreSQL does this with autovacuum; this machine's has it
    off, so without it every run would pay for the dead rows of the runs
    before it (a claim read 12,000 dead index entries of finished runs) and
    plan from statistics of an empty table."""
    with connection.cursor() as cursor:
        for table in CHURNED:
            cursor.execute(f"VACUUM ANALYZE {table}")


def cpu_groups(workers_pid: int) -> dict[str, Callable[[list[int], str], bool]]:
    """The processes a no-op run spends CPU in: a side's worker processes
    (descendants of its runworkers or celery process), PostgreSQL's and
    Redis's server processes, and this driver, which submits."""
    driver = os.getpid()
    return {
        "workers": lambda lineage, name: workers_pid in lineage,
        "postgresql": lambda lineage, name: name == "postgres",
        "redis": lambda lineage, name: name.startswith("redis-server"),
        "submitting process": lambda lineage, name: lineage[0] == driver,
    }


def _database_counters() -> dict[str, int]:
    """This database's transactions and rows written so far (PostgreSQL's
    statistics; only the benchmark's processes use its database). This
    process's own pending statistics are flushed first (PostgreSQL 15+):
    reported late, the deletes of an earlier figure's setup once counted
    2,795 fetched rows per no-op inside the measured window."""
    with connection.cursor() as cursor:
        if connection.pg_version >= 150000:
            cursor.execute("SELECT pg_stat_force_next_flush()")  # at this statement's commit
            cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT xact_commit + xact_rollback, tup_inserted + tup_updated + tup_deleted, tup_fetched"
            " FROM pg_stat_database WHERE datname = current_database()"
        )
        transactions, written, fetched = cursor.fetchone()
    return {"transactions": int(transactions), "rows written": int(written), "rows fetched": int(fetched)}


def _cpu_per_operation(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, float]:
    return {label: _ms(after[label] - before[label]) / count for label in before}


def platform_noop_run(count: int, workers_pid: int) -> dict[str, Any]:
    """Submit `count` no-ops through the service, one transaction each (as
    separate callers would), and time until the last one completed."""
    _clear_noops()
    groups = cpu_groups(workers_pid)
    cpu = cpu_by(groups)
    database = _database_counters()
    started = timezone.now()
    clock = time.perf_counter()
    for _ in range(count):
        lifecycle.operation_submit(bank_id=NOOP_BANK, operation_type="bench_noop")
    submit_seconds = time.perf_counter() - clock
    mine = Operation.objects.filter(bank_id=NOOP_BANK)
    wait_until(lambda: not mine.filter(status__in=LIVE).exists(), timeout=1800, what="the no-op backlog", interval=0.1)
    completed = mine.filter(status=OperationStatus.COMPLETED).count()
    if completed != count:
        raise RuntimeError(f"{count - completed} of {count} no-op operations did not complete")
    finished = mine.aggregate(last=Max("completed_at"))["last"]
    cpu_ms = _cpu_per_operation(cpu, cpu_by(groups), count)
    time.sleep(1)  # PostgreSQL publishes a backend's statistics within a second
    per_operation = {k: (v - database[k]) / count for k, v in _database_counters().items()}
    return {
        "submit_per_second": count / submit_seconds,
        "per_second": count / _since(started, finished),
        "cpu_ms": cpu_ms,
        "database": per_operation,
    }


def bare_noop_run(count: int, workers_pid: int) -> dict[str, Any]:
    marks = bare.marks()
    marks.set(bare.DONE, 0)
    groups = cpu_groups(workers_pid)
    cpu = cpu_by(groups)
    clock = time.perf_counter()
    for _ in range(count):
        bare.noop.apply_async()
    submit_seconds = time.perf_counter() - clock
    wait_until(
        lambda: int(marks.get(bare.DONE) or 0) >= count, timeout=1800, what="bare Celery's backlog", interval=0.01
    )
    seconds = time.perf_counter() - clock
    return {
        "submit_per_second": count / submit_seconds,
        "per_second": count / seconds,
        "cpu_ms": _cpu_per_operation(cpu, cpu_by(groups), count),
    }


def cpu_note(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Where the time per no-op goes: CPU milliseconds per operation by
    process kind, medians over the runs, both sides."""
    figures: dict[str, dict[str, float]] = {
        side: {label: median([r["cpu_ms"][label] for r in runs]) for label in runs[0]["cpu_ms"]}
        for side, runs in (("platform", ours), ("bare_celery", theirs))
    }

    def line(side: str) -> str:
        per = figures[side]
        return ", ".join(f"{label} {value:.2f}" for label, value in per.items()) + f" (total {sum(per.values()):.2f})"

    database = {label: median([r["database"][label] for r in ours]) for label in ours[0]["database"]}
    figures["platform_database"] = database
    note = (
        f"CPU per no-op operation (ms, median of {len(ours)} run(s)): platform: {line('platform')}; "
        f"bare Celery: {line('bare_celery')}. The platform's PostgreSQL per no-op: "
        + ", ".join(f"{value:.1f} {label}" for label, value in database.items())
        + "."
    )
    return note, figures


def noop_throughput(options: Options, slots: int, node_pid: int, bare_pid: int, say: Say) -> list[Figure]:
    """Figures 1 and 2, the two sides interleaved run by run so a neighbour's
    load on the shared machine falls on both alike."""
    platform_noop_run(50, node_pid)  # warm: connections, imports, the first messages
    bare_noop_run(50, bare_pid)
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    for run in range(options.runs):
        ours.append(platform_noop_run(options.noop_operations, node_pid))
        theirs.append(bare_noop_run(options.noop_operations, bare_pid))
        say(
            f"  run {run + 1}/{options.runs}: platform {ours[-1]['per_second']:,.0f}/s "
            f"(submit {ours[-1]['submit_per_second']:,.0f}/s), bare Celery {theirs[-1]['per_second']:,.0f}/s "
            f"(submit {theirs[-1]['submit_per_second']:,.0f}/s)"
        )
    _clear_noops()
    note, cpu = cpu_note(ours, theirs)
    say(f"  {note}")
    figures = []
    for key, label, reference, target in (
        (
            "per_second",
            f"{options.noop_operations:,} no-op operations, {slots} slots, submit → all completed",
            f"bare Celery on Redis, prefork c={slots}, acks_late, prefetch 1",
            "≥ 0.5x (aim 0.8x)",
        ),
        ("submit_per_second", "submit through the service, one process", "`apply_async`, one process", "≥ 0.5x"),
    ):
        a = median([r[key] for r in ours])
        b = median([r[key] for r in theirs])
        figures.append(
            Figure(
                key=f"noop_{key}",
                label=label,
                platform=f"{a:,.0f}/s",
                reference=f"{reference}: {b:,.0f}/s",
                ratio=ratio_text(a, b),
                target=target,
                holds=a / b >= 0.5,
                values={
                    "platform": a,
                    "reference": b,
                    "runs_platform": [r[key] for r in ours],
                    "runs_reference": [r[key] for r in theirs],
                },
            )
        )
    figures[0].values["cpu_ms_per_operation"] = cpu
    figures[0].values["note"] = note
    return figures


# --- 3: one no-op on idle workers ----------------------------------------------------


def idle_latency(options: Options, say: Say) -> Figure:
    to_start: list[float] = []
    to_done: list[float] = []
    for _ in range(options.latency_rounds + 1):
        time.sleep(0.2)  # idle workers: the previous run is over, its publisher thread too
        pk = lifecycle.operation_submit(bank_id=NOOP_BANK, operation_type="bench_noop").operation.pk
        row = Operation.objects.filter(pk=pk, status=OperationStatus.COMPLETED)
        wait_until(row.exists, timeout=60, what="one no-op", interval=0.005)
        created, started, completed = row.values_list("created_at", "started_at", "completed_at").get()
        to_start.append(_since(created, started))
        to_done.append(_since(created, completed))
    marks = bare.marks()
    bare_done: list[float] = []
    for _ in range(options.latency_rounds + 1):
        time.sleep(0.2)
        marks.delete(bare.STAMPS)
        sent = time.time()
        bare.noop.apply_async(kwargs={"stamp": True})
        wait_until(lambda: marks.llen(bare.STAMPS) >= 1, timeout=60, what="one bare task", interval=0.005)
        bare_done.append(float(marks.lindex(bare.STAMPS, 0) or 0) - sent)
    _clear_noops()
    # The first round of each side warms it up; it is left out.
    start_ms, done_ms, bare_ms = (_ms(median(s[1:])) for s in (to_start, to_done, bare_done))
    say(f"  created → started {start_ms:.1f} ms, → completed {done_ms:.1f} ms; bare Celery {bare_ms:.1f} ms")
    return Figure(
        key="idle_latency",
        label="one no-op on idle workers, created → started / → completed, p50",
        platform=f"{start_ms:.1f} / {done_ms:.1f} ms",
        reference=f"bare Celery publish → done: {bare_ms:.1f} ms",
        ratio=ratio_text(done_ms, bare_ms),
        target="→ completed ≤ 10 ms",
        holds=done_ms <= 10,
        values={
            "to_started_ms": start_ms,
            "to_completed_ms": done_ms,
            "reference_ms": bare_ms,
            "rounds": options.latency_rounds,
        },
    )


# --- 5: pages over a large table -------------------------------------------------------

_HISTORY_BANKS = """
INSERT INTO banks_bank (bank_id, name, mission, background, disposition, enable_observations,
                        enable_auto_consolidation, config, created_at, updated_at)
SELECT %(prefix)s || lpad(n::text, 4, '0'), '', '', '', '{}'::jsonb, false, false, '{}'::jsonb, now(), now()
FROM generate_series(0, %(banks)s - 1) AS n
ON CONFLICT (bank_id) DO NOTHING
"""

# Finished work only: a pending row would be picked up by the workers. Spread
# over 20 days, so retention (30 days) leaves it for the next runs.
_HISTORY_OPERATIONS = """
INSERT INTO operations_operation (
    id, bank_id, operation_type, status, task_payload, result_metadata, error_history,
    items_count, retry_count, max_retries, created_at, updated_at, started_at, completed_at,
    error_message, tag, finished_on
)
SELECT
    gen_random_uuid(), %(prefix)s || lpad((n %% %(banks)s)::text, 4, '0'),
    (ARRAY['retain','retain','retain','file_convert_retain','consolidation','graph_maintenance'])[1 + n %% 6],
    s.status, '{}'::jsonb, '{"units": 3}'::jsonb, '[]'::jsonb, 5, 0, 3,
    s.created, s.created + interval '2 seconds', s.created + interval '40 milliseconds',
    s.created + interval '2 seconds',
    CASE WHEN s.status = 'failed' THEN 'synthetic failure' END,
    CASE WHEN n %% 10 = 0 THEN 'nightly' END,
    ((s.created + interval '2 seconds') AT TIME ZONE 'UTC')::date
FROM generate_series(1, %(rows)s) AS n,
LATERAL (SELECT
    CASE WHEN n %% 50 = 2 THEN 'failed' WHEN n %% 50 = 3 THEN 'cancelled' ELSE 'completed' END AS status,
    now() - interval '%(days)s days' * (1 - n::float / %(rows)s) - interval '1 minute' AS created
) AS s
"""


# The operations table's estimated rows: the sum over its partitions (PostgreSQL).
TABLE_ROWS = """SELECT COALESCE(sum(c.reltuples), 0)::bigint FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'operations_operation'::regclass AND c.reltuples > 0"""


def history_prefix(rows: int) -> str:
    """Bank ids of a history of `rows` operations: one per size, so the quick
    run's small table and the full run's million are each loaded once."""
    return f"bench-h{rows}-"


def ensure_history(rows: int, banks: int, say: Say) -> None:
    """`rows` finished operations spread over `banks` banks, loaded with one
    INSERT … SELECT the first time and reused while the count is right."""
    prefix = history_prefix(rows)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM operations_operation WHERE bank_id LIKE %s", [prefix + "%"])
        (present,) = cursor.fetchone()
        if present == rows:
            say(f"  {rows:,} operations in {banks:,} banks already loaded")
            return
        say(f"  loading {rows:,} operations into {banks:,} banks (once; reused by later runs)")
        clock = time.perf_counter()
        cursor.execute("DELETE FROM operations_operation WHERE bank_id LIKE %s", [prefix + "%"])
        cursor.execute(_HISTORY_BANKS, {"prefix": prefix, "banks": banks})
        cursor.execute(_HISTORY_OPERATIONS, {"prefix": prefix, "banks": banks, "rows": rows, "days": 20})
    # Outside a transaction: VACUUM sets the visibility map, as autovacuum would in time.
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE operations_operation")
    say(f"  loaded in {time.perf_counter() - clock:.0f}s")


def _timed_gets(client: httpx.Client, urls: Iterator[str], count: int) -> list[float]:
    times = []
    for _ in range(count):
        url = next(urls)
        clock = time.perf_counter()
        response = client.get(url)
        times.append(time.perf_counter() - clock)
        if response.status_code != 200:
            raise RuntimeError(f"GET {url}: HTTP {response.status_code}: {response.text[:300]}")
    return times


def pages(options: Options, base_url: str, key: str, say: Say) -> list[Figure]:
    rows, banks = options.history_rows, options.history_banks
    ensure_history(rows, banks, say)
    prefix = history_prefix(rows)
    rng = random.Random(11)

    def bank_pages() -> Iterator[str]:
        while True:
            yield f"/v1/default/banks/{prefix}{rng.randrange(banks):04d}/operations?limit=20"

    def forever(url: str) -> Iterator[str]:
        while True:
            yield url

    scale = f"{rows:,} operations in {banks:,} banks"
    # The cross-bank list and /metrics read the whole table, which may hold
    # more than this history (the other size's, earlier runs'): label them by it.
    with connection.cursor() as cursor:
        cursor.execute(TABLE_ROWS)
        (table_rows,) = cursor.fetchone()
    table = f"{round(table_rows, -3):,} operations in the table"
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        _timed_gets(client, bank_pages(), 20)  # warm both web workers and the buffer cache
        bank = [_ms(t) for t in _timed_gets(client, bank_pages(), options.page_requests)]
        cross = [_ms(t) for t in _timed_gets(client, forever("/v1/default/operations?limit=20"), options.page_requests)]
        _timed_gets(client, forever("/metrics"), 1)
        scrape = [_ms(t) for t in _timed_gets(client, forever("/metrics"), options.scrapes)]
        # The floors a page stands on: the web stack alone, then with the
        # API key checked and one row read.
        live = percentile([_ms(t) for t in _timed_gets(client, forever("/health/live"), options.page_requests)], 50)
        one_bank = f"/v1/default/banks/{prefix}0000"
        bank_get = percentile([_ms(t) for t in _timed_gets(client, forever(one_bank), options.page_requests)], 50)
    b50, b95, c50, c95, m50 = (
        percentile(bank, 50),
        percentile(bank, 95),
        percentile(cross, 50),
        percentile(cross, 95),
        percentile(scrape, 50),
    )
    say(f"  bank page p50 {b50:.1f} p95 {b95:.1f} ms; cross-bank p50 {c50:.1f} p95 {c95:.1f} ms; /metrics {m50:.1f} ms")
    return [
        Figure(
            key="bank_page",
            label=f"bank's first page (20), {scale}",
            platform=f"p50 {b50:.1f}, p95 {b95:.1f} ms",
            target="p50 ≤ 5, p95 ≤ 10 ms",
            holds=b50 <= 5 and b95 <= 10,
            values={
                "p50_ms": b50,
                "p95_ms": b95,
                "requests": len(bank),
                "rows": rows,
                "health_live_p50_ms": live,
                "get_bank_p50_ms": bank_get,
                "note": f"Floors through gunicorn, p50: `/health/live` {live:.1f} ms (no database, no key); "
                f"an authenticated `GET banks/{{id}}` {bank_get:.1f} ms.",
            },
        ),
        Figure(
            key="cross_bank_page",
            label=f"cross-bank `GET operations` first page, {table}",
            platform=f"p50 {c50:.1f}, p95 {c95:.1f} ms",
            target="p95 ≤ 25 ms",
            holds=c95 <= 25,
            values={"p50_ms": c50, "p95_ms": c95, "requests": len(cross), "table_rows": table_rows},
        ),
        Figure(
            key="metrics_scrape",
            label=f"`/metrics` scrape, {table}",
            platform=f"p50 {m50:.1f} ms",
            target="≤ 50 ms",
            holds=m50 <= 50,
            values={"p50_ms": m50, "scrapes": len(scrape), "table_rows": table_rows},
        ),
    ]


# --- 6 and 7: pickup of a single-item async retain, alone and beside a backlog ------

_WORDS = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "John", "Margaret", "Ken")
_PLACES = ("London", "Paris", "Boston", "Zurich", "Kyoto", "Austin", "Oslo", "Lima")


def note_text(rng: random.Random, n: int) -> str:
    """A few sentences naming people and places, so retain extracts entities
    and links as it would from real notes."""
    who, other, where = rng.choice(_WORDS), rng.choice(_WORDS), rng.choice(_PLACES)
    return (
        f"{who} met {other} in {where} to review design note {n}. "
        f"They agreed that {who} writes the first draft by Friday. "
        f"{other} will check the numbers with the team in {rng.choice(_PLACES)}."
    )


def _submit_retain(client: httpx.Client, bank_id: str, items: list[dict[str, Any]]) -> str:
    response = client.post(f"/v1/default/banks/{bank_id}/memories", json={"items": items, "async": True})
    if response.status_code != 200:
        raise RuntimeError(f"retain into {bank_id}: HTTP {response.status_code}: {response.text[:300]}")
    return str(response.json()["operation_id"])


def _child_pickup(parent_id: str) -> float:
    """Seconds from a single-item retain's creation until a worker started it."""
    child = Operation.objects.filter(parent_id=parent_id, started_at__isnull=False)
    wait_until(child.exists, timeout=120, what="a retain to be picked up", interval=0.005)
    created, started = child.values_list("created_at", "started_at").get()
    return _since(created, started)


def _fresh_bank(prefix: str) -> str:
    bank_id = f"{prefix}{uuid.uuid4().hex[:8]}"
    Bank.objects.create(bank_id=bank_id)
    return bank_id


def pickup(options: Options, base_url: str, key: str, say: Say) -> Figure:
    rng = random.Random(6)
    bank_id = _fresh_bank("bench-pickup-")
    samples = []
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        for n in range(options.latency_rounds + 1):
            time.sleep(0.2)
            parent = _submit_retain(client, bank_id, [{"content": note_text(rng, n)}])
            samples.append(_child_pickup(parent))
            done = Operation.objects.filter(pk=parent, status__in=TERMINAL)
            wait_until(done.exists, timeout=120, what="a single retain to finish")
    p50 = _ms(median(samples[1:]))
    say(f"  pickup p50 {p50:.1f} ms")
    return Figure(
        key="retain_pickup",
        label="pickup of a single-item async retain (idle workers)",
        platform=f"p50 {p50:.1f} ms",
        target="p50 ≤ 10 ms",
        holds=p50 <= 10,
        values={"p50_ms": p50, "samples_ms": [_ms(s) for s in samples[1:]]},
    )


def fairness(options: Options, base_url: str, key: str, shared_slots: int, say: Say) -> Figure:
    """Bank A's backlog of single-item retains waits (submitted through the
    service, 100 per request); bank B's single retains, sent one after
    another, are timed from creation to pickup, while A's running operations
    are sampled to see that it keeps the slots B does not use."""
    rng = random.Random(7)
    bank_a, bank_b = _fresh_bank("bench-fair-a-"), _fresh_bank("bench-fair-b-")
    a = Bank.objects.get(pk=bank_a)
    clock = time.perf_counter()
    with override_settings(OPS_RETAIN_BATCH_ITEMS=1):  # one operation per item
        for start in range(0, options.backlog, 100):
            items = [RetainItem(content=note_text(rng, n)) for n in range(start, min(start + 100, options.backlog))]
            retain_async(bank=a, items=items, document_tags=[])
    say(f"  bank A: {options.backlog:,} retains queued in {time.perf_counter() - clock:.1f}s")
    # Retains only: a batch parent is `processing` while its children run, in no slot.
    a_running = Operation.objects.filter(bank_id=bank_a, status=OperationStatus.PROCESSING, operation_type="retain")
    a_waiting = Operation.objects.filter(bank_id=bank_a, status=OperationStatus.PENDING, operation_type="retain")
    busy: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        # Every 50 ms: how many of the shared slots A's operations hold.
        try:
            while not stop.wait(0.05):
                busy.append(a_running.count())
        finally:
            connection.close()

    pickups = []
    try:
        wait_until(lambda: a_running.count() > 0, timeout=60, what="bank A's backlog to start")
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            for n in range(options.fairness_rounds):
                time.sleep(0.5)
                pickups.append(_child_pickup(_submit_retain(client, bank_b, [{"content": note_text(rng, n)}])))
        stop.set()
        sampler.join()
        left = a_waiting.count()
    finally:
        stop.set()
        lifecycle.operations_cancel_pending(bank_id=bank_a)
        wait_until(lambda: not a_running.exists(), timeout=300, what="bank A's running retains to finish")
    p50, p95 = _ms(percentile(pickups, 50)), _ms(percentile(pickups, 95))
    mean_busy = sum(busy) / len(busy) if busy else 0.0
    say(
        f"  bank B pickup p50 {p50:.0f} p95 {p95:.0f} ms; bank A held {mean_busy:.1f} of {shared_slots} "
        f"shared slots on average, {left:,} still queued"
    )
    holds = p95 <= 1000 and mean_busy >= 0.8 * shared_slots
    return Figure(
        key="fairness",
        label=f"bank B's single retain while bank A has {options.backlog:,} queued: pickup; A's slots",
        platform=f"p50 {p50:.0f}, p95 {p95:.0f} ms; A busy {mean_busy:.1f}/{shared_slots}",
        target="p95 ≤ 1 s; A keeps the idle slots",
        holds=holds,
        values={
            "p50_ms": p50,
            "p95_ms": p95,
            "samples_ms": [_ms(s) for s in pickups],
            "a_mean_busy_slots": mean_busy,
            "shared_slots": shared_slots,
            "a_still_queued": left,
        },
    )


# --- 4: Hindsight's workload ------------------------------------------------------------


def hindsight_run(options: Options, base_url: str, key: str, seed: int) -> dict[str, float]:
    """`retains` async retains of `retain_items` items each, `in_flight` at a
    time from as many threads, into a fresh bank; timed to the last response
    (submit) and to the last retain_batch completed."""
    rng = random.Random(seed)
    maintain()
    bank_id = _fresh_bank("bench-hs-")
    bodies = [
        [{"content": note_text(rng, n * 10 + i)} for i in range(options.retain_items)] for n in range(options.retains)
    ]
    started = timezone.now()
    submit_seconds, errors = post_concurrently(
        base_url,
        f"/v1/default/banks/{bank_id}/memories",
        [{"items": items, "async": True} for items in bodies],
        in_flight=options.in_flight,
        headers={"Authorization": f"Bearer {key}"},
    )
    if errors:
        raise RuntimeError(f"{len(errors)} retain submissions failed, e.g. {errors[0]}")
    parents = Operation.objects.filter(bank_id=bank_id, operation_type="retain_batch")
    wait_until(lambda: not parents.filter(status__in=LIVE).exists(), timeout=600, what="the retains", interval=0.1)
    failed = parents.exclude(status=OperationStatus.COMPLETED).count()
    if failed:
        raise RuntimeError(f"{failed} of {options.retains} retains did not complete")
    finished = parents.aggregate(last=Max("completed_at"))["last"]
    seconds = _since(started, finished)
    return {
        "submit_per_second": options.retains / submit_seconds,
        "retains_per_second": options.retains / seconds,
        "items_per_second": options.retains * options.retain_items / seconds,
    }


def hindsight_workload(options: Options, base_url: str, key: str, peer: dict[str, Any], say: Say) -> list[Figure]:
    runs: list[dict[str, float]] = []
    clock = time.perf_counter()
    with LoadProbe() as probe:
        for run in range(options.runs):
            # The whole benchmark must stay under 15 minutes on a busy machine:
            # no further run once this figure has had its share (the median is
            # then of fewer runs, which the JSON records).
            if runs and time.perf_counter() - clock > options.workload_budget_seconds:
                say(
                    f"  stopping after {len(runs)} run(s): the figure's {options.workload_budget_seconds:.0f}s are spent"
                )
                break
            runs.append(hindsight_run(options, base_url, key, seed=run))
            say(
                f"  run {run + 1}/{options.runs}: submit {runs[-1]['submit_per_second']:,.0f} req/s, "
                f"{runs[-1]['items_per_second']:,.0f} items/s"
            )
    load = probe.summary()
    say(
        f"  during the runs: {load['waiting_fraction']:.1%} of busy database sessions waited on a lock "
        f"({load['wait_events'] or 'none'}); {load['sweeps']} sweeps, p50 {load['sweep_p50_ms'] or 0:.0f} ms, "
        f"longest {load['sweep_max_ms'] or 0:.0f} ms (every {load['sweep_interval_ms']:.0f} ms)"
    )
    submit, retains, items = (
        median([r[k] for r in runs]) for k in ("submit_per_second", "retains_per_second", "items_per_second")
    )
    workload = (
        f"{options.retains} async retains × {options.retain_items} items, {options.in_flight} in flight, gunicorn"
    )
    if peer.get("available"):
        submit_ref = f"Hindsight {peer['version']}, own worker, mock LLM: {peer['submit_per_second']:,.0f} req/s"
        items_ref = f"Hindsight: {peer['retains_per_second']:,.1f}/s ({peer['items_per_second']:,.0f} items/s)"
        submit_ratio = ratio_text(submit, peer["submit_per_second"])
        items_ratio = ratio_text(items, peer["items_per_second"])
        submit_holds: bool | None = submit >= peer["submit_per_second"]
        items_holds: bool | None = items >= 2 * peer["items_per_second"]
    else:
        submit_ref = items_ref = f"peer not available: {peer.get('reason', 'not run')}"
        submit_ratio = items_ratio = ""
        submit_holds = items_holds = None
    return [
        Figure(
            key="hindsight_submit",
            label=f"{workload}: submit",
            platform=f"{submit:,.0f} req/s",
            reference=submit_ref,
            ratio=submit_ratio,
            target="≥ Hindsight's",
            holds=submit_holds,
            values={"platform": submit, "runs": [r["submit_per_second"] for r in runs]},
        ),
        Figure(
            key="hindsight_retained",
            label="same: retains completed",
            platform=f"{retains:,.1f}/s ({items:,.0f} items/s)",
            reference=items_ref,
            ratio=items_ratio,
            target="≥ 2x Hindsight's items/s",
            holds=items_holds,
            values={
                "retains_per_second": retains,
                "items_per_second": items,
                "runs": [r["items_per_second"] for r in runs],
            },
        ),
        Figure(
            key="hindsight_lock_waits",
            label="same: busy database sessions waiting on a lock",
            platform=f"{load['waiting_fraction']:.1%} of {load['busy_samples']:,} samples",
            target="near 0 (≤ 2%)",
            holds=load["waiting_fraction"] <= 0.02,
            values=load,
        ),
        Figure(
            key="hindsight_sweep",
            label="same: a sweep while the runs load the database",
            platform=f"p50 {load['sweep_p50_ms'] or 0:.0f} ms, longest {load['sweep_max_ms'] or 0:.0f} ms",
            reference=f"interval {load['sweep_interval_ms']:.0f} ms",
            target="well under the interval (≤ half)",
            holds=load["sweep_max_ms"] is not None and load["sweep_max_ms"] <= load["sweep_interval_ms"] / 2,
            values=load,
        ),
    ]


# --- setup --------------------------------------------------------------------------------


def reset_broker(url: str) -> None:
    """Empty the benchmark's own Redis database (never db 0: the driver refuses it)."""
    redis.Redis.from_url(url).flushdb()


def remove_earlier_runs() -> None:
    """Banks a previous run made for one figure (the loaded history stays)."""
    for prefix in ("bench-pickup-", "bench-fair-", "bench-hs-"):
        # Children first: then the bank's delete finds parents alone.
        _delete_operations("bank_id LIKE %s AND parent_id IS NOT NULL", [prefix + "%"])
        for bank in Bank.objects.filter(bank_id__startswith=prefix):
            bank.delete()
    _clear_noops()


@contextmanager
def node(procs: Processes, env: dict[str, str], name: str) -> Iterator[tuple[dict[str, Any], int]]:
    """A worker node for the duration of the block; its plan and the pid of
    its runworkers process (every worker descends from it) are yielded."""
    started, plan = start_node(procs, env, name)
    try:
        yield plan, started[-1].pid
    finally:
        for process in started:
            procs.stop(process)
