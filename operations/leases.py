"""Heartbeats: each worker process renews the leases of what it runs.

One daemon thread per process (started on first use) issues one bulk UPDATE per
`OPS_HEARTBEAT_SECONDS` for every lease the process holds. If the process dies
or hangs, the heartbeats stop and the reaper takes the operation back once
`OPS_LEASE_SECONDS` have passed.
"""

from __future__ import annotations

import logging
import os
import threading

from django.conf import settings
from django.db import connection

log = logging.getLogger(__name__)

_lock = threading.Lock()
_held: dict[str, str] = {}  # operation id -> lease id
_thread: threading.Thread | None = None
_thread_pid: int | None = None


def hold(operation_id: str, lease_id: str) -> None:
    with _lock:
        _held[operation_id] = lease_id
    _ensure_thread()


def release(operation_id: str) -> None:
    with _lock:
        _held.pop(operation_id, None)


def held() -> dict[str, str]:
    with _lock:
        return dict(_held)


def _ensure_thread() -> None:
    global _thread, _thread_pid
    # A forked pool process inherits the module but not the thread.
    if _thread is not None and _thread_pid == os.getpid() and _thread.is_alive():
        return
    with _lock:
        if _thread is not None and _thread_pid == os.getpid() and _thread.is_alive():
            return
        _thread_pid = os.getpid()
        _thread = threading.Thread(target=_beat_forever, name="ops-heartbeat", daemon=True)
        _thread.start()


def _beat_forever() -> None:
    from operations import services

    stop = threading.Event()
    while not stop.wait(settings.OPS_HEARTBEAT_SECONDS):
        leases = held()
        if not leases:
            continue
        try:
            services.operations_heartbeat(leases=leases)
        except Exception:
            # The database may be briefly away; a fresh connection next time.
            log.exception("heartbeat failed; retrying in %.1fs", settings.OPS_HEARTBEAT_SECONDS)
            connection.close()
