"""Real worker processes started by `runworkers` run operations end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from operations import lifecycle
from operations.models import Operation
from tests.conftest import wait_for

pytestmark = [pytest.mark.workers, pytest.mark.embedded]


def statuses(ids: list[Any]) -> list[str]:
    return [Operation.objects.get(pk=pk).status for pk in ids]


def test_workers_complete_operations_of_two_types(start_workers: Any, alpha: Any) -> None:
    start_workers(ready=2, OPS_WORKER_MAX_SLOTS="2")
    echoes = [
        lifecycle.operation_submit(bank_id="alpha", operation_type="test_echo", payload={"value": i}) for i in range(5)
    ]
    sleeps = [
        lifecycle.operation_submit(bank_id="alpha", operation_type="test_sleep", payload={"seconds": 0.1})
        for _ in range(3)
    ]
    ids = [s.operation.pk for s in echoes + sleeps]
    wait_for(lambda: set(statuses(ids)) == {"completed"}, message="every operation to complete")
    first = Operation.objects.get(pk=echoes[0].operation.pk)
    assert first.result_metadata["echo"] == 0
    assert first.result_metadata["worker"] == "shared@testnode"
    assert first.progress["stage"] == "echo"
    assert first.started_at is not None and first.completed_at >= first.started_at


def test_reserved_type_runs_while_shared_pool_is_saturated(start_workers: Any, alpha: Any, tmp_path: Path) -> None:
    start_workers(ready=3, OPS_WORKER_MAX_SLOTS="2", OPS_WORKER_TEST_RESERVED_RESERVED_SLOTS="1")
    log = str(tmp_path / "runs.jsonl")
    # One shared slot: a long sleeper holds it, more wait behind it.
    sleepers = [
        lifecycle.operation_submit(
            bank_id="alpha", operation_type="test_sleep", payload={"seconds": 20, "log": log}
        ).operation.pk
        for _ in range(2)
    ]
    wait_for(lambda: "processing" in statuses(sleepers), message="a sleeper to start")
    # The workers report themselves: each node of the plan, and what it runs.
    from operations.worker.nodes import live_nodes

    nodes = {n["name"]: n for n in wait_for(lambda: len(live_nodes()) == 3 and live_nodes(), message="nodes")}
    assert set(nodes) == {"shared@testnode", "test_reserved@testnode", "system@testnode"}
    assert nodes["test_reserved@testnode"]["queues"] == ["ops.test_reserved"]
    assert nodes["shared@testnode"]["concurrency"] == 1 and nodes["shared@testnode"]["busy"] == 1
    assert nodes["shared@testnode"]["running"][0]["operation_type"] == "test_sleep"
    reserved = lifecycle.operation_submit(
        bank_id="alpha", operation_type="test_reserved", payload={"log": log}
    ).operation.pk
    wait_for(lambda: statuses([reserved]) == ["completed"], timeout=15, message="the reserved type")
    assert Operation.objects.get(pk=reserved).worker == "test_reserved@testnode"
    # The shared pool was still busy the whole time.
    assert sorted(statuses(sleepers)) == ["pending", "processing"]
    runs = [json.loads(line) for line in Path(log).read_text().splitlines()]
    assert {r["worker"] for r in runs if r["op"] == str(reserved)} == {"test_reserved@testnode"}
    for pk in sleepers:
        lifecycle.operation_cancel(operation_id=pk)
    wait_for(lambda: set(statuses(sleepers)) == {"cancelled"}, message="sleepers cancelled")


# Leases short enough that three periods pass quickly, a sweeper reaping every half second.
LEASE = {
    "OPS_WORKER_MAX_SLOTS": "2",
    "OPS_LEASE_SECONDS": "2",
    "OPS_HEARTBEAT_SECONDS": "0.4",
    "OPS_SWEEP_INTERVAL_SECONDS": "0.5",
    "OPS_RETRY_BACKOFF_SECONDS": "0.2",
    "OPS_RETRY_BACKOFF_CAP_SECONDS": "0.5",
}


def runs(log: Path, pk: Any, event: str) -> int:
    if not log.exists():
        return 0
    return sum(
        1 for line in log.read_text().splitlines() if (e := json.loads(line))["op"] == str(pk) and e["event"] == event
    )


def test_a_silent_handler_keeps_its_lease_for_three_lease_periods(
    start_workers: Any, alpha: Any, tmp_path: Path
) -> None:
    """The handler reports nothing for 6 s (three 2 s leases) while the reaper
    runs every 0.5 s: only the heartbeat keeps the lease, and it does."""
    start_workers(ready=2, beat=True, **LEASE)
    log = tmp_path / "runs.jsonl"
    pk = lifecycle.operation_submit(
        bank_id="alpha", operation_type="test_busy", payload={"seconds": 6, "log": str(log)}
    ).operation.pk
    done = wait_for(
        lambda: (o := Operation.objects.get(pk=pk)).status in ("completed", "failed") and o,
        timeout=60,
        message="the silent operation to finish",
    )
    assert done.status == "completed" and done.retry_count == 0 and done.error_history == []
    assert runs(log, pk, "start") == 1 and runs(log, pk, "end") == 1
    assert (done.completed_at - done.started_at).total_seconds() >= 6


def test_without_renewal_the_reaper_takes_the_operation_back(start_workers: Any, alpha: Any, tmp_path: Path) -> None:
    """The same handler with its process's renewal stopped (first attempt only):
    the reaper takes it back after a lease, another run completes it, and the
    first run's late result is discarded. This is what the test above would
    see if renewal broke."""
    start_workers(ready=2, beat=True, **LEASE)
    log = tmp_path / "runs.jsonl"
    pk = lifecycle.operation_submit(
        bank_id="alpha",
        operation_type="test_busy",
        payload={"seconds": 6, "log": str(log), "renew": False},
    ).operation.pk
    done = wait_for(
        lambda: (o := Operation.objects.get(pk=pk)).status in ("completed", "failed") and o,
        timeout=60,
        message="the operation to finish",
    )
    assert done.status == "completed" and done.retry_count == 1
    assert done.error_history[0]["error"].startswith("worker lost")
    assert done.result_metadata == {"renewed": True}  # the second run's result, not the first's
    assert runs(log, pk, "start") == 2


def test_one_banks_backlog_does_not_hold_up_another_bank(
    start_workers: Any, alpha: Any, beta: Any, settings: Any
) -> None:
    """Alpha queues 120 operations, then beta one: beta's runs after at most a
    window's worth of alpha's (those already in the broker), not after all of
    them; alpha's backlog still drains completely."""
    settings.OPS_DISPATCH_WINDOW = 4
    start_workers(
        ready=2, beat=True, OPS_WORKER_MAX_SLOTS="2", OPS_DISPATCH_WINDOW="4", OPS_SWEEP_INTERVAL_SECONDS="0.5"
    )
    backlog = [
        lifecycle.operation_submit(bank_id="alpha", operation_type="test_sleep", payload={"seconds": 0.05}).operation.pk
        for _ in range(120)
    ]
    wait_for(
        lambda: Operation.objects.filter(pk__in=backlog, status="completed").exists(),
        message="alpha's backlog to start draining",
    )
    late = lifecycle.operation_submit(
        bank_id="beta", operation_type="test_sleep", payload={"seconds": 0.05}
    ).operation.pk
    wait_for(lambda: statuses([*backlog, late]) == ["completed"] * 121, timeout=120, message="everything to complete")
    started = Operation.objects.get(pk=late).started_at
    alpha_after = Operation.objects.filter(pk__in=backlog, started_at__gt=started).count()
    # Oldest-first dispatch would have run beta's after every one of alpha's.
    assert alpha_after >= 120 - 40, f"only {alpha_after} of alpha's ran after beta's"


def test_a_banks_only_message_goes_ahead_of_another_banks_full_window(
    start_workers: Any, alpha: Any, beta: Any, settings: Any
) -> None:
    """One type, one slot: alpha's backlog fills the window (20 messages in the
    broker, the rest in the database). Beta's one operation is published on the
    next take and runs next, not behind alpha's messages already in the broker."""
    if settings.EMBEDDED_BROKER:
        pytest.skip("the embedded filesystem broker serves a queue first in, first out (no priorities)")
    settings.OPS_DISPATCH_WINDOW = 20
    start_workers(ready=2, beat=True, OPS_WORKER_MAX_SLOTS="1", OPS_DISPATCH_WINDOW="20")
    backlog = [
        lifecycle.operation_submit(bank_id="alpha", operation_type="test_sleep", payload={"seconds": 0.2}).operation.pk
        for _ in range(40)
    ]
    wait_for(
        lambda: Operation.objects.filter(pk__in=backlog, status="completed").exists(),
        message="alpha's backlog to start draining",
    )
    in_broker = set(
        Operation.objects.filter(pk__in=backlog, status="pending", dispatched_at__isnull=False).values_list(
            "pk", flat=True
        )
    )
    late = lifecycle.operation_submit(
        bank_id="beta", operation_type="test_sleep", payload={"seconds": 0.2}
    ).operation.pk
    done = wait_for(
        lambda: (row := Operation.objects.get(pk=late)).status == "completed" and row,
        timeout=60,
        message="beta's operation to complete",
    )
    ahead = Operation.objects.filter(pk__in=in_broker, started_at__lt=done.started_at).count()
    assert len(in_broker) >= 15
    # First in, first out would have run every one of them first.
    assert ahead <= 4, f"{ahead} of alpha's {len(in_broker)} messages in the broker ran before beta's"


def _descendants(pid: int) -> dict[int, str]:
    """Every process under `pid`, with its command line."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found: dict[int, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        try:
            found[child] = (Path("/proc") / str(child) / "cmdline").read_text().replace("\0", " ")
        except OSError:
            continue
        todo.extend(children.get(child, []))
    return found


def test_operation_workers_yield_the_cpu_the_system_worker_does_not(start_workers: Any) -> None:
    workers = start_workers(ready=2, OPS_WORKER_MAX_SLOTS="2", OPS_WORKER_NICE="7")
    base = os.getpriority(os.PRIO_PROCESS, workers.process.pid)
    niceness = {
        pid: os.getpriority(os.PRIO_PROCESS, pid) - base
        for pid, command in _descendants(workers.process.pid).items()
        if "celery" in command
    }
    commands = _descendants(workers.process.pid)
    system = {pid for pid in niceness if "system@" in commands.get(pid, "")}
    operation = set(niceness) - system
    assert system and operation, commands
    assert {niceness[pid] for pid in operation} == {7}  # the pool's processes too
    assert {niceness[pid] for pid in system} == {0}
    assert "operation workers run at nice 7" in workers.output()
