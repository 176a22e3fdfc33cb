"""Compatibility, proven by Hindsight's own TypeScript client
(@vectorize-io/hindsight-client 0.9.1, from npm): the flows of Hindsight's
"Operations" documentation page (tests/ts_client/flows.mjs), reading the list
as its examples do (`response.data.items`), against the served platform and
real workers."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from operations.models import Operation
from tenancy.api_keys import api_key_create
from tests.conftest import PROJECT_DIR
from tests.consoles import make

pytestmark = [pytest.mark.workers, pytest.mark.embedded]

PACKAGE = "@vectorize-io/hindsight-client@0.9.1"
# Installed once per machine, outside the checkout.
INSTALL_DIR = Path("/tmp/ops-test-hindsight-ts-client-0.9.1")


@pytest.fixture(scope="session")
def ts_client() -> Path:
    """A folder holding the client (npm) and the flows script."""
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("Node.js and npm are needed for Hindsight's TypeScript client")
    if not (INSTALL_DIR / "node_modules" / "@vectorize-io" / "hindsight-client" / "package.json").exists():
        INSTALL_DIR.mkdir(parents=True, exist_ok=True)
        (INSTALL_DIR / "package.json").write_text('{"private": true, "type": "module"}\n')
        done = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent", PACKAGE],
            cwd=INSTALL_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"npm install {PACKAGE} failed:\n{done.stderr[-2000:]}"
    shutil.copy(PROJECT_DIR / "tests" / "ts_client" / "flows.mjs", INSTALL_DIR / "flows.mjs")
    return INSTALL_DIR


def node(ts_client: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run(["node", "flows.mjs", *args], cwd=ts_client, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_the_typescript_client_runs_the_operations_page(
    ts_client: Path, live_server: Any, start_workers: Any, alpha: Any
) -> None:
    finished = make(status="failed")
    others = [make() for _ in range(2)]  # pending: the page cancels them with the client's own
    key = api_key_create(name="ts-client", admin=True)[1]

    # No worker yet: what the client submits stays pending until it is cancelled.
    seen = node(ts_client, live_server.url, key, "alpha", "submit", str(finished.pk))
    batch = seen["queued"]["operationId"]
    assert seen["queued"]["async"] is True and seen["queued"]["itemsCount"] == 2
    assert set(seen["pendingIds"]) >= {batch, *(str(o.pk) for o in others)}
    assert {Operation.objects.get(pk=o.pk).status for o in others} == {"cancelled"}
    assert seen["afterCancel"] == "cancelled" and seen["retried"] == "pending"
    assert seen["deleted"] is True and seen["goneStatus"] == 404
    assert not Operation.objects.filter(pk=finished.pk).exists()
    assert seen["itemsMatchOperations"] is True
    listed = Operation.objects.filter(bank_id="alpha").order_by("-created_at", "-id")[:20]
    assert seen["items"] == [[str(o.pk), o.status] for o in listed]
    assert seen["badKey"] == 401

    # Workers on: the retried retain runs, polled by the client until done.
    start_workers(ready=2, OPS_WORKER_MAX_SLOTS="2")
    assert node(ts_client, live_server.url, key, "alpha", "poll", batch)["finalStatus"] == "completed"
