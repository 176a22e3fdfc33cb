"""Worker nodes report themselves in the database, whatever the broker: the
`workers` endpoint and the dashboard read this instead of broadcasting a
remote-control query to every worker."""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import timedelta
from typing import Any

from celery.signals import worker_ready, worker_shutdown
from django.conf import settings
from django.db import connection
from django.utils import timezone

from operations.models import Operation, OperationStatus, WorkerNode

log = logging.getLogger(__name__)
_stop = threading.Event()


def _report(name: str, queues: list[str], concurrency: int, started_at: Any) -> None:
    WorkerNode.objects.update_or_create(
        name=name,
        defaults={
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "queues": queues,
            "concurrency": concurrency,
            "started_at": started_at,
            "last_seen_at": timezone.now(),
        },
    )


@worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    consumer = sender
    name = consumer.hostname
    queues = sorted(q.name for q in consumer.task_consumer.queues) if consumer.task_consumer else []
    concurrency = consumer.pool.num_processes if hasattr(consumer.pool, "num_processes") else 1
    started_at = timezone.now()

    def loop() -> None:
        while True:
            try:
                _report(name, queues, concurrency, started_at)
            except Exception:
                log.exception("could not report worker node %s", name)
                connection.close()
            if _stop.wait(settings.OPS_HEARTBEAT_SECONDS):
                return

    threading.Thread(target=loop, name="ops-node-report", daemon=True).start()


@worker_shutdown.connect
def _on_shutdown(sender: Any = None, **_: Any) -> None:
    _stop.set()
    try:
        WorkerNode.objects.filter(name=getattr(sender, "hostname", None), pid=os.getpid()).delete()
    except Exception:
        log.exception("could not remove this worker node's record")


def live_nodes() -> list[dict[str, Any]]:
    """Nodes seen within a lease period, each with the operations it runs."""
    cutoff = timezone.now() - timedelta(seconds=settings.OPS_LEASE_SECONDS)
    nodes = list(WorkerNode.objects.filter(last_seen_at__gte=cutoff).order_by("name"))
    running: dict[str, list[dict[str, Any]]] = {}
    for row in (
        Operation.objects.filter(status=OperationStatus.PROCESSING, worker__in=[n.name for n in nodes])
        .order_by("started_at")
        .values("id", "bank_id", "operation_type", "worker", "started_at", "progress")
    ):
        running.setdefault(row["worker"] or "", []).append(
            {
                "operation_id": str(row["id"]),
                "bank_id": row["bank_id"],
                "operation_type": row["operation_type"],
                "started_at": row["started_at"].isoformat() if row["started_at"] else None,
                "progress": row["progress"],
            }
        )
    return [
        {
            "name": n.name,
            "hostname": n.hostname,
            "pid": n.pid,
            "queues": n.queues,
            "concurrency": n.concurrency,
            "busy": len(running.get(n.name, [])),
            "started_at": n.started_at.isoformat(),
            "last_seen_at": n.last_seen_at.isoformat(),
            "running": running.get(n.name, []),
        }
        for n in nodes
    ]
