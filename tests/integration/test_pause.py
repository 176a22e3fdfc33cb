"""Pausing a type's dispatch with real workers: its messages already in the
broker are dropped at the claim, its operations wait pending while other
types run, and resuming publishes them again, each run once."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from operations import lifecycle
from operations.models import ConsoleAction, Operation
from tests.conftest import wait_for
from tests.consoles import staff_user

PAUSE = "/admin/dashboard/actions/pause/"
RESUME = "/admin/dashboard/actions/resume/"

pytestmark = [pytest.mark.workers, pytest.mark.embedded]


def test_a_paused_type_waits_while_others_run_and_resumes(start_workers: Any, alpha: Any, client: Client) -> None:
    workers = start_workers(ready=2, OPS_WORKER_MAX_SLOTS="2")
    client.force_login(staff_user("operator", "operations.view_operation", "operations.pause_dispatch"))
    assert client.post(PAUSE, {"operation_type": "test_echo"}).status_code == 302
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

    assert client.post(RESUME, {"operation_type": "test_echo"}).status_code == 302
    assert not lifecycle.dispatch_resume(operation_type="test_echo")
    wait_for(
        lambda: set(Operation.objects.filter(pk__in=held).values_list("status", flat=True)) == {"completed"},
        message="the resumed type's operations",
    )
    assert sorted(Operation.objects.get(pk=pk).result_metadata["echo"] for pk in held) == [0, 1, 2]
    assert set(Operation.objects.filter(pk__in=held).values_list("retry_count", flat=True)) == {0}
    assert [(a.action, a.count) for a in ConsoleAction.objects.order_by("at")] == [("pause", 1), ("resume", 1)]
