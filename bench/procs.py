"""The benchmark's child processes: each in a process group of its own, so
stopping one stops everything it started (Celery's pool processes, gunicorn's
workers), and every group is stopped when the benchmark ends — on success,
on failure, on Ctrl-C and on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, Self


class Stopped(Exception):
    """The benchmark was asked to stop (SIGTERM)."""


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(f"signal {signum}")


def stop_on_sigterm() -> None:
    """Turn SIGTERM into an exception, so `finally` blocks stop the children
    exactly as on Ctrl-C (Python's default for SIGTERM runs no cleanup)."""
    signal.signal(signal.SIGTERM, _raise_stopped)


def wait_until(predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll `predicate` until it is true; raises TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark: timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class Processes:
    """Start children in new sessions with their output in `log_dir`; stop
    them (the whole group) one by one or all at once."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._running: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    def start(
        self, name: str, argv: list[str], env: dict[str, str], cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Open for the child's lifetime; closed by `stop`.
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._running.append((process, log))
        return process

    def log_of(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 40) -> None:
        terminate(process, timeout=timeout)
        for index, (running, log) in enumerate(self._running):
            if running is process:
                log.close()
                del self._running[index]
                break

    def stop_all(self) -> None:
        # Newest first: a web server or bare worker before the nodes it talks to.
        while self._running:
            self.stop(self._running[-1][0])

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        # A second Ctrl-C during cleanup must not leave groups behind.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.stop_all()
        finally:
            signal.signal(signal.SIGINT, previous)


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_by(groups: dict[str, Callable[[list[int], str], bool]]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the live processes of each
    group; a group is a test on (the process's lineage: its pid, its parent's,
    and so on up; its command name). Lineage, not process group: runworkers
    starts each Celery worker in a session of its own. Where the time per
    operation goes is the difference of two calls around a run."""
    processes: dict[int, tuple[int, str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        processes[int(entry.name)] = (int(fields[1]), name, (int(fields[11]) + int(fields[12])) / _TICKS)
    totals = dict.fromkeys(groups, 0.0)
    for pid, (parent, name, seconds) in processes.items():
        lineage = [pid]
        while parent in processes and parent not in lineage:
            lineage.append(parent)
            parent = processes[parent][0]
        for label, belongs in groups.items():
            if belongs(lineage, name):
                totals[label] += seconds
    return totals


def terminate(process: subprocess.Popen[bytes], *, timeout: float) -> None:
    """SIGTERM to the leader of a process group it started (runworkers, beat
    and gunicorn stop their own children in order), then SIGKILL to whatever
    of the group is left, stopped in time or not."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # stragglers of the group, if any
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
