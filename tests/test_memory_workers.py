"""The memory domain through real workers: a 1,000-item async batch,
serialized retains of one document, one consolidation running per bank."""

from __future__ import annotations

from typing import Any

import pytest

from banks.memory import RetainItem, retain_items
from banks.models import Bank, Document, MemoryUnit
from operations import services
from operations.models import Operation
from tests.conftest import wait_for

pytestmark = pytest.mark.workers

FAST = {"OPS_SWEEP_INTERVAL_SECONDS": "0.5", "OPS_LEASE_SECONDS": "10", "OPS_HEARTBEAT_SECONDS": "1"}


def test_async_batch_of_a_thousand_items(start_workers: Any, admin: Any, alpha: Any) -> None:
    start_workers(ready=2, beat=True, OPS_WORKER_MAX_SLOTS="3", **FAST)
    items = [
        {"content": f"Sensor {i % 37} reported reading {i}. Technician Dana Scully checked unit {i}.",
         "document_id": f"reading-{i}"}
        for i in range(1000)
    ]
    response = admin.post("banks/alpha/memories", {"items": items, "async": True})
    assert response.status_code == 200
    parent_id = response.json()["operation_id"]
    parent = wait_for(
        lambda: (p := Operation.objects.get(pk=parent_id)).status in ("completed", "failed", "cancelled") and p,
        timeout=600, interval=1, message="the batch to finish",
    )
    assert parent.status == "completed", parent.error_message
    children = Operation.objects.filter(parent_id=parent_id)
    assert children.count() == 10  # OPS_RETAIN_BATCH_ITEMS = 100
    assert set(children.values_list("status", flat=True)) == {"completed"}
    assert sum(c.result_metadata["units"] for c in children) == 2000
    assert MemoryUnit.objects.filter(bank_id="alpha").count() == 2000
    assert Document.objects.filter(bank_id="alpha").count() == 1000
    assert parent.progress["processed"] == parent.progress["total"] == 10


def test_retains_of_one_document_run_one_after_another(start_workers: Any, admin: Any, alpha: Any) -> None:
    start_workers(ready=2, beat=True, OPS_WORKER_MAX_SLOTS="3", **FAST)
    # Big enough that the two would overlap if they were not serialized.
    content = " ".join(f"Fact {i} about Project Blue Book." for i in range(300))
    ids = []
    for version in range(2):
        body = {"items": [{"content": f"Version {version}. {content}", "document_id": "shared"}], "async": True}
        parent = admin.post("banks/alpha/memories", body).json()["operation_id"]
        ids.append(Operation.objects.get(parent_id=parent).pk)
    wait_for(lambda: set(Operation.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"completed"},
             timeout=180, interval=0.5, message="both retains")
    first, second = sorted(Operation.objects.filter(pk__in=ids), key=lambda o: o.started_at)
    assert second.started_at >= first.completed_at
    assert first.serial_key == second.serial_key == "retain:alpha:shared"
    # One document, holding exactly the last version's units.
    units = MemoryUnit.objects.filter(document__document_id="shared")
    assert units.count() == 301
    last = second.task_payload["items"][0]["content"].split(".")[0]
    assert units.filter(text=f"{last}.").exists()


def test_never_two_consolidations_running_in_one_bank(
    start_workers: Any, alpha: Any, tmp_path: Any
) -> None:
    bank = Bank.objects.get(pk="alpha")
    retain_items(
        bank=bank,
        items=[RetainItem(content=f"Agent Number{i} met Agent Number{i + 1}.") for i in range(400)],
        default_document_id=lambda i: f"d{i}",
    )
    # Two reserved consolidation slots: serialization, not capacity, keeps them apart.
    start_workers(ready=3, beat=True, OPS_WORKER_MAX_SLOTS="3", OPS_WORKER_CONSOLIDATION_RESERVED_SLOTS="2", **FAST)
    first = services.operation_submit(bank_id="alpha", operation_type="consolidation").operation
    wait_for(lambda: Operation.objects.get(pk=first.pk).status != "pending", timeout=30, message="first to start")
    second = services.operation_submit(bank_id="alpha", operation_type="consolidation")
    assert not second.deduplicated  # the first is no longer pending
    running_at_once = 0
    ids = [first.pk, second.operation.pk]

    def finished() -> bool:
        nonlocal running_at_once
        statuses = list(Operation.objects.filter(pk__in=ids).values_list("status", flat=True))
        running_at_once = max(running_at_once, statuses.count("processing"))
        return set(statuses) == {"completed"}

    wait_for(finished, timeout=180, interval=0.05, message="both consolidations")
    assert running_at_once == 1
    a, b = Operation.objects.get(pk=first.pk), Operation.objects.get(pk=second.operation.pk)
    assert b.started_at >= a.completed_at
    assert {a.worker, b.worker} <= {"consolidation@testnode", "shared@testnode"}
    assert not MemoryUnit.objects.filter(consolidated=False).exists()
