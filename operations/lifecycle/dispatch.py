"""Publishing operations to the broker: the outbox side of the lifecycle.

The database is the source of truth; a broker message is only a nudge that says
"operation X may be claimable now". A message can be lost (broker restart,
publish failure, a worker killed after fetching it) or duplicated (a sweep
re-publishes): the claim in `services` drops whatever is not claimable, and the
sweeper re-publishes pending operations that are due and were not picked up.

`dispatched_at` marks the last publish. A publisher marks the row with a
conditional UPDATE before it sends, so two publishers racing over one row (a
worker topping up, a sweeper) publish it once. A submission whose window has
room is written already marked and sent once committed, saving the UPDATE; if
its process dies between the commit and the send, the message counts as lost
and is published again after OPS_REDISPATCH_SECONDS.

**The dispatch window.** At most about `OPS_DISPATCH_WINDOW` messages per type
are in the broker at a time; the rest of a backlog waits in the database. A
submission is published at once while its type's window has room; each message
a worker takes is replaced by the next operation waiting (`publish_next`), and
the sweeper tops windows up. So a backlog of any size costs the broker nothing,
a new operation is picked up as soon as a slot is free, and what is published
next is chosen in the database:

**Fair across banks.** The next operation is taken round-robin over the banks
that have work waiting (each process keeps its own cursor over bank ids), oldest
first within a bank: one bank's backlog of thousands waits behind every other
bank's next operation, and still gets every slot nobody else wants. In the
broker too: an operation published while its bank has no other message of its
type there goes ahead of the window (a Redis priority), so it does not wait
behind a full window of another bank's slow work. (The embedded filesystem
broker keeps one order, first in first out.)
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache, partial
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import F, QuerySet
from django.utils import timezone

from core import prepared
from operations import registry
from operations.lifecycle import queries
from operations.models import Operation, OperationStatus, PausedType

log = logging.getLogger(__name__)

# Per process and type: the bank the last fair pick came from.
_cursor: dict[str, str] = {}


# Redis serves a queue's lower priority numbers first (kombu's default steps
# are 0, 3, 6, 9); every message carries one, since a message without one
# counts as 0. RabbitMQ serves higher ones first, from queues declared with
# x-max-priority (CELERY_TASK_QUEUE_MAX_PRIORITY, set for it): there a message
# carries that maximum minus these (`_publish`).
FIRST_OF_ITS_BANK = 0
BEHIND = 6


Message = tuple[uuid.UUID | str, str, str, int]  # operation id, type, task id, priority


def send(operation_id: uuid.UUID | str, operation_type: str, task_id: str, *, priority: int = BEHIND) -> bool:
    """Send the message of a row already marked with `task_id`. On a broker
    failure the mark is undone and False returned: the sweeper tries again."""
    return send_many([(operation_id, operation_type, task_id, priority)]) == 1


def send_many(messages: list[Message], *, producer: Any = None) -> int:
    """Send the messages of rows already marked, in one pass over one broker
    connection (`producer`'s, or one from Celery's pool); on Redis, several
    go in one round trip (kombu's publish batch). A message that may not have
    reached the broker has its mark undone (the sweeper publishes it again;
    one that did arrive is then sent twice, and the claim drops the second).
    Returns how many went."""
    from opsproject.celery import app

    if not messages:
        return 0
    failed: set[int] = set()
    try:
        with nullcontext(producer) if producer is not None else app.producer_or_acquire() as producer:
            if len(messages) == 1:
                _publish(app, producer, messages[0], retry=True)
            else:
                with producer.batch():
                    for i, message in enumerate(messages):
                        try:
                            _publish(app, producer, message, retry=False)
                        except Exception as exc:  # this one: the batch goes on
                            failed.add(i)
                            _unmark(*message[:3], exc)
    except Exception as exc:  # no connection, or the batch's flush failed
        for i, message in enumerate(messages):
            if i not in failed:
                _unmark(*message[:3], exc)
        return 0
    return len(messages) - len(failed)


def _publish(app: Any, producer: Any, message: Message, *, retry: bool) -> None:
    """One operation's message, as `app.send_task` would write it, for a
    third of its CPU: the task's queue taken from the registry (no router),
    the argument's repr given (no saferepr), Celery's settings read once per
    process (each read walks its configuration's layers), the queue declared
    once per process (kombu copies and binds it on every publish), and
    published to the queue by name through the default exchange (on Redis no
    binding lookup, a round trip per message). With task-sent events on
    (Flower), Celery's own path, which emits them."""
    operation_id, operation_type, task_id, priority = message
    optype = registry.get(operation_type)
    conf = _publishing(app)
    if conf.max_priority is not None:
        priority = conf.max_priority - priority
    if conf.sent_events:
        app.send_task(
            optype.task_name,
            args=[str(operation_id)],
            queue=optype.queue,
            task_id=task_id,
            priority=priority,
            producer=producer,
        )
        return
    declare = []
    if optype.queue not in _declared:
        declare = [app.amqp.queues[optype.queue]]
        _declared.add(optype.queue)
    args = [str(operation_id)]
    task = app.amqp.as_task_v2(
        task_id,
        optype.task_name,
        args=args,
        kwargs={},
        argsrepr=repr(args),
        kwargsrepr="{}",
        ignore_result=None,
        reply_to=app.thread_oid,  # per thread, as send_task's (a thread-local read)
        # The task's own limits, as send_task writes them for a registered task.
        time_limit=optype.hard_time_limit,
        soft_time_limit=optype.soft_time_limit,
    )
    producer.publish(
        task.body,
        exchange="",
        routing_key=optype.queue,
        headers=task.headers,
        priority=priority,
        serializer="json",
        delivery_mode=conf.delivery_mode,
        declare=declare,
        retry=retry,
        retry_policy=conf.retry_policy,
        **task.properties,
    )


@dataclass(frozen=True)
class _Settings:
    sent_events: bool
    delivery_mode: Any
    retry_policy: dict[str, Any]
    max_priority: int | None  # queues with priorities, higher first (RabbitMQ)


@cache
def _publishing(app: Any) -> _Settings:
    """The Celery settings a publish reads (fixed for the process's life)."""
    return _Settings(
        sent_events=bool(app.conf.task_send_sent_event),
        delivery_mode=app.conf.task_default_delivery_mode,
        retry_policy=dict(app.conf.task_publish_retry_policy),
        max_priority=app.conf.task_queue_max_priority,
    )


# The queues this process has declared to the broker (for RabbitMQ, where a
# message to a queue not yet declared would be dropped; Celery's are durable).
_declared: set[str] = set()


def _unmark(operation_id: uuid.UUID | str, operation_type: str, task_id: str, exc: BaseException) -> None:
    log.warning("publish of %s %s failed, the sweeper will retry: %s", operation_type, operation_id, exc)
    Operation.objects.filter(pk=operation_id, task_id=task_id).transition(
        "dispatch", dispatched_at=None, updated_at=F("updated_at")
    )


def publish(
    operation_id: uuid.UUID | str,
    operation_type: str,
    *,
    expected_dispatched_at: datetime | None = None,
) -> bool:
    """Publish one pending operation to its type's queue. Returns False when the
    row was not ours to publish (not pending, or another publisher marked it)
    or the broker refused; the sweeper tries again later in the second case."""
    task_id = str(uuid.uuid4())
    marked = Operation.objects.filter(pk=operation_id, dispatched_at=expected_dispatched_at).transition(
        "dispatch", dispatched_at=timezone.now(), task_id=task_id, updated_at=F("updated_at")
    )
    return bool(marked) and send(operation_id, operation_type, task_id)


def _stale_before() -> datetime:
    return timezone.now() - timedelta(seconds=settings.OPS_REDISPATCH_SECONDS)


def _in_broker(operation_type: str) -> QuerySet[Operation]:
    """The rows whose message of this type is in the broker now (published,
    not yet claimed): a range of `ops_pending_dispatched`."""
    return Operation.objects.live().filter(
        status=OperationStatus.PENDING, operation_type=operation_type, dispatched_at__gte=_stale_before()
    )


def in_flight(operation_type: str) -> int:
    """Messages of this type in the broker now, counted up to the window: the
    count stops there."""
    return _in_broker(operation_type)[: settings.OPS_DISPATCH_WINDOW].count()


def window_room(operation_type: str) -> int:
    """How many more messages of this type the window takes now."""
    return max(settings.OPS_DISPATCH_WINDOW - in_flight(operation_type), 0)


# A submission asks whether its type's window has room, and whether its bank
# already has a message there (its priority). Reading the window for each one
# would be a query per operation (S1 of the hot path), so each process reads
# it at most this often and spends from what it read in between; a window can
# then run over by what other processes publish meanwhile, and a bank whose
# message was taken meanwhile still counts as in the broker.
WINDOW_RECOUNT_SECONDS = 0.1


@dataclass
class _WindowEstimate:
    counted_at: float
    room: int
    banks: set[str]


_estimates: dict[str, _WindowEstimate] = {}


def _read_window(operation_type: str) -> _WindowEstimate:
    """The banks of the messages of this type in the broker now (at most the
    window's worth of rows, on `ops_pending_dispatched`, as `in_flight`)."""
    banks = list(_in_broker(operation_type).values_list("bank_id", flat=True)[: settings.OPS_DISPATCH_WINDOW])
    return _WindowEstimate(time.monotonic(), max(settings.OPS_DISPATCH_WINDOW - len(banks), 0), set(banks))


def take_window_slots(operation_type: str, bank_id: str, wanted: int = 1) -> tuple[int, int]:
    """How many of `wanted` submissions of this type from one bank are
    published at once (counted against the window, from this process's
    estimate of it), and the priority of the first of them: ahead of the
    window when its bank has no message of the type there (the rest go
    behind it, as `publish_next` would send them)."""
    estimate = _estimates.get(operation_type)
    if estimate is None or time.monotonic() - estimate.counted_at >= WINDOW_RECOUNT_SECONDS:
        estimate = _estimates[operation_type] = _read_window(operation_type)
    granted = max(min(estimate.room, wanted), 0)
    priority = BEHIND if bank_id in estimate.banks else FIRST_OF_ITS_BANK
    if granted:
        estimate.room -= granted
        estimate.banks.add(bank_id)
    return granted, priority


def forget_process_state() -> None:
    """Drop this process's window estimates and fair-pick cursors (a test
    whose database was emptied under them starts afresh)."""
    _estimates.clear()
    _cursor.clear()
    _declared.clear()


def offer(operation_id: uuid.UUID | str, operation_type: str) -> bool:
    """A re-queued operation (a retry): publish it now if its type's window
    has room (and its dispatch is not paused), else leave it to the next top-up."""
    return not is_paused(operation_type) and bool(window_room(operation_type)) and publish(operation_id, operation_type)


def is_paused(operation_type: str) -> bool:
    """Whether an operator paused the type's dispatch (`lifecycle.pausing`)."""
    return PausedType.objects.filter(operation_type=operation_type).exists()


def _pick(operation_type: str, after: str, task_id: str) -> tuple[str, str, bool] | None:
    """The next waiting operation (`queries.pick`), marked as published:
    (id, bank, whether its bank has another message of the type in the broker)."""
    params = queries.pick_params(
        operation_type=operation_type,
        after=after,
        task_id=task_id,
        now=prepared.adapt(timezone.now(), connection),
        stale_before=prepared.adapt(_stale_before(), connection),
    )
    row = prepared.fetchone(queries.pick(connection.vendor), params)
    if row is None:
        return None
    return str(uuid.UUID(str(row[0]))), row[1], bool(row[2])


def publish_next(operation_type: str) -> bool:
    """Publish the next waiting operation of a type, fairly across banks
    (see the module). False when nothing waits."""
    task_id = str(uuid.uuid4())
    picked = _pick(operation_type, _cursor.get(operation_type, ""), task_id)
    if not picked:
        return False
    operation_id, bank_id, behind = picked
    _cursor[operation_type] = bank_id
    return send(operation_id, operation_type, task_id, priority=BEHIND if behind else FIRST_OF_ITS_BANK)


def cursor_for(operation_type: str) -> str:
    """This process's fair-pick cursor for a type (the bank picked last)."""
    return _cursor.get(operation_type, "")


def picked_by_claim(operation_type: str, picked: dict[str, Any], task_id: str) -> None:
    """A claim also picked the next operation (PostgreSQL: `CLAIM_AND_PICK`):
    move the cursor and send its message off the run's path."""
    _cursor[operation_type] = picked["bank_id"]
    priority = BEHIND if picked["behind"] else FIRST_OF_ITS_BANK
    _publisher.submit((str(picked["id"]), operation_type, task_id, priority))


class _Publisher:
    """A daemon thread of a worker process that publishes the next operation
    when a message was taken, off the path of the task that took it (a broker
    publish, and on SQLite the pick, that the run no longer waits for). The
    messages waiting when it wakes go together (`send_many`). Started on
    first use; a forked process starts its own."""

    def __init__(self) -> None:
        self._pid: int | None = None
        self._queue: queue.SimpleQueue[Message | Callable[[], object]] = queue.SimpleQueue()
        self._lock = threading.Lock()

    def submit(self, work: Message | Callable[[], object]) -> None:
        """A message to send, or work that publishes (a pick, then its send)."""
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._queue = queue.SimpleQueue()
                threading.Thread(target=self._run, name="ops-publisher", daemon=True).start()
        self._queue.put(work)

    def _run(self) -> None:
        from opsproject.celery import app

        producer: Any = None  # held between wake-ups: acquiring one reads Celery's settings
        while True:
            waiting = [self._queue.get()]
            while True:
                try:
                    waiting.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            messages = [work for work in waiting if isinstance(work, tuple)]
            jobs = [work for work in waiting if not isinstance(work, tuple)]
            if messages:
                try:
                    producer = producer or app.producer_pool.acquire(block=True)
                    if send_many(messages, producer=producer) < len(messages):
                        producer, broken = None, producer
                        broken.release()  # the pool revives its connection
                except Exception:  # a message not sent stays marked: published again when stale
                    log.exception("publishing the next operations failed")
                    producer = None
                    connection.close()
            for job in jobs:
                try:
                    job()
                except Exception:  # the sweeper tops windows up too
                    log.exception("publishing the next operation failed")
                    connection.close()


_publisher = _Publisher()


def replace_taken(operation_type: str, *, in_background: bool) -> None:
    """A message of this type left the broker: the next waiting operation
    takes its place in the window. In a worker's pool process, a background
    thread does it; elsewhere (a run in-process) it happens here."""
    if in_background:
        _publisher.submit(partial(publish_next, operation_type))
    else:
        publish_next(operation_type)


def _republish_stale(operation_type: str, limit: int) -> int:
    """Operations whose message was published long ago and never taken (lost
    with a broker restart, say): publish them again."""
    now = timezone.now()
    stale = (
        Operation.objects.live()
        .filter(status=OperationStatus.PENDING, operation_type=operation_type, dispatched_at__lt=_stale_before())
        .exclude(next_retry_at__gt=now)
        .order_by("dispatched_at")
        .values_list("pk", "dispatched_at")[:limit]
    )
    return sum(publish(pk, operation_type, expected_dispatched_at=at) for pk, at in stale)


def top_up(operation_type: str) -> int:
    """Fill a type's window: stale messages again, then waiting operations,
    fairly. Returns how many were published. Reads first and writes only
    when there is something to publish: on SQLite every UPDATE, even one
    that changes nothing, waits for the database's one write lock, which a
    busy bank's writers keep taking (a sweep of 20 types took seconds)."""
    if is_paused(operation_type):
        return 0
    room = window_room(operation_type)
    published = _republish_stale(operation_type, room) if room else 0
    if published < room and not _unpublished(operation_type).exists():
        return published
    while published < room and publish_next(operation_type):
        published += 1
    return published


def _unpublished(operation_type: str) -> QuerySet[Operation]:
    """Pending operations of the type waiting to be published (`ops_pending_fair`)."""
    now = timezone.now()
    return (
        Operation.objects.live()
        .filter(status=OperationStatus.PENDING, operation_type=operation_type, dispatched_at__isnull=True)
        .exclude(next_retry_at__gt=now)
    )


def publish_due() -> int:
    """The sweeper's part: top every type's window up (operations whose retry
    time came, whose message was lost, or that waited behind a full window)."""
    return sum(top_up(t.name) for t in registry.runnable_types())


def publish_next_serial(serial_key: str) -> bool:
    """After an operation holding `serial_key` finished, publish the oldest due
    pending one waiting on the same key."""
    now = timezone.now()
    waiting = (
        Operation.objects.live()
        .filter(serial_key=serial_key, status=OperationStatus.PENDING, dispatched_at=None)
        .exclude(next_retry_at__gt=now)
        .order_by("created_at")
        .values("pk", "operation_type")
        .first()
    )
    if waiting is None or is_paused(waiting["operation_type"]):
        return False
    return publish(waiting["pk"], waiting["operation_type"])
