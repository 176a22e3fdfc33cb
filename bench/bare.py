"""Bare Celery on Redis: the reference the platform's no-op figures are
measured against. The same broker server as the platform's (a Redis database
of its own), a worker with the same pool, concurrency, late acknowledgement
and prefetch 1, and a task that only leaves a mark in Redis (one pipelined
round trip) so the driver can count runs without a result backend.

The broker URL comes from BENCH_REFERENCE_BROKER_URL, set by the driver for
itself and the worker it starts.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

BROKER_URL = os.environ.get("BENCH_REFERENCE_BROKER_URL", "redis://127.0.0.1:6379/10")
DONE = "bench:bare:done"  # how many tasks ran
STAMPS = "bench:bare:stamps"  # when the stamped ones finished (time.time())

app = Celery("bench_bare", broker=BROKER_URL)
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    # As the platform's: a dead worker's message comes back, after an hour.
    broker_transport_options={"visibility_timeout": 3600},
)
_marks: redis.Redis | None = None


def marks() -> redis.Redis:
    """One connection per process (a forked pool process opens its own)."""
    global _marks
    if _marks is None:
        _marks = redis.Redis.from_url(BROKER_URL)
    return _marks


@app.task(name="bench.noop")
def noop(stamp: bool = False) -> None:
    with marks().pipeline(transaction=False) as pipe:
        pipe.incr(DONE)
        if stamp:
            pipe.rpush(STAMPS, repr(time.time()))
        pipe.execute()
