"""Races between transitions, each run many times by real concurrent
transactions on PostgreSQL: exactly one side wins."""

from __future__ import annotations

from typing import Any

import pytest
from operations import services
from operations.models import Operation
from operations.services import CancelOutcome
from tests.conftest import race

pytestmark = pytest.mark.django_db(transaction=True)

ROUNDS = 30


def submit(operation_type: str = "test_echo") -> str:
    return str(services.operation_submit(bank_id="alpha", operation_type=operation_type).operation.pk)


def test_claim_against_claim(alpha: Any) -> None:
    for _ in range(ROUNDS):
        pk = submit()
        leases = race(
            lambda: services.operation_claim(operation_id=pk, worker="a", task_id="ta"),
            lambda: services.operation_claim(operation_id=pk, worker="b", task_id="tb"),
        )
        winners = [lease for lease in leases if lease is not None]
        assert len(winners) == 1
        row = Operation.objects.get(pk=pk)
        assert row.status == "processing" and row.worker == winners[0].worker
        assert str(row.lease_id) == winners[0].lease_id


def test_claim_against_cancel(alpha: Any) -> None:
    outcomes = set()
    for _ in range(ROUNDS):
        pk = submit()
        lease, cancel = race(
            lambda: services.operation_claim(operation_id=pk, worker="a", task_id="t"),
            lambda: services.operation_cancel(operation_id=pk),
        )
        row = Operation.objects.get(pk=pk)
        if lease is None:
            # The cancel won: the row was cancelled before anyone ran it.
            assert cancel is CancelOutcome.CANCELLED and row.status == "cancelled"
        else:
            # The claim won: the cancel became a request to the running handler.
            assert cancel is CancelOutcome.REQUESTED
            assert row.status == "processing" and row.cancel_requested_at is not None
        outcomes.add(lease is None)
    # Over many rounds both sides should have won at least once; if not, the
    # race was never really run concurrently.
    assert outcomes == {True, False}


def test_cancel_against_complete(alpha: Any) -> None:
    for _ in range(ROUNDS):
        pk = submit()
        lease = services.operation_claim(operation_id=pk, worker="a", task_id="t")
        assert lease is not None
        services.operation_cancel(operation_id=pk)  # a request: it is processing
        completed, confirmed = race(
            lambda: services.operation_complete(lease=lease, result={}),
            lambda: services.operation_confirm_cancel(lease=lease),
        )
        assert completed != confirmed
        assert Operation.objects.get(pk=pk).status == ("completed" if completed else "cancelled")


def test_concurrent_duplicate_submits_make_one_row(alpha: Any) -> None:
    for _ in range(ROUNDS // 3):
        submissions = race(
            *[
                lambda: services.operation_submit(bank_id="alpha", operation_type="test_dedupe")
                for _ in range(6)
            ]
        )
        ids = {s.operation.pk for s in submissions}
        assert len(ids) == 1
        assert sum(not s.deduplicated for s in submissions) == 1
        assert Operation.objects.filter(status="pending", operation_type="test_dedupe").count() == 1
        services.operations_cancel_pending(bank_id="alpha")


def test_concurrent_claims_of_one_serialization_key(alpha: Any) -> None:
    for _ in range(ROUNDS):
        first, second = submit("test_serial"), submit("test_serial")
        leases = race(
            lambda: services.operation_claim(operation_id=first, worker="a", task_id="t"),
            lambda: services.operation_claim(operation_id=second, worker="b", task_id="t"),
        )
        assert sum(lease is not None for lease in leases) == 1
        assert Operation.objects.filter(serial_key="test_serial:alpha", status="processing").count() == 1
        assert Operation.objects.filter(serial_key="test_serial:alpha", status="pending").count() == 1
        Operation.objects.all().delete()
