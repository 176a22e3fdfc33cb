"""Pausing a type's dispatch with real workers: its messages already in the
broker are dropped at the claim, its operations wait pending while other
types run, and resuming publishes them again, each run once."""

from __future__ import annotations

from typing import Any

import pytest

from operations import lifecycle
from operations.models import Operation
from tests.conftest import wait_for

pytestmark = [pytest.mark.workers, pytest.mark.embedded]


def test_a_paused_type_waits_while_others_run_and_resumes(start_workers: Any, alpha: Any) -> None:
    workers = start_workers(ready=2, OPS_WORKER_MAX_SLOTS="2")
    assert lifecycle.dispatch_pause(operation_type="test_echo", by="test")
    assert not lifecycle.dispatch_pause(operation_type="test_echo", by="test")  # once
    held = [
        lifecycle.operation_submit(bank_id="alpha", operation_type="test_echo", payload={"value": n}).operation.pk
        for n in range(3)
    ]
    other = lifecycle.operation_submit(bank_id="alpha", operation_type="test_sleep", payload={"seconds": 0.05})
    wait_for(lambda: Operation.objects.get(pk=other.operation.pk).status == "completed", message="the other type")
    # Their messages reached the workers and were dropped by the claim.
    wait_for(lambda: workers.output().count("'dropped'") >= 3, message="the paused type's messages dropped")
    assert set(Operation.objects.filter(pk__in=held).values_list("status", flat=True)) == {"pending"}

    assert lifecycle.dispatch_resume(operation_type="test_echo")
    assert not lifecycle.dispatch_resume(operation_type="test_echo")
    wait_for(
        lambda: set(Operation.objects.filter(pk__in=held).values_list("status", flat=True)) == {"completed"},
        message="the resumed type's operations",
    )
    assert sorted(Operation.objects.get(pk=pk).result_metadata["echo"] for pk in held) == [0, 1, 2]
    assert set(Operation.objects.filter(pk__in=held).values_list("retry_count", flat=True)) == {0}
