"""Flower, the Celery-native view, against the platform's real workers:
`celery -A opsproject flower` sees the operations' Celery tasks run (with
OPS_TASK_EVENTS on, as docs/consoles.md says), a failed operation as a failed task."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from operations import lifecycle
from operations.models import Operation
from tests.conftest import PROJECT_DIR, free_port, wait_for, worker_environment

pytestmark = pytest.mark.workers


@pytest.fixture
def flower(transactional_db: None, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = open(tmp_path / "flower.log", "wb")
    env = worker_environment(FLOWER_UNAUTHENTICATED_API="true")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "opsproject",
            "flower",
            "--address=127.0.0.1",
            f"--port={port}",
            f"--db={tmp_path / 'flower.db'}",
        ],
        cwd=PROJECT_DIR,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if process.poll() is not None:
            pytest.fail(f"flower exited:\n{(tmp_path / 'flower.log').read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/healthcheck", timeout=2).text == "OK"
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, timeout=60, message="flower to answer")
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_flower_sees_the_platforms_tasks(flower: str, start_workers: Any, alpha: Any) -> None:
    start_workers(ready=2, OPS_WORKER_MAX_SLOTS="2", OPS_TASK_EVENTS="true")
    operation = lifecycle.operation_submit(
        bank_id="alpha", operation_type="test_echo", payload={"value": "seen by flower"}
    ).operation
    wait_for(lambda: Operation.objects.get(pk=operation.pk).status == "completed", message="the echo to run")

    def flower_task() -> dict[str, Any] | None:
        tasks = httpx.get(f"{flower}/api/tasks", params={"taskname": "ops.test_echo"}, timeout=5).json()
        for task in tasks.values():
            if str(operation.pk) in str(task.get("args")) and task.get("state") == "SUCCESS":
                return dict(task)
        return None

    task = wait_for(flower_task, timeout=30, message="flower to report the task")
    assert task["name"] == "ops.test_echo"
    assert task["worker"] == "shared@testnode"
    assert task["uuid"] == Operation.objects.get(pk=operation.pk).task_id

    # An operation that fails is a failed task, saying which operation and where its error is.
    failing = lifecycle.operation_submit(
        bank_id="alpha", operation_type="test_flaky", payload={"permanent": True}
    ).operation
    wait_for(lambda: Operation.objects.get(pk=failing.pk).status == "failed", message="the operation to fail")

    def failed_task() -> dict[str, Any] | None:
        tasks = httpx.get(f"{flower}/api/tasks", params={"taskname": "ops.test_flaky"}, timeout=5).json()
        return next(
            (
                dict(t)
                for t in tasks.values()
                if str(failing.pk) in str(t.get("args")) and t.get("state") in ("FAILURE", "SUCCESS")
            ),
            None,
        )

    failed = wait_for(failed_task, timeout=30, message="flower to report the failed task")
    assert failed["state"] == "FAILURE", failed
    assert f"operation {failing.pk} failed" in str(failed.get("exception")), failed
