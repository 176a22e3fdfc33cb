"""The memory domain through real workers: a 1,000-item async batch,
serialized retains of one document, one consolidation running per bank,
scheduled refreshes under two beats, consolidation after a delete, scoped
consolidation."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from banks.memory import RetainItem, retain_items
from banks.models import Document, MemoryUnit, Observation
from operations import lifecycle
from operations.models import Operation
from tenancy.models import Bank
from tests.conftest import PROJECT_DIR, wait_for

pytestmark = [pytest.mark.workers, pytest.mark.embedded]

FAST = {"OPS_SWEEP_INTERVAL_SECONDS": "0.5", "OPS_LEASE_SECONDS": "10", "OPS_HEARTBEAT_SECONDS": "1"}


def test_async_batch_of_a_thousand_items(start_workers: Any, admin: Any, alpha: Any) -> None:
    start_workers(ready=2, beat=True, OPS_WORKER_MAX_SLOTS="3", **FAST)
    items = [
        {
            "content": f"Sensor {i % 37} reported reading {i}. Technician Dana Scully checked unit {i}.",
            "document_id": f"reading-{i}",
        }
        for i in range(1000)
    ]
    response = admin.post("banks/alpha/memories", {"items": items, "async": True})
    assert response.status_code == 200
    parent_id = response.json()["operation_id"]
    parent = wait_for(
        lambda: (p := Operation.objects.get(pk=parent_id)).status in ("completed", "failed", "cancelled") and p,
        timeout=600,
        interval=1,
        message="the batch to finish",
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
    wait_for(
        lambda: set(Operation.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"completed"},
        timeout=180,
        interval=0.5,
        message="both retains",
    )
    first, second = sorted(Operation.objects.filter(pk__in=ids), key=lambda o: o.started_at)
    assert second.started_at >= first.completed_at
    assert first.serial_key == second.serial_key == "retain:alpha:shared"
    # One document, holding exactly the last version's units.
    units = MemoryUnit.objects.filter(document__document_id="shared")
    assert units.count() == 301
    last = second.task_payload["items"][0]["content"].split(".")[0]
    assert units.filter(text=f"{last}.").exists()


def test_never_two_consolidations_running_in_one_bank(start_workers: Any, alpha: Any, tmp_path: Any) -> None:
    bank = Bank.objects.get(pk="alpha")
    retain_items(
        bank=bank,
        items=[RetainItem(content=f"Agent Number{i} met Agent Number{i + 1}.") for i in range(400)],
        default_document_id=lambda i: f"d{i}",
    )
    # Two reserved consolidation slots: serialization, not capacity, keeps them apart.
    start_workers(ready=3, beat=True, OPS_WORKER_MAX_SLOTS="3", OPS_WORKER_CONSOLIDATION_RESERVED_SLOTS="2", **FAST)
    first = lifecycle.operation_submit(bank_id="alpha", operation_type="consolidation").operation
    wait_for(lambda: Operation.objects.get(pk=first.pk).status != "pending", timeout=30, message="first to start")
    second = lifecycle.operation_submit(bank_id="alpha", operation_type="consolidation")
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


@contextmanager
def another_beat(env: dict[str, str], directory: Path) -> Iterator[Path]:
    """A second `celery beat`, as a second scheduler host would run one: its
    own schedule file, the same broker and database. Yields its log."""
    log_path = directory / "second-beat.log"
    with open(log_path, "wb") as log:
        beat = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "opsproject",
                "beat",
                "--loglevel",
                "INFO",
                "--schedule",
                str(directory / "second.beat"),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=PROJECT_DIR,
        )
        try:
            yield log_path
        finally:
            beat.send_signal(signal.SIGTERM)
            try:
                beat.wait(timeout=20)
            except subprocess.TimeoutExpired:
                beat.kill()
                beat.wait()


def test_a_schedule_fires_once_per_period_across_two_beats(
    start_workers: Any, admin: Any, alpha: Any, tmp_path: Path
) -> None:
    # DEBUG: beat's "Sending due task" lines, the proof that both beats tick,
    # are routine lines hidden at INFO.
    workers = start_workers(ready=2, beat=True, OPS_WORKER_MAX_SLOTS="2", OPS_LOG_LEVEL="DEBUG", **FAST)
    retain_items(
        bank=Bank.objects.get(pk="alpha"),
        items=[RetainItem(content="The pump was serviced.")],
        default_document_id=lambda i: "pump",
    )
    with another_beat(workers.env, tmp_path) as second_log:
        created = admin.post(
            "banks/alpha/mental-models",
            {
                "name": "Pumps",
                "source_query": "pump",
                "trigger": {"refresh_interval_seconds": 2},
            },
        )
        assert created.status_code == 200, created.content
        model_id = created.json()["id"]
        scheduled = Operation.objects.filter(mental_model_id=model_id, task_payload__has_key="scheduled_for")
        wait_for(
            lambda: scheduled.filter(status="completed").count() >= 4,
            timeout=120,
            interval=0.5,
            message="four scheduled refreshes",
        )
        stopped = admin.patch(f"banks/alpha/mental-models/{model_id}", {"trigger": {"refresh_interval_seconds": None}})
        assert stopped.json()["next_refresh_at"] is None
        second_output = second_log.read_text(errors="replace")

    task = "Sending due task refresh_scheduled_mental_models"
    assert task in workers.output() and task in second_output  # both beats were ticking
    runs = [datetime.fromisoformat(o.task_payload["scheduled_for"]) for o in scheduled.order_by("created_at")]
    assert len(runs) >= 4
    # One refresh per run, and every run on the 2-second grid from the first: once per period.
    assert runs == sorted(set(runs))
    assert all((run - runs[0]).total_seconds() % 2 == 0 for run in runs)
    # Each run was claimed once across both beats' ticks (deduplicated submissions included).
    claims = Counter(re.findall(rf"scheduled refresh of mental model {model_id} due (\S+):", workers.output()))
    assert claims and set(claims.values()) == {1}
    assert {datetime.fromisoformat(due) for due in claims} >= set(runs)
    assert set(scheduled.values_list("status", flat=True)) == {"completed"}


def test_a_document_delete_leaves_no_observation_citing_its_units(start_workers: Any, admin: Any, alpha: Any) -> None:
    Bank.objects.filter(pk="alpha").update(enable_auto_consolidation=True)
    start_workers(ready=2, beat=True, OPS_WORKER_MAX_SLOTS="3", **FAST)
    items = [
        {
            "content": "Ada Lovelace translated the memoir. Charles Babbage praised Ada Lovelace.",
            "document_id": "memoir",
        },
        {"content": "Charles Babbage designed the Analytical Engine.", "document_id": "design"},
        {"content": "Luigi Menabrea described the Analytical Engine.", "document_id": "menabrea"},
    ]
    parent = admin.post("banks/alpha/memories", {"items": items, "async": True}).json()["operation_id"]

    def settled() -> bool:
        open_ = Operation.objects.exclude(status__in=["completed", "failed", "cancelled"])
        return Operation.objects.get(pk=parent).status == "completed" and not open_.exists()

    wait_for(settled, timeout=120, interval=0.2, message="the retain and its consolidation")
    assert Observation.objects.filter(entity__name="ada lovelace").exists()
    doomed = set(MemoryUnit.objects.filter(document__document_id="memoir").values_list("pk", flat=True))
    doomed_texts = set(MemoryUnit.objects.filter(pk__in=doomed).values_list("text", flat=True))
    assert Observation.objects.filter(sources__in=doomed).exists()

    deleted = admin.delete("banks/alpha/documents/memoir").json()
    consolidation = deleted["consolidation_operation_id"]
    assert consolidation is not None
    done = wait_for(
        lambda: (o := Operation.objects.get(pk=consolidation)).status in ("completed", "failed") and o,
        timeout=120,
        interval=0.2,
        message="the follow-up consolidation",
    )
    assert done.status == "completed", done.error_message
    assert done.result_metadata["stale_observations"] == 2  # Ada Lovelace and Charles Babbage
    assert not Observation.objects.filter(needs_rebuild=True).exists()
    assert not Observation.objects.filter(entity__name="ada lovelace").exists()  # no unit of hers survives
    for observation in Observation.objects.all():
        assert not any(text in observation.text for text in doomed_texts), observation.text
        assert set(observation.sources.values_list("pk", flat=True)) <= set(
            MemoryUnit.objects.values_list("pk", flat=True)
        )
    babbage = Observation.objects.get(entity__name="charles babbage")
    assert babbage.text == "Charles Babbage: Charles Babbage designed the Analytical Engine."


def test_scoped_consolidation_leaves_other_units_unconsolidated(start_workers: Any, admin: Any, alpha: Any) -> None:
    start_workers(ready=2, beat=True, OPS_WORKER_MAX_SLOTS="3", **FAST)
    items = [
        {"content": "Rover Spirit drilled rock.", "tags": ["mars", "rover"], "document_id": "spirit"},
        {"content": "Rover Sojourner rolled.", "tags": ["rover"], "document_id": "sojourner"},
        {"content": "Orbiter Odyssey mapped ice.", "tags": ["mars"], "document_id": "odyssey"},
        {"content": "Lander Phoenix dug ice.", "tags": ["mars", "lander"], "document_id": "phoenix"},
        {"content": "Probe Voyager left.", "document_id": "voyager"},
    ]
    assert admin.post("banks/alpha/memories", {"items": items}).status_code == 200
    response = admin.post("banks/alpha/consolidate", {"observation_scopes": [["rover", "mars"], ["lander"]]})
    assert response.status_code == 200
    done = wait_for(
        lambda: (
            (o := Operation.objects.get(pk=response.json()["operation_id"])).status in ("completed", "failed") and o
        ),
        timeout=120,
        interval=0.2,
        message="the scoped consolidation",
    )
    assert done.status == "completed", done.error_message
    consolidated = set(MemoryUnit.objects.filter(consolidated=True).values_list("document__document_id", flat=True))
    assert consolidated == {"spirit", "phoenix"}
    assert set(Observation.objects.values_list("entity__name", flat=True)) == {"rover spirit", "lander phoenix"}
