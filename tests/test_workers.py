"""Real worker processes started by `runworkers` run operations end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from operations import services
from operations.models import Operation
from tests.conftest import wait_for

pytestmark = pytest.mark.workers


def statuses(ids: list[Any]) -> list[str]:
    return [Operation.objects.get(pk=pk).status for pk in ids]


def test_workers_complete_operations_of_two_types(start_workers: Any, alpha: Any) -> None:
    start_workers(ready=2, OPS_WORKER_MAX_SLOTS="2")
    echoes = [
        services.operation_submit(bank_id="alpha", operation_type="test_echo", payload={"value": i})
        for i in range(5)
    ]
    sleeps = [
        services.operation_submit(bank_id="alpha", operation_type="test_sleep", payload={"seconds": 0.1})
        for _ in range(3)
    ]
    ids = [s.operation.pk for s in echoes + sleeps]
    wait_for(lambda: set(statuses(ids)) == {"completed"}, message="every operation to complete")
    first = Operation.objects.get(pk=echoes[0].operation.pk)
    assert first.result_metadata["echo"] == 0
    assert first.result_metadata["worker"] == "shared@testnode"
    assert first.progress["stage"] == "echo"
    assert first.started_at is not None and first.completed_at >= first.started_at


def test_reserved_type_runs_while_shared_pool_is_saturated(
    start_workers: Any, alpha: Any, tmp_path: Path
) -> None:
    start_workers(
        ready=3, OPS_WORKER_MAX_SLOTS="2", OPS_WORKER_TEST_RESERVED_RESERVED_SLOTS="1"
    )
    log = str(tmp_path / "runs.jsonl")
    # One shared slot: a long sleeper holds it, more wait behind it.
    sleepers = [
        services.operation_submit(
            bank_id="alpha", operation_type="test_sleep", payload={"seconds": 20, "log": log}
        ).operation.pk
        for _ in range(2)
    ]
    wait_for(lambda: "processing" in statuses(sleepers), message="a sleeper to start")
    # The workers report themselves: each node of the plan, and what it runs.
    from operations.nodes import live_nodes

    nodes = {n["name"]: n for n in wait_for(lambda: len(live_nodes()) == 3 and live_nodes(), message="nodes")}
    assert set(nodes) == {"shared@testnode", "test_reserved@testnode", "system@testnode"}
    assert nodes["test_reserved@testnode"]["queues"] == ["ops.test_reserved"]
    assert nodes["shared@testnode"]["concurrency"] == 1 and nodes["shared@testnode"]["busy"] == 1
    assert nodes["shared@testnode"]["running"][0]["operation_type"] == "test_sleep"
    reserved = services.operation_submit(
        bank_id="alpha", operation_type="test_reserved", payload={"log": log}
    ).operation.pk
    wait_for(lambda: statuses([reserved]) == ["completed"], timeout=15, message="the reserved type")
    assert Operation.objects.get(pk=reserved).worker == "test_reserved@testnode"
    # The shared pool was still busy the whole time.
    assert sorted(statuses(sleepers)) == ["pending", "processing"]
    runs = [json.loads(line) for line in Path(log).read_text().splitlines()]
    assert {r["worker"] for r in runs if r["op"] == str(reserved)} == {"test_reserved@testnode"}
    for pk in sleepers:
        services.operation_cancel(operation_id=pk)
    wait_for(lambda: set(statuses(sleepers)) == {"cancelled"}, message="sleepers cancelled")
