"""Races between transitions, each run many times by real concurrent
transactions (on PostgreSQL, and on SQLite in the embedded session): exactly
one side wins. Where both outcomes matter, each is also made to happen in
order, so no test depends on a race going both ways within its rounds."""

from __future__ import annotations

from typing import Any

import pytest

from operations import lifecycle
from operations.lifecycle import CancelOutcome
from operations.models import Operation
from tests.conftest import race

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.embedded]

ROUNDS = 30


def submit(operation_type: str = "test_echo") -> str:
    return str(lifecycle.operation_submit(bank_id="alpha", operation_type=operation_type).operation.pk)


def test_claim_against_claim(alpha: Any) -> None:
    for _ in range(ROUNDS):
        pk = submit()
        leases = race(
            lambda: lifecycle.operation_claim(operation_id=pk, worker="a", task_id="ta"),
            lambda: lifecycle.operation_claim(operation_id=pk, worker="b", task_id="tb"),
        )
        winners = [lease for lease in leases if lease is not None]
        assert len(winners) == 1
        row = Operation.objects.get(pk=pk)
        assert row.status == "processing" and row.worker == winners[0].worker
        assert str(row.lease_id) == winners[0].lease_id


def _claim_won(pk: str, lease: Any, cancel: CancelOutcome) -> None:
    row = Operation.objects.get(pk=pk)
    # The claim won: the cancel became a request to the running handler.
    assert lease is not None and cancel is CancelOutcome.REQUESTED
    assert row.status == "processing" and row.cancel_requested_at is not None


def _cancel_won(pk: str, lease: Any, cancel: CancelOutcome) -> None:
    row = Operation.objects.get(pk=pk)
    # The cancel won: the row was cancelled before anyone ran it.
    assert lease is None and cancel is CancelOutcome.CANCELLED and row.status == "cancelled"


def test_claim_against_cancel_in_each_order(alpha: Any) -> None:
    """Both outcomes, each made to happen (not hoped for from a race)."""
    pk = submit()
    lease = lifecycle.operation_claim(operation_id=pk, worker="a", task_id="t")
    _claim_won(pk, lease, lifecycle.operation_cancel(operation_id=pk))
    pk = submit()
    cancel = lifecycle.operation_cancel(operation_id=pk)
    _cancel_won(pk, lifecycle.operation_claim(operation_id=pk, worker="a", task_id="t"), cancel)


def test_claim_against_cancel(alpha: Any) -> None:
    """Raced: whichever wins, the result is exactly one of the two above."""
    for _ in range(ROUNDS):
        pk = submit()
        lease, cancel = race(
            lambda: lifecycle.operation_claim(operation_id=pk, worker="a", task_id="t"),
            lambda: lifecycle.operation_cancel(operation_id=pk),
        )
        (_cancel_won if lease is None else _claim_won)(pk, lease, cancel)


def test_cancel_against_complete(alpha: Any) -> None:
    for _ in range(ROUNDS):
        pk = submit()
        lease = lifecycle.operation_claim(operation_id=pk, worker="a", task_id="t")
        assert lease is not None
        lifecycle.operation_cancel(operation_id=pk)  # a request: it is processing
        completed, confirmed = race(
            lambda: lifecycle.operation_complete(lease=lease, result={}),
            lambda: lifecycle.operation_confirm_cancel(lease=lease),
        )
        assert completed != confirmed
        assert Operation.objects.get(pk=pk).status == ("completed" if completed else "cancelled")


def test_concurrent_duplicate_submits_make_one_row(alpha: Any) -> None:
    for _ in range(ROUNDS // 3):
        submissions = race(
            *[lambda: lifecycle.operation_submit(bank_id="alpha", operation_type="test_dedupe") for _ in range(6)]
        )
        ids = {s.operation.pk for s in submissions}
        assert len(ids) == 1
        assert sum(not s.deduplicated for s in submissions) == 1
        assert Operation.objects.filter(status="pending", operation_type="test_dedupe").count() == 1
        lifecycle.operations_cancel_pending(bank_id="alpha")


def test_concurrent_claims_of_one_serialization_key(alpha: Any) -> None:
    for _ in range(ROUNDS):
        first, second = submit("test_serial"), submit("test_serial")
        leases = race(
            lambda: lifecycle.operation_claim(operation_id=first, worker="a", task_id="t"),
            lambda: lifecycle.operation_claim(operation_id=second, worker="b", task_id="t"),
        )
        assert sum(lease is not None for lease in leases) == 1
        assert Operation.objects.filter(operation_type="test_serial", status="processing").count() == 1
        assert Operation.objects.filter(operation_type="test_serial", status="pending").count() == 1
        Operation.objects.all().delete()


def test_children_finishing_at_once_leave_their_parent_right(alpha: Any) -> None:
    """Each child's transition rolls the parent up in its own transaction; the
    last one must see every sibling's final status. PostgreSQL serializes them
    on the parent's row lock, SQLite on its IMMEDIATE write transactions."""
    for _ in range(ROUNDS // 2):
        parent = lifecycle.operation_submit(bank_id="alpha", operation_type="test_batch").operation
        kids = [submit_child(parent.pk) for _ in range(3)]
        leases = [lifecycle.operation_claim(operation_id=k, worker="w", task_id="t") for k in kids]
        race(
            lambda: lifecycle.operation_complete(lease=leases[0], result={}),
            lambda: lifecycle.operation_complete(lease=leases[1], result={}),
            lambda: lifecycle.operation_fail(lease=leases[2], error="bad", permanent=True),
        )
        row = Operation.objects.get(pk=parent.pk)
        assert row.status == "failed" and row.progress["processed"] == 3
        assert row.progress["detail"]["completed"] == 2 and row.progress["detail"]["failed"] == 1


def submit_child(parent_id: Any) -> str:
    return str(
        lifecycle.operation_submit(bank_id="alpha", operation_type="test_echo", parent_id=parent_id).operation.pk
    )


def test_the_session_runs_on_the_deployment_it_names(alpha: Any) -> None:
    """So a green embedded session really ran on SQLite and the filesystem
    broker, and a green RabbitMQ session on RabbitMQ."""
    import os

    from django.conf import settings
    from django.db import connection

    if os.environ.get("OPS_TEST_DEPLOYMENT") == "embedded":
        assert connection.vendor == "sqlite" and settings.EMBEDDED_BROKER
        assert settings.DATABASES["default"]["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
    elif os.environ.get("OPS_TEST_DEPLOYMENT") == "rabbitmq":
        assert connection.vendor == "postgresql" and settings.CELERY_BROKER_URL.startswith("amqp://")
        assert settings.CELERY_TASK_QUEUE_MAX_PRIORITY == 9
    else:
        assert connection.vendor == "postgresql" and settings.CELERY_BROKER_URL.startswith("redis://")


def test_a_claim_that_waited_for_the_sqlite_write_lock_starts_when_it_got_it(alpha: Any) -> None:
    """SQLite serializes writers. A claim that queued behind another writer (say
    the finish of the operation holding its serialization key) must record the
    moment it took the lock, or it would seem to have started before its
    predecessor finished."""
    import threading
    import time

    from django.db import connection, transaction
    from django.utils import timezone

    if connection.vendor != "sqlite":
        pytest.skip("only SQLite makes a claim wait for a database-wide write lock")
    pk, other = submit(), submit()
    holding = threading.Event()
    released = []

    def hold() -> None:
        with transaction.atomic():
            Operation.objects.filter(pk=other).update(tag="holding the write lock")
            holding.set()
            time.sleep(0.5)
            released.append(timezone.now())

    def claim() -> Any:
        assert holding.wait(10)
        return lifecycle.operation_claim(operation_id=pk, worker="w", task_id="t")

    _, lease = race(hold, claim)
    assert lease is not None
    assert Operation.objects.get(pk=pk).started_at >= released[0]
