"""The reliability machinery one step at a time: backoff, the sweeper's
publishing, settlement of lost runs, stranded parents, retention."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from operations import lifecycle, registry
from operations.lifecycle import dispatch
from operations.models import Operation
from tests.conftest import needs_redis, race

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def submit(operation_type: str = "test_echo", **fields: Any) -> Operation:
    return lifecycle.operation_submit(bank_id="alpha", operation_type=operation_type, **fields).operation


def test_backoff_is_exponential_with_full_jitter_and_a_cap(settings: Any) -> None:
    settings.OPS_RETRY_BACKOFF_SECONDS = 2
    settings.OPS_RETRY_BACKOFF_CAP_SECONDS = 20
    optype = registry.get("test_flaky")
    for attempt, ceiling in [(1, 2), (2, 4), (3, 8), (4, 16), (5, 20), (9, 20)]:
        delays = [lifecycle.retry_delay(optype, attempt) for _ in range(300)]
        assert all(0 <= d <= ceiling for d in delays)
        # Full jitter: the delays spread over the whole range.
        assert min(delays) < ceiling * 0.2 and max(delays) > ceiling * 0.8


def test_explicit_retry_delays_win() -> None:
    optype = registry.OperationType(name="x", handler="a.b", retry_delays=(5, 300, 1800))
    assert [lifecycle.retry_delay(optype, n) for n in (1, 2, 3, 4)] == [5, 300, 1800, 1800]


def test_sweeper_publishes_only_what_has_no_live_message(alpha: Any, settings: Any) -> None:
    now = timezone.now()
    long_ago = now - timedelta(seconds=settings.OPS_REDISPATCH_SECONDS + 1)
    never = submit()  # left unpublished (its type's window was full, say)
    fresh = submit()
    stale = submit()
    parked = submit()
    running = submit()
    Operation.objects.filter(pk=never.pk).update(updated_at=long_ago, dispatched_at=None)
    Operation.objects.filter(pk=fresh.pk).update(dispatched_at=now)
    Operation.objects.filter(pk=stale.pk).update(dispatched_at=long_ago)
    Operation.objects.filter(pk=parked.pk).update(updated_at=long_ago, next_retry_at=now + timedelta(hours=1))
    lifecycle.operation_claim(operation_id=str(running.pk), worker="w", task_id="t")
    Operation.objects.filter(pk=running.pk).update(updated_at=long_ago)
    before_sweep = timezone.now()
    assert dispatch.publish_due() == 2
    published = Operation.objects.filter(dispatched_at__gt=before_sweep).values_list("pk", flat=True)
    assert set(published) == {never.pk, stale.pk}
    assert dispatch.publish_due() == 0  # now they have live messages


def test_parents_are_never_published(alpha: Any, settings: Any) -> None:
    parent = submit("test_batch")
    Operation.objects.filter(pk=parent.pk).update(updated_at=timezone.now() - timedelta(hours=1))
    assert dispatch.publish_due() == 0


@pytest.mark.django_db(transaction=True)
def test_concurrent_sweepers_publish_each_operation_once(alpha: Any) -> None:
    long_ago = timezone.now() - timedelta(hours=1)
    for _ in range(40):
        submit()
    Operation.objects.update(dispatched_at=None, updated_at=long_ago)
    counts = race(dispatch.publish_due, dispatch.publish_due, dispatch.publish_due)
    assert sum(counts) == 40
    assert Operation.objects.filter(dispatched_at__isnull=True).count() == 0


def test_a_lost_process_is_settled_by_its_task_id_only(alpha: Any) -> None:
    operation = submit()
    lifecycle.operation_claim(operation_id=str(operation.pk), worker="w", task_id="task-1")
    assert (
        lifecycle.operation_abandoned(operation_id=str(operation.pk), task_id="task-0", timed_out=False, reason="lost")
        is None
    )
    assert (
        lifecycle.operation_abandoned(
            operation_id=str(operation.pk), task_id="task-1", timed_out=False, reason="worker process lost"
        )
        == "pending"
    )
    row = Operation.objects.get(pk=operation.pk)
    assert row.retry_count == 1 and row.error_message == "worker process lost (stage: started)"


def test_a_hard_timeout_fails_for_good(alpha: Any) -> None:
    operation = submit()
    lifecycle.operation_claim(operation_id=str(operation.pk), worker="w", task_id="t")
    assert (
        lifecycle.operation_abandoned(operation_id=str(operation.pk), task_id="t", timed_out=True, reason="timed out")
        == "failed"
    )
    assert Operation.objects.get(pk=operation.pk).retry_count == 0


def test_reaper_fails_a_run_past_its_hard_time_limit(alpha: Any, settings: Any) -> None:
    operation = submit("test_slow")  # hard limit 4 s
    lifecycle.operation_claim(operation_id=str(operation.pk), worker="w", task_id="t")
    past = timezone.now() - timedelta(seconds=settings.OPS_LEASE_SECONDS + 10)
    Operation.objects.filter(pk=operation.pk).update(started_at=past, heartbeat_at=past)
    assert lifecycle.operations_reap() == 1
    row = Operation.objects.get(pk=operation.pk)
    assert row.status == "failed" and row.retry_count == 0
    assert row.error_message.startswith("timed out: ran past the hard time limit of 4s")


def test_stranded_parent_is_rolled_up_by_the_sweeper(alpha: Any) -> None:
    parent = submit("test_batch")
    kids = [submit(parent_id=parent.pk) for _ in range(2)]
    # Children finished behind the service's back (e.g. restored from a backup).
    Operation.objects.filter(pk__in=[k.pk for k in kids]).update(status="completed")
    assert Operation.objects.get(pk=parent.pk).status == "pending"
    assert lifecycle.operations_roll_up_stranded() == 1
    assert Operation.objects.get(pk=parent.pk).status == "completed"
    assert lifecycle.operations_roll_up_stranded() == 0
    # Not stranded: a parent with a child still to run, and one with no children yet.
    busy = submit("test_batch")
    done, waiting = submit(parent_id=busy.pk), submit(parent_id=busy.pk)
    Operation.objects.filter(pk=done.pk).update(status="completed")
    empty = submit("test_batch")
    assert lifecycle.operations_roll_up_stranded() == 0
    assert Operation.objects.get(pk=waiting.pk).status == "pending"
    assert set(Operation.objects.filter(pk__in=[busy.pk, empty.pk]).values_list("status", flat=True)) == {"pending"}


def test_retention_prunes_old_terminal_operations_in_batches(alpha: Any) -> None:
    old = timezone.now() - timedelta(days=31)
    finished = [submit() for _ in range(7)]
    for operation in finished:
        lifecycle.operation_cancel(operation_id=operation.pk)
    Operation.objects.filter(pk__in=[o.pk for o in finished]).update(completed_at=old)
    parent = submit("test_batch")
    child = submit(parent_id=parent.pk)
    lifecycle.operation_cancel(operation_id=parent.pk)
    Operation.objects.filter(pk__in=[parent.pk, child.pk]).update(completed_at=old)
    recent = submit()
    lifecycle.operation_cancel(operation_id=recent.pk)
    old_but_pending = submit()
    Operation.objects.filter(pk=old_but_pending.pk).update(created_at=old)

    assert lifecycle.operations_prune(older_than_days=30, batch_size=3) == 8
    remaining = set(Operation.objects.values_list("pk", flat=True))
    assert remaining == {recent.pk, old_but_pending.pk}


def test_dispatch_window_keeps_a_backlog_in_the_database(
    alpha: Any, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.OPS_DISPATCH_WINDOW = 3
    with django_capture_on_commit_callbacks(execute=True):
        ops = [submit() for _ in range(10)]
    assert dispatch.in_flight("test_echo") == 3
    dispatched = list(Operation.objects.filter(dispatched_at__isnull=False).order_by("created_at"))
    assert [o.pk for o in dispatched] == [o.pk for o in ops[:3]]  # oldest first
    # A worker takes one message: the window is topped up with the next oldest.
    lifecycle.operation_claim(operation_id=str(ops[0].pk), worker="w", task_id="t")
    assert dispatch.top_up("test_echo") == 1
    assert Operation.objects.get(pk=ops[3].pk).dispatched_at is not None
    assert dispatch.top_up("test_echo") == 0 and dispatch.publish_due() == 0


def test_a_submission_goes_ahead_of_the_window_only_when_its_bank_has_no_message_there(
    alpha: Any, beta: Any, settings: Any, monkeypatch: Any, django_capture_on_commit_callbacks: Any
) -> None:
    """The priority a submission is sent with comes from the window as its
    process last read it: behind when its bank has a message there, ahead
    when not (another bank's full window does not delay it)."""
    settings.OPS_DISPATCH_WINDOW = 6
    sent: list[tuple[str, int]] = []
    monkeypatch.setattr(
        dispatch,
        "send",
        lambda operation_id, operation_type, task_id, *, priority: (
            sent.append((Operation.objects.get(pk=operation_id).bank_id, priority)) or True
        ),
    )
    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(3):
            submit()
    dispatch.forget_process_state()  # read the window again: alpha's three are in it
    with django_capture_on_commit_callbacks(execute=True):
        submit()
        lifecycle.operation_submit(bank_id="beta", operation_type="test_echo")
        lifecycle.operation_submit(bank_id="beta", operation_type="test_echo")
    assert sent == [
        ("alpha", dispatch.FIRST_OF_ITS_BANK),
        ("alpha", dispatch.BEHIND),
        ("alpha", dispatch.BEHIND),
        ("alpha", dispatch.BEHIND),
        ("beta", dispatch.FIRST_OF_ITS_BANK),
        ("beta", dispatch.BEHIND),
    ]


def test_an_operation_waiting_on_a_busy_serialization_key_is_not_republished(alpha: Any) -> None:
    running = submit("test_serial")
    lifecycle.operation_claim(operation_id=str(running.pk), worker="w", task_id="t")
    waiting = submit("test_serial")
    # Its message is consumed and dropped: the key is busy.
    Operation.objects.filter(pk=waiting.pk).update(dispatched_at=timezone.now())
    assert lifecycle.operation_claim(operation_id=str(waiting.pk), worker="w", task_id="t") is None
    assert Operation.objects.get(pk=waiting.pk).dispatched_at is None
    assert dispatch.top_up("test_serial") == 0  # no busy loop of publish-and-drop
    lifecycle.operation_cancel(operation_id=running.pk)  # requested; confirm it:
    Operation.objects.filter(pk=running.pk).update(status="cancelled")
    assert dispatch.top_up("test_serial") == 1


def test_the_cancel_signal_interrupts_a_handler_even_while_it_holds_the_lease_lock(tmp_path: Any) -> None:
    """The signal handler runs in the main thread between any two bytecodes,
    possibly while that thread holds the lease lock; with a non-reentrant lock it
    waited for itself forever. Run in a child process so a hang fails the test
    instead of the suite."""
    import subprocess
    import sys
    import textwrap

    from tests.conftest import PROJECT_DIR

    script = textwrap.dedent(
        """
        import os, signal, sys, django
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opsproject.settings")
        django.setup()
        from operations.worker import leases
        from operations.handlers import Lease, OperationCancelled
        lease = Lease(operation_id="op", lease_id="l", operation_type="test_echo", bank_id="alpha",
                      worker="w", task_id="t", attempt=0, payload={})
        leases.install_cancel_signal()
        leases.hold(lease)
        leases.set_in_handler("op", True)
        leases.snapshot()["op"].interrupted_at = 1.0
        with leases._lock:  # the main thread is inside the lock, e.g. in set_in_handler
            try:
                signal.raise_signal(leases.CANCEL_SIGNAL)
            except OperationCancelled:
                print("interrupted")
                sys.exit(0)
        print("not interrupted")
        sys.exit(1)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "interrupted" in result.stdout, result.stdout + result.stderr


def test_the_next_operation_published_is_chosen_round_robin_over_banks(alpha: Any, beta: Any, settings: Any) -> None:
    """Bank alpha queued 30 before bank beta queued 1: beta's is published at
    the second pick, not the thirty-first, and alpha still gets every pick
    after it."""
    from tenancy.models import Bank

    settings.OPS_DISPATCH_WINDOW = 1
    Bank.objects.create(bank_id="gamma")
    dispatch._cursor.clear()
    backlog = [submit() for _ in range(30)]  # the first is published at once (the window has room)
    late = lifecycle.operation_submit(bank_id="beta", operation_type="test_echo").operation
    later = lifecycle.operation_submit(bank_id="gamma", operation_type="test_echo").operation
    assert Operation.objects.get(pk=late.pk).dispatched_at is None  # the window was full

    picks = []
    for _ in range(6):
        assert dispatch.publish_next("test_echo")
        picks.append(
            Operation.objects.filter(dispatched_at__isnull=False)
            .order_by("-dispatched_at")
            .values_list("bank_id", flat=True)
            .first()
        )
    assert picks == ["alpha", "beta", "gamma", "alpha", "alpha", "alpha"]
    published_alpha = Operation.objects.filter(bank_id="alpha", dispatched_at__isnull=False).order_by("created_at")
    # Oldest first within a bank.
    assert [o.pk for o in published_alpha] == [o.pk for o in backlog[:5]]
    assert Operation.objects.filter(pk__in=[late.pk, later.pk], dispatched_at__isnull=False).count() == 2


def test_the_pick_skips_what_cannot_run_yet(alpha: Any) -> None:
    """Parked retries and operations whose serialization key is busy are not
    published; the next due one is."""
    dispatch._cursor.clear()
    parked = submit()
    busy_holder = submit("test_serial")
    blocked = submit("test_serial")
    ready = submit("test_serial")
    Operation.objects.update(dispatched_at=None)
    Operation.objects.filter(pk=parked.pk).update(next_retry_at=timezone.now() + timedelta(hours=1))
    assert lifecycle.operation_claim(operation_id=str(busy_holder.pk), worker="w", task_id="t") is not None
    assert not dispatch.publish_next("test_echo")
    assert not dispatch.publish_next("test_serial")  # both waiting ones share the busy key
    assert Operation.objects.filter(pk__in=[blocked.pk, ready.pk], dispatched_at__isnull=False).count() == 0


def test_the_dispatcher_writes_messages_as_celery_would(private_broker: Any) -> None:
    """`dispatch` publishes through kombu itself (a lighter path than
    `send_task`, and several messages per round trip): what it writes is
    Celery's own message, but for the ids. Several at once, and one alone."""
    needs_redis("the messages as Redis holds them")
    import base64
    import json
    import uuid

    import redis

    import operations.tasks  # noqa: F401  # registers the operation types' tasks
    from opsproject.celery import app

    optype = registry.get("test_echo")
    # The tasks registered, as in a worker: send_task then writes the task's
    # time limits, and so must the dispatcher.
    assert optype.task_name in app.tasks
    operation_id = str(uuid.uuid4())
    app.send_task(optype.task_name, args=[operation_id], queue=optype.queue, task_id="by-celery", priority=6)
    assert dispatch.send_many([(operation_id, "test_echo", f"batched-{i}", 6) for i in range(2)]) == 2
    assert dispatch.send(operation_id, "test_echo", "alone", priority=6)
    broker = redis.Redis.from_url(private_broker.url)
    key = f"{optype.queue}\x06\x166"  # kombu's list for priority 6

    def stripped(raw: bytes) -> dict[str, Any]:
        message = json.loads(raw)
        message["body"] = json.loads(base64.b64decode(message["body"]))
        task_id = message["headers"]["id"]
        for field in ("id", "root_id"):
            assert message["headers"].pop(field) == task_id
        assert message["properties"].pop("correlation_id") == task_id
        message["properties"].pop("delivery_tag")
        # The reply address names the publishing thread (the publisher's own or
        # the caller's): results are ignored, nothing replies to it.
        message["properties"].pop("reply_to", None)
        return {"task_id": task_id, **message}

    celerys, *ours = [stripped(raw) for raw in reversed(broker.lrange(key, 0, -1))]
    assert [message.pop("task_id") for message in ours] == ["batched-0", "batched-1", "alone"]
    celerys.pop("task_id")
    differences = [
        {key: (mine.get(key), celerys.get(key)) for key in {*mine, *celerys} if mine.get(key) != celerys.get(key)}
        for mine in ours
    ]
    assert ours == [celerys] * 3, f"fields that differ (ours, Celery's): {differences}"


def test_a_redis_channel_publishes_through_one_client(private_broker: Any) -> None:
    # kombu's own Redis channel builds a client object per message.
    needs_redis("the Redis transport")
    from operations.worker.redis_broker import Transport
    from opsproject.celery import app

    with app.connection_for_write() as connection:
        assert isinstance(connection.transport, Transport)
        channel = connection.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second and first.ping()
