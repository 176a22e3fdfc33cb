"""One bank's crowd: many retains into the same bank at once, through real
workers. They run side by side, never deadlock, never fail, never wait long
on each other's locks, and never starve another bank. Transient database
errors are retried without spending the operation's retries.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import combinations
from pathlib import Path
from typing import Any, Self

import pytest
from django.db import connection, connections

from banks import memory
from banks.extraction import get_extractor
from banks.memory import SEMANTIC_CAP, TEMPORAL_CAP
from banks.models import (
    Document,
    EntityCooccurrence,
    EntityCooccurrenceDelta,
    MemoryLink,
    MemoryUnit,
    PendingBackLink,
    UnitEntity,
)
from operations import lifecycle
from operations.models import Operation
from tenancy.models import Bank
from tests.conftest import EMBEDDED, FAST_RECOVERY, needs_scaled, race, wait_for

pytestmark = [pytest.mark.workers]

FAST = {"OPS_SWEEP_INTERVAL_SECONDS": "0.5", "OPS_LEASE_SECONDS": "10", "OPS_HEARTBEAT_SECONDS": "1"}
TERMINAL = {"completed", "failed", "cancelled"}


# --- what the crowd writes ----------------------------------------------------------------


def item(request: int, doc: str, *, version: int = 0) -> dict[str, Any]:
    """Three facts, every one naming the same crowd of entities (their
    co-occurrence rows are what every retain of the bank updates)."""
    return {
        "content": (
            f"Ada Lovelace met Charles Babbage about {doc} in version {version}. "
            f"The Analytical Engine computed Bernoulli numbers for Request{request}. "
            f"Mary Somerville introduced Ada Lovelace to Charles Babbage near London."
        ),
        "document_id": doc,
    }


def facts(content: str) -> int:
    return len(get_extractor().extract_facts(content))


def finished(ids: list[Any], timeout: float) -> list[Operation]:
    def done() -> list[Operation] | None:
        rows = list(Operation.objects.filter(pk__in=ids))
        return rows if all(r.status in TERMINAL for r in rows) else None

    return wait_for(done, timeout=timeout, interval=0.5, message=f"{len(ids)} operations to finish")


def all_settled(bank_id: str, timeout: float) -> list[Operation]:
    """Every operation of the bank terminal (follow-ups included), and no new
    one appearing for a moment."""

    def settled() -> list[Operation] | None:
        rows = list(Operation.objects.filter(bank_id=bank_id))
        return rows if rows and all(r.status in TERMINAL for r in rows) else None

    wait_for(settled, timeout=timeout, interval=0.5, message=f"every operation of {bank_id} to finish")
    time.sleep(1.5)
    return wait_for(settled, timeout=timeout, interval=0.5, message=f"every operation of {bank_id} to finish")


def exact_cooccurrences(bank: str) -> dict[tuple[int, int], int]:
    per_unit: dict[Any, set[int]] = {}
    for unit_id, entity_id in UnitEntity.objects.filter(unit__bank_id=bank).values_list("unit_id", "entity_id"):
        per_unit.setdefault(unit_id, set()).add(entity_id)
    counts: Counter[tuple[int, int]] = Counter()
    for entities in per_unit.values():
        counts.update(combinations(sorted(entities), 2))
    return dict(counts)


def stored_cooccurrences(bank: str) -> dict[tuple[int, int], int]:
    return {
        (a, b): n
        for a, b, n in EntityCooccurrence.objects.filter(bank_id=bank, count__gt=0).values_list(
            "entity_a_id", "entity_b_id", "count"
        )
    }


def assert_graph_is_sound(bank: str) -> None:
    """Counts exact, caps kept, no dangling link; and once the bank is quiet,
    nothing left unfolded."""
    assert memory.cooccurrence_counts(Bank.objects.get(pk=bank)) == exact_cooccurrences(bank)
    memory.fold(Bank.objects.get(pk=bank))
    assert not EntityCooccurrenceDelta.objects.filter(bank_id=bank).exists()
    assert not PendingBackLink.objects.filter(bank_id=bank).exists()
    assert stored_cooccurrences(bank) == exact_cooccurrences(bank)
    per_source = Counter(MemoryLink.objects.filter(bank_id=bank).values_list("source_id", "kind"))
    caps = {"temporal": TEMPORAL_CAP, "semantic": SEMANTIC_CAP}
    assert all(n <= caps[kind] for (_, kind), n in per_source.items()), "a unit exceeds its link cap"
    units = set(MemoryUnit.objects.filter(bank_id=bank).values_list("pk", flat=True))
    ends = MemoryLink.objects.filter(bank_id=bank).values_list("source_id", "target_id")
    assert all(a in units and b in units for a, b in ends)


def deadlocks() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


def submit_async(admin: Any, bank: str, items: list[dict[str, Any]]) -> str:
    response = admin.post(f"banks/{bank}/memories", {"items": items, "async": True})
    assert response.status_code == 200, response.content
    return str(response.json()["operation_id"])


def in_threads(calls: list[Callable[[], Any]], at_once: int) -> list[Any]:
    """Run the calls `at_once` at a time, each thread on its own connection."""
    results: list[Any] = []
    for start in range(0, len(calls), at_once):
        results += race(*calls[start : start + at_once])
    return results


class LockSampler:
    """Samples pg_stat_activity of the test database every 10 ms: which
    sessions are busy, which of them wait on a lock, and for how long one
    wait lasted (the same backend seen waiting since the same moment)."""

    def __init__(self) -> None:
        self.busy = 0
        self.waiting = 0
        self.longest: dict[str, float] = {}
        self._since: dict[tuple[int, str], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with connections["default"].cursor() as cursor:
            while not self._stop.is_set():
                cursor.execute(
                    "SELECT pid, state, wait_event_type, wait_event FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND backend_type = 'client backend'"
                )
                now = time.monotonic()
                seen = set()
                for pid, state, wait_type, wait_event in cursor.fetchall():
                    if state not in ("active", "idle in transaction"):
                        continue
                    self.busy += 1
                    if wait_type == "Lock":
                        self.waiting += 1
                        key = (pid, wait_event)
                        seen.add(key)
                        start = self._since.setdefault(key, now)
                        self.longest[wait_event] = max(self.longest.get(wait_event, 0.0), now - start)
                self._since = {k: v for k, v in self._since.items() if k in seen}
                time.sleep(0.01)
        connections["default"].close()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- transient database errors ------------------------------------------------------------


def test_transient_database_errors_are_retried_without_spending_retries(
    start_workers: Any, alpha: Any, tmp_path: Path
) -> None:
    needs_scaled("PostgreSQL's SQLSTATEs")
    start_workers(ready=2, **FAST)
    log = str(tmp_path / "runs.jsonl")
    open(log, "w").close()
    kinds = {
        "40P01": "deadlock",
        "40001": "serialization failure",
        "55P03": "lock not available",
        "lost": "connection",  # "connection lost" or "connection terminated by the server"
        "23503": "foreign key violation from a concurrent delete",
    }
    ids = {
        sqlstate: lifecycle.operation_submit(
            bank_id="alpha", operation_type="test_dberror", payload={"sqlstate": sqlstate, "log": log, "failures": 2}
        ).operation.pk
        for sqlstate in [*kinds, "23505"]
    }
    rows = {row.pk: row for row in finished(list(ids.values()), timeout=60)}
    for sqlstate, why in kinds.items():
        row = rows[ids[sqlstate]]
        assert row.status == "completed", (sqlstate, row.error_message)
        assert row.retry_count == 0 and row.result_metadata == {"runs": 3}
        assert [entry["attempt"] for entry in row.error_history] == [0, 0]
        assert all(why in entry["transient"] for entry in row.error_history), row.error_history
    # A unique violation is the input's fault: it fails at once.
    unique = rows[ids["23505"]]
    assert unique.status == "failed" and unique.retry_count == 0
    assert "transient" not in unique.error_history[0]


def test_transient_retries_are_bounded_per_attempt(start_workers: Any, alpha: Any, tmp_path: Path) -> None:
    needs_scaled("PostgreSQL's SQLSTATEs")
    start_workers(
        ready=2,
        beat=True,
        OPS_TRANSIENT_RETRIES="2",
        OPS_RETRY_BACKOFF_SECONDS="0.1",
        **FAST,
    )
    log = str(tmp_path / "runs.jsonl")
    open(log, "w").close()
    pk = lifecycle.operation_submit(
        bank_id="alpha", operation_type="test_dberror", payload={"sqlstate": "40P01", "log": log, "failures": 5}
    ).operation.pk
    (row,) = finished([pk], timeout=60)
    assert row.status == "completed", row.error_message
    # Attempt 0: two transient retries, the third spends a retry; attempt 1: two more, then it works.
    assert row.retry_count == 1 and row.result_metadata == {"runs": 6}
    assert [entry["attempt"] for entry in row.error_history] == [0, 0, 0, 1, 1]


# --- the crowd -------------------------------------------------------------------------------


@pytest.mark.embedded
def test_eight_retains_into_one_bank_run_side_by_side(start_workers: Any, admin: Any, alpha: Any) -> None:
    start_workers(ready=2, **FAST)
    requests = [[item(r, f"r{r}-{k}") for k in range(40)] for r in range(8)]
    with LockSampler() if not EMBEDDED else _nothing() as sampler:
        parents = in_threads([lambda items=items: submit_async(admin, "alpha", items) for items in requests], 8)
        children = [Operation.objects.get(parent_id=p).pk for p in parents]
        rows = finished(children, timeout=300)
    assert {r.status for r in rows} == {"completed"}, [r.error_message for r in rows]
    # All eight ran at once: every interval overlaps every other.
    assert max(r.started_at for r in rows) < min(r.completed_at for r in rows)
    assert MemoryUnit.objects.filter(bank_id="alpha").count() == sum(
        facts(i["content"]) for items in requests for i in items
    )
    assert_graph_is_sound("alpha")
    if sampler is not None:
        # Nobody waited on another's lock for more than a moment.
        assert sampler.busy > 50, "the sampler saw too little of the run"
        assert max(sampler.longest.values(), default=0.0) < 0.5, sampler.longest
        print(
            f"\nbusy session samples: {sampler.busy}, waiting on a lock: {sampler.waiting} "
            f"({sampler.waiting / sampler.busy:.1%}); longest waits: {sampler.longest}"
        )


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


@pytest.mark.embedded
def test_a_crowd_with_deletes_and_re_retains_never_deadlocks(start_workers: Any, admin: Any, alpha: Any) -> None:
    """24 retains of 15 items, 8 at a time: each its own 10 documents and five
    shared ones that every request re-retains; meanwhile old documents are
    deleted and others deleted then retained again, and the graph maintenance
    and consolidation they queue run too."""
    Bank.objects.filter(pk="alpha").update(enable_auto_consolidation=True)
    old = [item(99, f"old-{j}") for j in range(10)]
    flips = [item(98, f"flip-{j}") for j in range(6)]
    assert admin.post("banks/alpha/memories", {"items": old + flips}).status_code == 200
    start_workers(ready=2, **FAST)
    before = None if EMBEDDED else deadlocks()
    requests = [
        [item(r, f"r{r}-{k}") for k in range(10)] + [item(r, f"shared-{j}", version=r) for j in range(5)]
        for r in range(24)
    ]

    def delete_old(j: int) -> None:
        assert admin.delete(f"banks/alpha/documents/old-{j}").status_code == 200

    def flip(j: int) -> None:
        assert admin.delete(f"banks/alpha/documents/flip-{j}").status_code == 200
        assert admin.post("banks/alpha/memories", {"items": [flips[j]]}).status_code == 200

    calls: list[Callable[[], Any]] = [lambda items=items: submit_async(admin, "alpha", items) for items in requests]
    racers: list[Callable[[], Any]] = [lambda j=j: delete_old(j) for j in range(10)]
    racers += [lambda j=j: flip(j) for j in range(6)]
    for n, racer in enumerate(racers):  # spread over the batches of submissions
        calls.insert(2 + n * 2, racer)
    in_threads(calls, 8)
    rows = all_settled("alpha", timeout=600)
    by_type = Counter((r.operation_type, r.status) for r in rows)
    assert {status for _, status in by_type} == {"completed"}, by_type
    assert by_type[("retain", "completed")] == 24 and by_type[("graph_maintenance", "completed")] >= 1
    assert [r.error_history for r in rows if r.error_history] == []
    if before is not None:
        assert deadlocks() == before
    expected = {i["document_id"]: facts(i["content"]) for items in requests for i in items}
    expected.update({f["document_id"]: facts(f["content"]) for f in flips})
    assert set(Document.objects.filter(bank_id="alpha").values_list("document_id", flat=True)) == set(expected)
    assert MemoryUnit.objects.filter(bank_id="alpha").count() == sum(expected.values())
    assert_graph_is_sound("alpha")


# --- faults with a crowd ---------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (worker main processes and their pools)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def crowd(admin: Any, retains: int, items: int) -> tuple[list[str], dict[str, int]]:
    """`retains` async retains of `items` items each into alpha, submitted at
    once; returns their child operations and the units each document should
    end with."""
    requests = [[item(r, f"c{r}-{k}") for k in range(items)] for r in range(retains)]
    parents = in_threads([lambda items=items: submit_async(admin, "alpha", items) for items in requests], 8)
    children = [str(Operation.objects.get(parent_id=p).pk) for p in parents]
    expected = {i["document_id"]: facts(i["content"]) for items in requests for i in items}
    return children, expected


def assert_crowd_done(children: list[str], expected: dict[str, int]) -> list[Operation]:
    all_settled("alpha", timeout=400)
    rows = list(Operation.objects.filter(pk__in=children))
    assert {r.status for r in rows} == {"completed"}, [(r.status, r.error_message) for r in rows]
    assert set(Document.objects.filter(bank_id="alpha").values_list("document_id", flat=True)) == set(expected)
    assert MemoryUnit.objects.filter(bank_id="alpha").count() == sum(expected.values())
    # Nothing written twice: each document holds exactly its own units, once.
    per_document = Counter(MemoryUnit.objects.filter(bank_id="alpha").values_list("document__document_id", flat=True))
    assert per_document == Counter(expected)
    assert_graph_is_sound("alpha")
    return rows


@pytest.mark.embedded
def test_a_crowd_survives_every_worker_process_killed(start_workers: Any, admin: Any, alpha: Any) -> None:
    workers = start_workers(ready=2, beat=True, **FAST_RECOVERY)
    # More retains than the 10 shared slots: as runs finish, queued ones take
    # their slots, so many still run when the kill comes (a retain on
    # PostgreSQL writes its items together, at its end).
    children, expected = crowd(admin, retains=16, items=20)
    wait_for(
        lambda: MemoryUnit.objects.filter(bank_id="alpha").count() > sum(expected.values()) // 4,
        timeout=120,
        interval=0.2,
        message="a quarter of the crowd to be written",
    )
    assert Operation.objects.filter(pk__in=children, status="processing").count() >= 5
    killed = descendants(workers.process.pid)
    for pid in killed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert len(killed) >= 3
    rows = assert_crowd_done(children, expected)
    # The killed runs were retried (a lost worker spends a retry); none failed.
    assert any(r.retry_count for r in rows)
    assert "restarting" in workers.output()


def test_a_crowd_survives_every_database_connection_terminated(start_workers: Any, admin: Any, alpha: Any) -> None:
    needs_scaled("PostgreSQL's pg_terminate_backend")
    start_workers(ready=2, beat=True, **FAST_RECOVERY)
    children, expected = crowd(admin, retains=10, items=20)
    wait_for(
        lambda: MemoryUnit.objects.filter(bank_id="alpha").count() > sum(expected.values()) // 4,
        timeout=120,
        interval=0.2,
        message="a quarter of the crowd to be written",
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert cursor.fetchone()[0] >= 5
    rows = assert_crowd_done(children, expected)
    # A lost connection is transient: no retry spent on it.
    assert all(r.retry_count == 0 for r in rows), [r.error_history for r in rows if r.retry_count]


# --- fair share ------------------------------------------------------------------------------


@pytest.mark.embedded
def test_a_big_import_starves_neither_another_bank_nor_the_sweeper(
    start_workers: Any, admin: Any, alpha: Any, beta: Any
) -> None:
    """Bank alpha imports 30 x 100 items and holds every shared slot (nobody
    else waits); bank beta's single retain starts within 2 s anyway: alpha's
    newest runs give their slots back at their next checkpoint, alpha's queued
    messages are refused while beta waits, and the yielded runs resume later
    where they stopped. Meanwhile every sweep finishes in under half its
    interval and no beat task expires."""
    # A sweep every 2 s (5 by default): short enough for several under the
    # import, long enough that "under half" is not the machine's speed.
    sweep_interval = 2.0
    workers = start_workers(ready=2, beat=True, **{**FAST, "OPS_SWEEP_INTERVAL_SECONDS": str(sweep_interval)})
    slots = 10  # the test environment's shared pool (no reserved slots)
    requests = [[item(r, f"bulk{r}-{k}") for k in range(100)] for r in range(30)]
    parents = in_threads([lambda items=items: submit_async(admin, "alpha", items) for items in requests], 8)
    running = wait_for(
        lambda: (
            (n := Operation.objects.filter(bank_id="alpha", operation_type="retain", status="processing").count())
            >= slots
            and n
        ),
        timeout=60,
        interval=0.1,
        message="alpha's import to take every slot",
    )
    assert running == slots  # nobody else waits: alpha holds them all
    time.sleep(1.0)
    single = submit_async(admin, "beta", [item(0, "beta-only")])
    child = Operation.objects.get(parent_id=single)
    started = wait_for(
        lambda: Operation.objects.get(pk=child.pk).started_at,
        timeout=30,
        interval=0.05,
        message="beta's retain to start",
    )
    waited = (started - child.created_at).total_seconds()
    assert waited < 2.0, f"beta's retain waited {waited:.2f}s behind alpha's import"
    assert finished([child.pk], timeout=60)[0].status == "completed"
    # Alpha gave slots back and resumes: some of its runs yielded mid-way.
    yielded = [
        op
        for op in Operation.objects.filter(bank_id="alpha", operation_type="retain")
        if op.status == "pending" and (op.progress or {}).get("processed")
    ]
    time.sleep(2 * sweep_interval)  # more sweeps under the import

    def swept() -> list[float]:
        return [float(s) for s in re.findall(r"Task ops\.sweep\[[^]]+\] succeeded in ([0-9.e-]+)s", workers.output())]

    # The supervisor relays its workers' logs: under the import they may reach the file seconds late.
    sweeps = wait_for(lambda: len(found := swept()) >= 5 and found, timeout=60, message="five sweeps in the log")
    print(
        f"\nbeta waited {waited:.2f}s; alpha runs parked mid-way: {len(yielded)}; "
        f"{len(sweeps)} sweeps, longest {max(sweeps):.3f}s"
    )
    assert max(sweeps) < sweep_interval / 2, sorted(sweeps)[-5:]
    assert "Discarding revoked task" not in workers.output()
    for parent in parents:
        try:
            lifecycle.operation_cancel(operation_id=parent)
        except lifecycle.TransitionRefused:
            pass  # that request's import has finished already
    all_settled("alpha", timeout=120)
