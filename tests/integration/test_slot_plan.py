"""The slot plan's arithmetic, its refusals, and `runworkers --print-plan`."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from operations import registry
from operations.slots import SlotPlanError, build_plan
from tests.conftest import PROJECT_DIR

TYPES = [
    registry.OperationType(name="retain", handler="x.y"),
    registry.OperationType(name="consolidation", handler="x.y"),
    registry.OperationType(name="webhook_delivery", handler="x.y"),
    registry.OperationType(name="retain_batch", rollup=True),
]


def test_reservations_and_shared_pool() -> None:
    plan = build_plan(max_slots=10, reserved={"consolidation": 2, "retain": 0}, types=TYPES)
    assert plan.reserved == {"consolidation": 2}
    assert plan.shared == 8
    assert [w.as_dict() for w in plan.workers] == [
        {"name": "consolidation", "queues": ["ops.consolidation"], "concurrency": 2},
        {
            "name": "shared",
            # Every runnable type, reserved or not: a reserved type overflows here.
            "queues": ["ops.consolidation", "ops.retain", "ops.webhook_delivery"],
            "concurrency": 8,
        },
    ]
    assert sum(w.concurrency for w in plan.workers) == plan.max_slots


def test_several_reservations() -> None:
    plan = build_plan(max_slots=5, reserved={"consolidation": 2, "retain": 2}, types=TYPES)
    assert plan.shared == 1
    assert [(w.name, w.concurrency) for w in plan.workers] == [
        ("consolidation", 2),
        ("retain", 2),
        ("shared", 1),
    ]


def test_reservations_above_the_total_are_refused() -> None:
    with pytest.raises(SlotPlanError, match=r"reserved slots \(12: consolidation=4, retain=8\) exceed"):
        build_plan(max_slots=10, reserved={"consolidation": 4, "retain": 8}, types=TYPES)


def test_a_plan_that_starves_unreserved_types_is_refused() -> None:
    with pytest.raises(SlotPlanError, match="leaving none for webhook_delivery"):
        build_plan(max_slots=4, reserved={"consolidation": 2, "retain": 2}, types=TYPES)
    every = {"consolidation": 1, "retain": 1, "webhook_delivery": 1}
    assert build_plan(max_slots=3, reserved=every, types=TYPES).shared == 0


def test_reservation_for_an_unknown_type_is_refused() -> None:
    with pytest.raises(SlotPlanError, match="unknown operation types: nope"):
        build_plan(max_slots=4, reserved={"nope": 1}, types=TYPES)


def run_manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, str(PROJECT_DIR / "manage.py"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_print_plan_reads_the_environment() -> None:
    done = run_manage(
        "runworkers",
        "--print-plan",
        OPS_WORKER_MAX_SLOTS="6",
        OPS_WORKER_TEST_SLEEP_RESERVED_SLOTS="2",
    )
    assert done.returncode == 0, done.stderr
    plan: dict[str, Any] = json.loads(done.stdout)
    assert plan["max_slots"] == 6 and plan["reserved"]["test_sleep"] == 2 and plan["shared"] == 4
    names = {w["name"]: w for w in plan["workers"]}
    assert names["test_sleep"] == {"name": "test_sleep", "queues": ["ops.test_sleep"], "concurrency": 2}
    assert "ops.test_sleep" in names["shared"]["queues"] and names["shared"]["concurrency"] == 4


def test_over_reserved_plan_does_not_start() -> None:
    done = run_manage("runworkers", OPS_WORKER_MAX_SLOTS="3", OPS_WORKER_TEST_SLEEP_RESERVED_SLOTS="5")
    assert done.returncode != 0
    assert "reserved slots (5: test_sleep=5) exceed OPS_WORKER_MAX_SLOTS (3)" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("OPS_WORKER_MAX_SLOTS", "ten", "OPS_WORKER_MAX_SLOTS='ten' is not an integer"),
        ("OPS_WORKER_MAX_SLOTS", "0", "OPS_WORKER_MAX_SLOTS=0 must be at least 1"),
        ("DJANGO_DEBUG", "maybe", "DJANGO_DEBUG='maybe' is not a boolean"),
        ("OPS_LEASE_SECONDS", "soon", "OPS_LEASE_SECONDS='soon' is not a number"),
        ("OPS_WORKER_TEST_SLEEP_RESERVED_SLOTS", "-1", "OPS_WORKER_TEST_SLEEP_RESERVED_SLOTS=-1 must be at least 0"),
    ],
)
def test_malformed_settings_stop_start_up_naming_the_variable(variable: str, value: str, message: str) -> None:
    done = run_manage("runworkers", "--print-plan", **{variable: value})
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_visibility_timeout_must_outlast_the_longest_run() -> None:
    done = run_manage("runworkers", "--print-plan", OPS_BROKER_VISIBILITY_TIMEOUT="60")
    assert done.returncode != 0
    assert "OPS_BROKER_VISIBILITY_TIMEOUT (60s) must be longer than the longest hard time limit" in done.stderr


def test_default_plan_reserves_two_consolidation_slots() -> None:
    done = run_manage("runworkers", "--print-plan", OPS_WORKER_CONSOLIDATION_RESERVED_SLOTS="")
    plan: dict[str, Any] = json.loads(done.stdout)
    assert plan["max_slots"] == 10 and plan["reserved"] == {"consolidation": 2} and plan["shared"] == 8
    assert plan["workers"][0] == {"name": "consolidation", "queues": ["ops.consolidation"], "concurrency": 2}
    assert "ops.retain" in plan["workers"][1]["queues"] and "ops.retain_batch" not in plan["workers"][1]["queues"]
