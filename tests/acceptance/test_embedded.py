"""The embedded default end to end: `runplatform` with no DATABASE_URL and no
CELERY_BROKER_URL, in an empty directory, runs an operation to completion."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import PROJECT_DIR, wait_for

pytestmark = pytest.mark.workers

MANAGE = str(PROJECT_DIR / "manage.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def embedded_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SECRET_KEY", "OPS_DATA_DIR")
        and not k.startswith("OPS_WORKER_")
    }
    env.update(PYTHONPATH=str(PROJECT_DIR), OPS_OPERATION_TYPE_MODULES="tests.optypes", **extra)
    return env


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def run_readme_tour(directory: Path, port: int) -> None:
    """The README's five-minute tour, its block run as written in the
    platform's directory (only the port is this test's)."""
    block = re.search(r"## A five-minute tour.*?```bash\n(.*?)```", (PROJECT_DIR / "README.md").read_text(), re.S)
    assert block, "the README lost its tour"
    script = block.group(1).replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    venv = directory / ".venv"
    if not venv.exists():
        venv.symlink_to(Path(sys.executable).parent.parent)
    tour = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OPS_URL": f"http://127.0.0.1:{port}", "COLUMNS": "200"},
    )
    assert tour.returncode == 0, tour.stdout[-2000:] + tour.stderr[-2000:]
    # The watch ended with the retain done; the list and the short id found it.
    assert '"bank_id":"tour"' in tour.stdout.replace(" ", "")
    assert tour.stdout.count("completed") >= 3, tour.stdout[-3000:]
    assert "retain" in tour.stdout and "tour" in tour.stdout


def test_runplatform_embedded_default(tmp_path: Path) -> None:
    port = free_port()
    env = embedded_env(
        OPS_BIND=f"127.0.0.1:{port}", OPS_WORKER_MAX_SLOTS="3", OPS_LOG_LEVEL="INFO"
    )  # as a user runs it
    log_path = tmp_path / "platform.log"
    migrated = subprocess.run(
        [sys.executable, MANAGE, "migrate", "--noinput", "-v0"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert migrated.returncode == 0, migrated.stderr
    quickstart = subprocess.run(
        [sys.executable, MANAGE, "quickstart"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert quickstart.returncode == 0, quickstart.stderr
    key = quickstart.stdout.split()[-1]
    launched = time.monotonic()
    with open(log_path, "wb") as log:
        platform = subprocess.Popen(
            [sys.executable, MANAGE, "runplatform"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    output = lambda: log_path.read_text(errors="replace")  # noqa: E731
    try:
        # The default plan: consolidation keeps its 2 reserved slots, 1 is shared.
        wait_for(lambda: output().count(" ready.") >= 3, timeout=90, message="workers ready")
        wait_for(lambda: "Press Ctrl-C to stop." in output(), timeout=30, message="the banner")
        banner = output()[output().index("Platform running, embedded") :]
        assert " ready." not in banner  # printed after the workers' start-up lines, where it stays in view
        for shown in ("/v1/docs", "/admin/dashboard/", f"API key:   {key}", "Login:     admin / "):
            assert shown in banner, banner[:1000]
        database = tmp_path / "var" / "ops.sqlite3"
        assert database.exists() and (tmp_path / "var" / "broker" / "queue").is_dir()

        submitted = subprocess.run(
            [
                sys.executable,
                MANAGE,
                "shell",
                "-c",
                "from tenancy.models import Bank; Bank.objects.create(bank_id='local');"
                "from operations import lifecycle;"
                "print(lifecycle.operation_submit(bank_id='local', operation_type='test_echo',"
                " payload={'value': 42}).operation.pk)",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert submitted.returncode == 0, submitted.stderr
        operation_id = submitted.stdout.strip().splitlines()[-1].replace("-", "")

        def row() -> tuple[str, str] | None:
            with sqlite3.connect(database) as db:
                return db.execute(
                    "select status, result_metadata from operations_operation where id = ?",
                    (operation_id,),
                ).fetchone()

        _, result = wait_for(lambda: (r := row()) and r[0] == "completed" and r, timeout=30, message="completion")
        assert json.loads(result) == {"echo": 42, "worker": f"shared@{socket.gethostname()}"}
        with sqlite3.connect(database) as db:
            assert db.execute("pragma journal_mode").fetchone()[0] == "wal"

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/login/", timeout=10) as page:
            assert page.status == 200
        run_readme_tour(tmp_path, port)
        # Beat sends the sweep every OPS_SWEEP_INTERVAL_SECONDS (5 s): give it
        # two of them, so that its routine lines would be in the log by now.
        time.sleep(max(0.0, 11 - (time.monotonic() - launched)))
    finally:
        child_pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", output())]
        platform.send_signal(signal.SIGTERM)
        code = platform.wait(timeout=90)
    assert code == 0, output()[-3000:]
    # Routine lines stay out of the way: beat's due tasks (it sent the sweep at
    # start), kombu's missing-hostname warning, whitenoise's missing folder.
    for routine in ("Sending due task", "No hostname was supplied", "No directory at"):
        assert routine not in output(), routine
    # Every child (web, runworkers, its workers, beat) stopped with it.
    assert len(child_pids) >= 5
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in child_pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in child_pids if alive(pid)]
