"""What the database and the housekeeping do while a load runs.

`LoadProbe` samples, every 20 ms, the sessions of the benchmark's database
(`pg_stat_activity`): how many are busy (running a statement or inside a
transaction) and how many of those wait on a lock. And every sweep interval it
runs the sweep (`ops.sweep`'s own function, beside the beat's) and times it:
how long housekeeping takes while the load holds the database.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Self

from django.conf import settings
from django.db import connections

from bench.report import percentile


class LoadProbe:
    def __init__(self) -> None:
        self.busy = 0
        self.waiting = 0
        self.wait_events: dict[str, int] = {}
        self.sweeps: list[float] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._sample_locks, daemon=True),
            threading.Thread(target=self._time_sweeps, daemon=True),
        ]

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _sample_locks(self) -> None:
        try:
            with connections["default"].cursor() as cursor:
                while not self._stop.wait(0.02):
                    cursor.execute(
                        "SELECT state, wait_event_type, wait_event FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                        "AND backend_type = 'client backend' AND state IN ('active', 'idle in transaction')"
                    )
                    for _, wait_type, wait_event in cursor.fetchall():
                        self.busy += 1
                        if wait_type == "Lock":
                            self.waiting += 1
                            self.wait_events[wait_event] = self.wait_events.get(wait_event, 0) + 1
        finally:
            connections["default"].close()

    def _time_sweeps(self) -> None:
        from operations.tasks import sweep

        try:
            while not self._stop.wait(settings.OPS_SWEEP_INTERVAL_SECONDS):
                clock = time.perf_counter()
                sweep()
                self.sweeps.append(time.perf_counter() - clock)
        finally:
            connections["default"].close()

    @property
    def waiting_fraction(self) -> float:
        return self.waiting / self.busy if self.busy else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "busy_samples": self.busy,
            "waiting_on_a_lock": self.waiting,
            "waiting_fraction": self.waiting_fraction,
            "wait_events": dict(self.wait_events),
            "sweeps": len(self.sweeps),
            "sweep_p50_ms": percentile(self.sweeps, 50) * 1000 if self.sweeps else None,
            "sweep_max_ms": max(self.sweeps) * 1000 if self.sweeps else None,
            "sweep_interval_ms": settings.OPS_SWEEP_INTERVAL_SECONDS * 1000,
        }
