"""A small process supervisor for `runworkers` and `runplatform`.

Children run in their own session, so a Ctrl-C in the terminal reaches only the
supervisor, which then stops them in order: SIGTERM (Celery's warm shutdown,
gunicorn's graceful stop), then SIGKILL after the timeout. On Linux each child
also gets SIGTERM if the supervisor itself dies, so nothing is left orphaned.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from django.conf import settings

_PR_SET_PDEATHSIG = 1


def _prepare(child: Child) -> Callable[[], None]:
    """What runs in the child between fork and exec."""

    def prepare() -> None:
        _die_with_parent()
        if child.nice:
            os.nice(child.nice)

    return prepare


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux: children outlive a killed supervisor


def child_env() -> dict[str, str]:
    """The environment for children: ours, with the project importable from any
    working directory."""
    env = dict(os.environ)
    base = str(Path(settings.BASE_DIR))
    paths = [base] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != base]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("DJANGO_SETTINGS_MODULE", "opsproject.settings")
    return env


def celery_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "opsproject", *args]


class Writer(Protocol):
    """Where the supervisor's lines go: a stream, or a command's OutputWrapper."""

    def write(self, text: str, /) -> Any: ...

    def flush(self) -> Any: ...


@dataclass
class Child:
    name: str
    argv: list[str]
    restart: bool = False
    nice: int = 0  # added to the supervisor's CPU niceness (lower priority)
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    next_start_at: float = 0.0


@dataclass
class Supervisor:
    children: list[Child]
    out: Writer = field(default_factory=lambda: sys.stdout)
    stop_timeout: float = 30.0
    _stopping: bool = False

    def log(self, message: str) -> None:
        print(f"[supervisor] {message}", file=self.out, flush=True)

    def _start(self, child: Child) -> None:
        child.process = subprocess.Popen(
            child.argv,
            env=child_env(),
            start_new_session=True,
            preexec_fn=_prepare(child),  # noqa: PLW1509 (only os.nice, async-signal-safe)
        )
        child.started_at = time.monotonic()
        self.log(f"started {child.name} (pid {child.process.pid})")

    def _request_stop(self, signum: int, frame: object) -> None:
        self._stopping = True

    def run(self, on_started: Callable[[], None] | None = None) -> int:
        """Start every child and watch them until SIGTERM/SIGINT or, for a child
        that is not restarted, until it exits. Returns an exit status."""
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        status = 0
        try:
            for child in self.children:
                self._start(child)
            if on_started is not None:
                on_started()
            while not self._stopping:
                time.sleep(0.2)
                for child in self.children:
                    status = self._watch(child)
                    if status:
                        self._stopping = True
                        break
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return status

    def _watch(self, child: Child) -> int:
        now = time.monotonic()
        if child.process is None:
            if now >= child.next_start_at:
                self._start(child)
            return 0
        code = child.process.poll()
        if code is None:
            return 0
        if not child.restart:
            self.log(f"{child.name} exited with status {code}; stopping everything")
            return code or 1
        # Restart with backoff, so a child that cannot start does not spin.
        child.restarts += 1
        quick_crash = now - child.started_at < 10
        delay = min(30.0, 2 ** min(child.restarts, 5)) if quick_crash else 1.0
        self.log(f"{child.name} exited with status {code}; restarting in {delay:.0f}s")
        child.process = None
        child.next_start_at = now + delay
        return 0

    def stop(self) -> None:
        running = [c for c in self.children if c.process is not None and c.process.poll() is None]
        for child in running:
            assert child.process is not None
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log(f"{child.name} did not stop in {self.stop_timeout:.0f}s; killing it")
                child.process.kill()
                child.process.wait()
        if running:
            self.log("stopped " + ", ".join(c.name for c in running))
