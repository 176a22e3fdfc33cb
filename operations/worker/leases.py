"""Leases held by this worker process: heartbeats and hard cancellation.

One daemon thread per process (started on first use) issues one bulk UPDATE per
`OPS_HEARTBEAT_SECONDS` renewing every lease the process holds. If the process
dies or hangs, the heartbeats stop and the reaper takes the operation back once
`OPS_LEASE_SECONDS` have passed.

The same thread enforces `OPS_CANCEL_GRACE_SECONDS`: when a cancel request is
older than the grace period and the handler has not stopped at a checkpoint, it
interrupts the handler (a signal whose handler raises `OperationCancelled`, so
even a blocking sleep or socket read is cut short and transactions unwind). If
the handler still runs after a second grace period, the row is marked cancelled
and the pool process is killed; Celery starts a fresh one.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from types import FrameType

from django.conf import settings
from django.db import connection

from operations import lifecycle
from operations.handlers import Lease, OperationCancelled

log = logging.getLogger(__name__)

CANCEL_SIGNAL = signal.SIGUSR2


@dataclass
class Held:
    lease: Lease
    thread_id: int
    in_handler: bool = False
    interrupted_at: float | None = None


# Re-entrant: the cancel signal handler runs in the main thread between any two
# bytecodes, possibly while that same thread holds the lock (in `hold`,
# `set_in_handler`, …). With a plain Lock it would wait for itself forever.
_lock = threading.RLock()
_held: dict[str, Held] = {}
_thread: threading.Thread | None = None
_thread_pid: int | None = None


def hold(lease: Lease) -> None:
    with _lock:
        _held[lease.operation_id] = Held(lease=lease, thread_id=threading.get_ident())
    _ensure_thread()


def release(operation_id: str) -> None:
    with _lock:
        _held.pop(operation_id, None)


def set_in_handler(operation_id: str, value: bool) -> None:
    """Mark whether the handler itself is running: only then may it be interrupted."""
    with _lock:
        held = _held.get(operation_id)
        if held is not None:
            held.in_handler = value


def snapshot() -> dict[str, Held]:
    with _lock:
        return dict(_held)


def install_cancel_signal() -> None:
    """In the main thread of a pool process: make CANCEL_SIGNAL interrupt the
    running handler. Idempotent."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(CANCEL_SIGNAL, _on_cancel_signal)


def _on_cancel_signal(signum: int, frame: FrameType | None) -> None:
    main = threading.main_thread().ident
    with _lock:
        target = next(
            (h for h in _held.values() if h.thread_id == main and h.interrupted_at and h.in_handler),
            None,
        )
    if target is not None:
        raise OperationCancelled(f"{target.lease.operation_id}: cancel grace period over")


def _ensure_thread() -> None:
    global _thread, _thread_pid
    # A forked pool process inherits the module state but not the thread.
    with _lock:
        if _thread is not None and _thread_pid == os.getpid() and _thread.is_alive():
            return
        _thread_pid = os.getpid()
        _thread = threading.Thread(target=_beat_forever, name="ops-heartbeat", daemon=True)
        _thread.start()


def _beat_forever() -> None:
    while True:
        time.sleep(settings.OPS_HEARTBEAT_SECONDS)
        held = snapshot()
        if not held:
            continue
        try:
            beat_once(held)
        except Exception:
            # The database may be briefly away; a fresh connection next time.
            log.exception("heartbeat failed; retrying in %.1fs", settings.OPS_HEARTBEAT_SECONDS)
            connection.close()


def beat_once(held: dict[str, Held]) -> None:
    leases = {op_id: h.lease.lease_id for op_id, h in held.items()}
    lifecycle.operations_heartbeat(leases=leases)
    for operation_id in lifecycle.operations_cancel_overdue(
        leases=leases, grace_seconds=settings.OPS_CANCEL_GRACE_SECONDS
    ):
        _stop(held[operation_id])


def _stop(held: Held) -> None:
    now = time.monotonic()
    if held.interrupted_at is None:
        held.interrupted_at = now
        log.warning("operation %s ignored its cancel request; interrupting it", held.lease.operation_id)
        if held.thread_id == threading.main_thread().ident:
            signal.pthread_kill(held.thread_id, CANCEL_SIGNAL)
        else:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(held.thread_id), ctypes.py_object(OperationCancelled)
            )
        return
    if now - held.interrupted_at < max(settings.OPS_CANCEL_GRACE_SECONDS, 1.0):
        return
    # The handler survived the interruption (stuck in C code, or it swallowed
    # the exception). The database says cancelled; the process goes.
    if lifecycle.operation_confirm_cancel(lease=held.lease, stage="unresponsive handler"):
        log.error("operation %s did not stop; cancelled, killing its process", held.lease.operation_id)
    release(held.lease.operation_id)
    if in_pool_process():
        os.kill(os.getpid(), signal.SIGKILL)


def in_pool_process() -> bool:
    """True in a Celery prefork pool process (not a worker's main process, not
    a test or web process running an operation in-process)."""
    from billiard.process import current_process

    return current_process().name != "MainProcess"
