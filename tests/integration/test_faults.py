"""Faults with real parts: killed workers, a flushed or restarted broker, a
failed publish, dropped database connections, time limits and cancellation.
Nothing is lost, nothing is left in `processing`, nothing runs twice at once."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from operations import lifecycle
from operations.models import Operation
from opsproject.celery import app
from tests.conftest import FAST_RECOVERY, wait_for

pytestmark = pytest.mark.workers

FAST = {**FAST_RECOVERY, "OPS_WORKER_MAX_SLOTS": "2", "OPS_CANCEL_GRACE_SECONDS": "1"}
UNFINISHED = ("pending", "processing")


def events(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def event_count(log: Path, operation_id: Any, event: str) -> int:
    return sum(1 for e in events(log) if e["op"] == str(operation_id) and e["event"] == event)


def submit(operation_type: str, **payload: Any) -> str:
    return str(lifecycle.operation_submit(bank_id="alpha", operation_type=operation_type, payload=payload).operation.pk)


def row(pk: str) -> Operation:
    return Operation.objects.get(pk=pk)


def wait_status(pk: str, *statuses: str, timeout: float = 60) -> Operation:
    return wait_for(
        lambda: (r := row(pk)).status in statuses and r,
        timeout=timeout,
        message=f"operation {pk} to become {'/'.join(statuses)}",
    )


def wait_all_finished(ids: list[str], timeout: float = 120) -> None:
    wait_for(
        lambda: not Operation.objects.filter(pk__in=ids, status__in=UNFINISHED).exists(),
        timeout=timeout,
        message="every operation to finish",
    )


def started_pid(log: Path, pk: str, nth: int = 1) -> int:
    starts = wait_for(
        lambda: (s := [e for e in events(log) if e["op"] == pk and e["event"] == "start"]) and len(s) >= nth and s,
        timeout=30,
        message=f"run {nth} of {pk} to start",
    )
    return int(starts[nth - 1]["pid"])


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


# --- killed workers ------------------------------------------------------------------


def test_killed_pool_process_operation_completes_exactly_once(start_workers: Any, alpha: Any, tmp_path: Path) -> None:
    start_workers(ready=2, beat=True, **FAST)
    log = tmp_path / "runs.jsonl"
    for _ in range(3):
        pk = submit("test_sleep", seconds=1.5, log=str(log))
        os.kill(started_pid(log, pk), signal.SIGKILL)
        done = wait_status(pk, "completed", "failed")
        assert done.status == "completed", done.error_message
        assert done.retry_count == 1
        # Settled by the worker's main process or, if the reaper got there
        # first, by the lease: either way one lost attempt is on record.
        assert "lost" in done.error_history[0]["error"]
        assert event_count(log, pk, "start") == 2 and event_count(log, pk, "end") == 1
    assert not Operation.objects.filter(status="processing").exists()


def test_killed_worker_node_is_recovered_by_the_lease(start_workers: Any, alpha: Any, tmp_path: Path) -> None:
    """The whole worker (main process and pool) dies, so nobody settles the row:
    the heartbeat stops, the lease expires, the reaper re-queues it."""
    workers = start_workers(ready=2, beat=True, **FAST)
    log = tmp_path / "runs.jsonl"
    ids = []
    for _ in range(3):
        pk = submit("test_sleep", seconds=1.5, log=str(log))
        ids.append(pk)
        child = started_pid(log, pk)
        os.killpg(parent_pid(child), signal.SIGKILL)  # the worker's own process group
        done = wait_status(pk, "completed", "failed", timeout=90)
        assert done.status == "completed", done.error_message
        assert done.retry_count == 1 and done.error_history[0]["error"].startswith("worker lost")
        assert event_count(log, pk, "end") == 1
    assert "restarting" in workers.output()
    assert not Operation.objects.filter(status="processing").exists()


def test_redelivered_message_of_a_running_operation_is_dropped(start_workers: Any, alpha: Any, tmp_path: Path) -> None:
    workers = start_workers(ready=2, beat=True, **FAST)
    log = tmp_path / "runs.jsonl"
    pk = submit("test_sleep", seconds=2, log=str(log))
    started_pid(log, pk)
    # The same message again, as a broker redelivery would bring it.
    duplicate = app.send_task("ops.test_sleep", args=[pk], queue="ops.test_sleep").id
    # Positive proof it was consumed and dropped (not merely not yet consumed):
    # the worker logs the task's outcome.
    wait_for(
        lambda: f"ops.test_sleep[{duplicate}] succeeded" in workers.output(),
        message="the duplicate message to be consumed",
    )
    assert f"ops.test_sleep[{duplicate}] succeeded" in workers.output()
    line = next(ln for ln in workers.output().splitlines() if f"[{duplicate}] succeeded" in ln)
    assert line.endswith("'dropped'"), line
    wait_status(pk, "completed")
    assert event_count(log, pk, "start") == 1 and event_count(log, pk, "end") == 1


# --- the broker ---------------------------------------------------------------------------


def test_flushed_broker_loses_nothing(start_workers: Any, alpha: Any, private_broker: Any) -> None:
    ids = [submit("test_echo", value=i) for i in range(10)]
    assert Operation.objects.filter(pk__in=ids, dispatched_at__isnull=False).count() == 10
    private_broker.flush()  # every queued message is gone
    start_workers(ready=2, beat=True, CELERY_BROKER_URL=private_broker.url, **FAST)
    wait_all_finished(ids, timeout=60)
    assert Counter(row(pk).status for pk in ids) == {"completed": 10}


def test_restarted_broker_loses_nothing(start_workers: Any, alpha: Any, private_broker: Any, tmp_path: Path) -> None:
    start_workers(ready=2, beat=True, CELERY_BROKER_URL=private_broker.url, **FAST)
    log = tmp_path / "runs.jsonl"
    # Two sleepers hold both slots; ten more wait in the broker behind them.
    busy = [submit("test_sleep", seconds=2, log=str(log)) for _ in range(2)]
    queued = [submit("test_echo", value=i, log=str(log)) for i in range(10)]
    for pk in busy:
        started_pid(log, pk)
    private_broker.restart()  # keeps nothing on disk: the queue is empty now
    wait_all_finished(busy + queued, timeout=90)
    assert Counter(row(pk).status for pk in busy + queued) == {"completed": 12}
    for pk in queued:
        assert event_count(log, pk, "end") == 1


def test_submit_while_the_broker_is_down_succeeds_and_runs_later(
    start_workers: Any, alpha: Any, private_broker: Any
) -> None:
    start_workers(ready=2, beat=True, CELERY_BROKER_URL=private_broker.url, **FAST)
    private_broker.stop()
    ids = [submit("test_echo", value=i) for i in range(5)]  # no exception
    assert Operation.objects.filter(pk__in=ids, status="pending", dispatched_at__isnull=True).count() == 5
    private_broker.start()
    wait_all_finished(ids, timeout=90)
    assert Counter(row(pk).status for pk in ids) == {"completed": 5}


# --- the database ----------------------------------------------------------------------


def terminate_other_backends() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity "
            "where datname = current_database() and pid <> pg_backend_pid()"
        )
        return int(cursor.fetchone()[0])


def test_database_connections_dropped_during_a_run(start_workers: Any, alpha: Any, tmp_path: Path) -> None:
    start_workers(ready=2, beat=True, **FAST)
    log = tmp_path / "runs.jsonl"
    pk = submit("test_dbloop", steps=30, pause=0.1, log=str(log))
    wait_for(lambda: (p := row(pk).progress) and p["processed"] >= 3, message="the loop to run")
    assert terminate_other_backends() >= 1
    done = wait_status(pk, "completed", "failed", timeout=60)
    assert done.status == "completed", done.error_message
    assert event_count(log, pk, "end") == 1
    # The workers still work afterwards.
    after = submit("test_echo", value=1)
    assert wait_status(after, "completed", "failed").status == "completed"


# --- retries and time limits ------------------------------------------------------------


def test_retry_schedule_is_honoured(start_workers: Any, alpha: Any, tmp_path: Path) -> None:
    start_workers(ready=2, beat=True, **FAST)
    log = tmp_path / "runs.jsonl"
    flaky = submit("test_flaky", failures=2, log=str(log))
    exhausted = submit("test_flaky", failures=10, log=str(log))
    permanent = submit("test_flaky", permanent=True, log=str(log))
    wait_all_finished([flaky, exhausted, permanent])

    done = row(flaky)
    assert done.status == "completed" and done.retry_count == 2
    assert done.result_metadata == {"attempts": 3}
    assert [e["attempt"] for e in done.error_history] == [0, 1]
    starts = [e for e in events(log) if e["op"] == flaky and e["event"] == "start"]
    assert [e["attempt"] for e in starts] == [0, 1, 2]

    gave_up = row(exhausted)
    assert gave_up.status == "failed" and gave_up.retry_count == 3  # OPS_WORKER_MAX_RETRIES
    assert event_count(log, exhausted, "start") == 4
    assert gave_up.error_message == "RuntimeError: transient failure on attempt 3 (stage: flaky)"

    refused = row(permanent)
    assert refused.status == "failed" and refused.retry_count == 0
    assert event_count(log, permanent, "start") == 1
    assert refused.error_message == "bad input: this will never work (stage: flaky)"


def test_soft_time_limit_fails_with_the_stage(start_workers: Any, alpha: Any) -> None:
    start_workers(ready=2, beat=True, **FAST)
    pk = submit("test_slow", seconds=10)
    done = wait_status(pk, "failed", "completed", timeout=30)
    assert done.status == "failed" and done.retry_count == 0
    assert done.error_message == "timed out after 1s (stage: busy)"


def test_hard_time_limit_fails_with_the_stage(start_workers: Any, alpha: Any, tmp_path: Path) -> None:
    start_workers(ready=2, beat=True, **FAST)
    log = tmp_path / "runs.jsonl"
    pk = submit("test_stubborn_timeout", seconds=30, log=str(log))
    done = wait_status(pk, "failed", "completed", timeout=30)
    assert done.status == "failed" and done.retry_count == 0
    assert done.error_message == "timed out: killed at the hard time limit of 2s (stage: stubborn)"
    assert event_count(log, pk, "end") == 0


# --- cancellation ---------------------------------------------------------------------


def test_cooperative_cancel_of_a_running_operation(start_workers: Any, alpha: Any, tmp_path: Path) -> None:
    start_workers(ready=2, beat=True, **FAST)
    log = tmp_path / "runs.jsonl"
    pk = submit("test_sleep", seconds=30, log=str(log))
    started_pid(log, pk)
    assert lifecycle.operation_cancel(operation_id=pk) is lifecycle.CancelOutcome.REQUESTED
    done = wait_status(pk, "cancelled", "completed", "failed", timeout=10)
    assert done.status == "cancelled" and done.error_message == "cancelled during stage sleeping"
    assert event_count(log, pk, "end") == 0


def test_hard_cancel_of_an_operation_that_never_checks(start_workers: Any, alpha: Any, tmp_path: Path) -> None:
    # One slot: a single pool process, so "the same process took new work" is
    # checkable (a replacement would have another pid).
    start_workers(ready=2, beat=True, **{**FAST, "OPS_WORKER_MAX_SLOTS": "1"})
    log = tmp_path / "runs.jsonl"
    pk = submit("test_busy", seconds=60, log=str(log))
    pid = started_pid(log, pk)
    lifecycle.operation_cancel(operation_id=pk)
    done = wait_status(pk, "cancelled", "completed", "failed", timeout=20)
    assert done.status == "cancelled" and done.error_message == "cancelled during stage busy"
    assert event_count(log, pk, "end") == 0
    # The pool process survived the interruption and takes new work.
    after = submit("test_echo", value=1, log=str(log))
    assert wait_status(after, "completed", "failed").status == "completed"
    assert started_pid(log, after) == pid and Path(f"/proc/{pid}").exists()


def test_hard_cancel_kills_a_handler_that_ignores_interruption(start_workers: Any, alpha: Any, tmp_path: Path) -> None:
    start_workers(ready=2, beat=True, **FAST)
    log = tmp_path / "runs.jsonl"
    pk = submit("test_stubborn", seconds=60, log=str(log))
    pid = started_pid(log, pk)
    lifecycle.operation_cancel(operation_id=pk)
    done = wait_status(pk, "cancelled", "completed", "failed", timeout=30)
    assert done.status == "cancelled"
    assert event_count(log, pk, "ignored") >= 1 and event_count(log, pk, "end") == 0
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=10, message="the pool process to die")
    # Only that process went: the node replaces it and takes new work.
    after = submit("test_echo", value=1, log=str(log))
    assert wait_status(after, "completed", "failed", timeout=30).status == "completed"
    assert started_pid(log, after) != pid


def test_a_cancelled_operation_never_runs_after_a_restart(start_workers: Any, alpha: Any, tmp_path: Path) -> None:
    log = tmp_path / "runs.jsonl"
    cancelled = submit("test_echo", value=1, log=str(log))  # its message waits in the broker
    lifecycle.operation_cancel(operation_id=cancelled)
    later = submit("test_echo", value=2, log=str(log))  # queued behind it
    start_workers(ready=2, beat=True, **FAST)
    wait_status(later, "completed")
    assert row(cancelled).status == "cancelled"
    assert event_count(log, cancelled, "start") == 0


def test_parent_rolls_up_real_runs(start_workers: Any, alpha: Any) -> None:
    start_workers(ready=2, beat=True, **FAST)
    parent = lifecycle.operation_submit(bank_id="alpha", operation_type="test_batch").operation
    kids = [
        lifecycle.operation_submit(
            bank_id="alpha", operation_type=kind, payload=payload, parent_id=parent.pk
        ).operation.pk
        for kind, payload in [
            ("test_echo", {}),
            ("test_flaky", {"failures": 1}),
            ("test_sleep", {"seconds": 30}),
        ]
    ]
    wait_status(str(kids[2]), "processing")
    assert row(parent.pk).status == "processing"
    lifecycle.operation_cancel(operation_id=kids[2])
    done = wait_status(str(parent.pk), "completed", "failed", "cancelled", timeout=30)
    assert done.status == "cancelled"  # no failure, one cancelled child
    assert done.progress["processed"] == 3 and done.progress["total"] == 3
    assert [row(k).status for k in kids] == ["completed", "completed", "cancelled"]


# --- conservation -------------------------------------------------------------------------


def test_conservation_under_random_faults(start_workers: Any, alpha: Any, private_broker: Any, tmp_path: Path) -> None:
    """Submit operations while killing pool processes, flushing and restarting
    the broker and dropping database connections at random. In the end every
    operation is completed, failed or cancelled; none is pending or processing."""
    rng = random.Random(7)
    start_workers(ready=2, beat=True, CELERY_BROKER_URL=private_broker.url, **FAST)
    log = tmp_path / "runs.jsonl"
    kinds = [
        ("test_echo", {}),
        ("test_sleep", {"seconds": 0.5}),
        ("test_flaky", {"failures": 1}),
        ("test_flaky", {"permanent": True}),
        ("test_dbloop", {"steps": 5, "pause": 0.05}),
    ]
    ids: list[str] = []
    cancelled: set[str] = set()
    faults: Counter[str] = Counter()
    for _ in range(12):
        for _ in range(4):
            kind, payload = rng.choice(kinds)
            ids.append(submit(kind, log=str(log), **payload))
        if rng.random() < 0.2:
            target = rng.choice(ids)
            try:
                lifecycle.operation_cancel(operation_id=target)
                cancelled.add(target)
            except lifecycle.TransitionRefused:
                pass  # it already finished
        fault = rng.choice(["kill", "flush", "restart", "database", "none"])
        if fault == "kill":
            running = [e["pid"] for e in events(log) if e["event"] == "start"]
            if running:
                try:
                    os.kill(running[-1], signal.SIGKILL)
                except ProcessLookupError:
                    pass
        elif fault == "flush":
            private_broker.flush()
        elif fault == "restart":
            private_broker.restart()
        elif fault == "database":
            terminate_other_backends()
        faults[fault] += 1
        time.sleep(0.5)
    wait_all_finished(ids, timeout=240)
    outcome = Counter(row(pk).status for pk in ids)
    assert sum(outcome.values()) == len(ids) == 48
    assert set(outcome) <= {"completed", "failed", "cancelled"}
    assert len(faults) >= 3
    # Each operation ends as its kind says: faults cost attempts, never the
    # work. Only the permanently failing kind fails, unless the faults spent an
    # operation's whole retry budget (then its history shows every attempt).
    for pk in ids:
        finished = row(pk)
        permanent = finished.task_payload.get("permanent", False)
        if finished.status == "cancelled":
            assert pk in cancelled  # only what the test cancelled
        elif permanent:
            assert finished.status == "failed" and "bad input" in finished.error_message
        elif finished.status == "failed":
            assert len(finished.error_history) == finished.max_retries + 1, finished.error_history
        else:
            assert finished.status == "completed"
    spent = sum(1 for pk in ids if row(pk).status == "failed" and not row(pk).task_payload.get("permanent"))
    assert spent <= 2, f"{spent} operations lost their whole retry budget to the faults"
    # Runs of one operation never overlap; a completed one finished at least
    # once, and more than once only after a lost attempt (at-least-once).
    assert not [e for e in events(log) if e["event"] == "overlap"]
    for pk in ids:
        finished = row(pk)
        if finished.status == "completed":
            ends = event_count(log, pk, "end")
            assert ends >= 1 and (ends == 1 or finished.retry_count >= 1)


def test_api_submit_while_the_broker_is_down(start_workers: Any, alpha: Any, private_broker: Any) -> None:
    """The REST submission answers 200 with the broker down; the work runs once it is back."""
    from banks.models import MemoryUnit
    from tenancy.api_keys import api_key_create
    from tests.conftest import Caller

    admin = Caller(api_key_create(admin=True)[1])
    start_workers(ready=2, beat=True, CELERY_BROKER_URL=private_broker.url, **FAST)
    private_broker.stop()
    items = [{"content": f"Outage note {i}.", "document_id": f"n{i}"} for i in range(3)]
    response = admin.post("banks/alpha/memories", {"items": items, "async": True})
    assert response.status_code == 200
    parent = response.json()["operation_id"]
    assert admin.post("banks/alpha/consolidate").status_code == 200
    assert admin.get("banks/alpha/operations").json()["total"] == 3  # batch, its child, consolidation
    private_broker.start()
    done = wait_status(parent, "completed", "failed", "cancelled", timeout=90)
    assert done.status == "completed", done.error_message
    assert MemoryUnit.objects.filter(bank_id="alpha").count() == 3
    wait_all_finished(list(Operation.objects.values_list("pk", flat=True)))
