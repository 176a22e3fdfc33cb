"""The benchmark harness's own plumbing (`make bench`): its table and
results file, its argument checks, and that it leaves no process behind.
Nothing here times anything."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from bench.__main__ import parse_args
from bench.procs import Processes, wait_until
from bench.report import Figure, markdown_table, percentile, results_document, write_results


def test_table_and_results_file(tmp_path: Path) -> None:
    figures = [
        Figure(
            key="a",
            label="no-ops",
            platform="500/s",
            reference="bare: 800/s",
            ratio="0.62x",
            target="≥ 0.5x",
            holds=True,
            values={"platform": 500.0},
        ),
        Figure(key="b", label="pages", platform="p50 12.0 ms", target="p50 ≤ 5 ms", holds=False),
        Figure(key="c", label="untargeted", platform="1 ms"),
    ]
    table = markdown_table(figures).splitlines()
    assert table[0].startswith("| figure | platform | reference | ratio | target |")
    assert table[2] == "| no-ops | 500/s | bare: 800/s | 0.62x | ≥ 0.5x | holds |"
    assert table[3].endswith("| p50 ≤ 5 ms | misses |")
    assert table[4].endswith("|  |  |  |  |")

    path = tmp_path / "results" / "latest.json"
    document = results_document(
        figures=figures,
        machine_info={"cores": 2},
        options={"quick": "True"},
        started_at="then",
        seconds=61.25,
        embedded=None,
        notes=["a note"],
    )
    write_results(path, document)
    written = json.loads(path.read_text())
    assert written["machine"] == {"cores": 2}
    assert written["seconds"] == 61.2
    assert [f["key"] for f in written["figures"]] == ["a", "b", "c"]
    assert written["figures"][0]["values"] == {"platform": 500.0}
    assert not list(path.parent.glob("*.partial"))


def test_percentiles() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)
    with pytest.raises(ValueError):
        percentile([], 50)


@pytest.mark.parametrize("option", ["--broker-url", "--reference-broker-url"])
def test_refuses_redis_database_zero(option: str, capsys: pytest.CaptureFixture[str]) -> None:
    # The benchmark empties its Redis databases: never db 0, never a shared one.
    with pytest.raises(SystemExit):
        parse_args([option, "redis://127.0.0.1:6379/0"])
    assert "other than 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--broker-url", "redis://127.0.0.1:6379/9", "--reference-broker-url", "redis://127.0.0.1:6379/9"])


def test_the_scale_options(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_args(["--scale", "--scale-sizes", "1e6,1e8", "--scale-reuse"])
    assert (args.scale_sizes, args.scale_reuse, args.database_url.rsplit("/", 1)[1]) == (
        [10**6, 10**8],
        True,
        "ops_scale",
    )
    with pytest.raises(SystemExit):
        parse_args(["--scale-reuse"])  # reusing what, without --scale?
    assert "--scale-reuse goes with --scale" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--scale", "--scale-sizes", "1e6,many"])
    assert "must be numbers" in capsys.readouterr().err


def test_the_scale_table_sets_each_figure_beside_the_first_sizes() -> None:
    from bench.scale import table

    shown = table(
        [
            {"operations": 10**6, "claim": 0.5, "rows pruned": 231_000, "database size (GB)": 0.4},
            {"operations": 10**7, "claim": 0.6, "rows pruned": 2_310_000, "database size (GB)": 3.4},
        ]
    ).splitlines()
    assert shown[0] == "| measure | 1,000,000 | 10,000,000 |"
    assert "| claim | 0.5 ms | 0.6 ms (1.20x) |" in shown
    assert "| rows pruned | 231,000 | 2,310,000 |" in shown
    assert "| database size (GB) | 0.4 | 3.4 |" in shown


def test_stops_whole_process_groups(tmp_path: Path) -> None:
    # A child that starts a grandchild and ignores SIGTERM: both must be gone.
    script = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        "print(child.pid, flush=True); time.sleep(600)"
    )
    with Processes(tmp_path) as procs:
        leader = procs.start("stubborn", [sys.executable, "-c", script], dict(os.environ))
        log = tmp_path / "stubborn.log"
        wait_until(lambda: log.read_text().strip(), timeout=30, what="the grandchild's pid")
        grandchild = int(log.read_text().split()[0])
        procs.stop(leader, timeout=0.5)
    assert leader.poll() is not None
    wait_until(lambda: not alive(grandchild), timeout=30, what="the grandchild to die")


def alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_task_events_results_beside_the_full_runs() -> None:
    assert parse_args([]).output.name == "latest.json"
    assert parse_args(["--task-events"]).output.name == "task-events.json"
