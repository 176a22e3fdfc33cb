"""The operation: one row records the whole lifecycle of one piece of background work.

Rows change status only through `operations.lifecycle`, each change a conditional
UPDATE; `TRANSITIONS` below is the table of what is allowed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.db import connections, models
from django.db.models import Q
from django.db.models.sql import UpdateQuery
from django.utils import timezone

from operations import registry


class OperationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    """Queued, or parked until `next_retry_at` after a failed attempt."""
    PROCESSING = "processing", "Processing"
    """Claimed by a worker, which holds a lease renewed by heartbeats."""
    COMPLETED = "completed", "Completed"
    """The handler returned; `result_metadata` holds what it reported."""
    FAILED = "failed", "Failed"
    """A permanent error, a timeout, or the retry budget spent; see `error_message`."""
    CANCELLED = "cancelled", "Cancelled"
    """Cancelled before it ran, or stopped at a checkpoint after a cancel request."""


TERMINAL_STATUSES = frozenset({OperationStatus.COMPLETED, OperationStatus.FAILED, OperationStatus.CANCELLED})

ACTIVE_STATUSES = frozenset({OperationStatus.PENDING, OperationStatus.PROCESSING})
ALL_STATUSES = frozenset(OperationStatus.values)

# `finished_on` of a pending or processing row, and of a finished one until
# the sweep files it under its week. On PostgreSQL the table is partitioned by
# `finished_on` (see `operations.partitions`): the live rows in a partition of
# their own, each week's finished rows in that week's.
ACTIVE_DAY = date.max
ACTIVE_DAY_SQL = "'9999-12-31'"
# The live rows' condition in raw SQL, a constant so that PostgreSQL reads
# their partition alone (`OperationQuerySet.live()` in the ORM).
LIVE_SQL = f"finished_on = {ACTIVE_DAY_SQL}"


@dataclass(frozen=True)
class Transition:
    """One allowed change of an operation row.

    sources   the statuses it starts from; a row in any other status is left alone
    targets   the statuses it may end in (the first is the default); empty for delete
    guard     a further condition the row must meet at the moment of the UPDATE,
              so a decision never rests on a value read earlier
    parents   True: only parent (roll-up) rows take it; False: only ordinary
              rows; None: both. A parent's status is never set by a transition
              meant for the rows that run (the cancel of a bulk cancel, say).
    """

    sources: frozenset[str]
    targets: tuple[str, ...]
    doc: str
    guard: Q | None = None
    parents: bool | None = False

    @property
    def target(self) -> str | None:
        return self.targets[0] if self.targets else None


_NO_CANCEL_REQUEST = Q(cancel_requested_at__isnull=True)

# Every allowed transition, by name. `OperationQuerySet.transition` is the only
# way a status changes: one conditional UPDATE per call, from the sources
# listed here, returning how many rows it changed (0: another process got
# there first, or the row is not in a status the transition starts from).
TRANSITIONS: dict[str, Transition] = {
    "submit": Transition(frozenset(), (OperationStatus.PENDING,), "a new row (an INSERT, not an UPDATE)", parents=None),
    "dispatch": Transition(
        frozenset({OperationStatus.PENDING}),
        (OperationStatus.PENDING,),
        "mark a pending row as published to the broker",
    ),
    "claim": Transition(
        frozenset({OperationStatus.PENDING}),
        (OperationStatus.PROCESSING,),
        "a worker takes a due pending row and holds a lease on it",
    ),
    "progress": Transition(
        frozenset({OperationStatus.PROCESSING}),
        (OperationStatus.PROCESSING,),
        "the worker reports progress or renews its lease",
    ),
    "request_cancel": Transition(
        frozenset({OperationStatus.PROCESSING}),
        (OperationStatus.PROCESSING,),
        "ask a running handler to stop at its next checkpoint",
        guard=_NO_CANCEL_REQUEST,
    ),
    "complete": Transition(
        frozenset({OperationStatus.PROCESSING}),
        (OperationStatus.COMPLETED,),
        "the handler returned",
    ),
    "fail": Transition(
        frozenset({OperationStatus.PROCESSING}),
        (OperationStatus.FAILED,),
        "a permanent error or the retry budget spent; a pending cancel request wins instead",
        guard=_NO_CANCEL_REQUEST,
    ),
    "reschedule": Transition(
        frozenset({OperationStatus.PROCESSING}),
        (OperationStatus.PENDING,),
        "a transient error: pending again until next_retry_at; a pending cancel request wins instead",
        guard=_NO_CANCEL_REQUEST,
    ),
    "yield": Transition(
        frozenset({OperationStatus.PROCESSING}),
        (OperationStatus.PENDING,),
        "gave its slot back to another bank's waiting work (fair share); resumes from its progress",
        guard=_NO_CANCEL_REQUEST,
    ),
    "confirm_cancel": Transition(
        frozenset({OperationStatus.PROCESSING}),
        (OperationStatus.CANCELLED,),
        "the handler stopped after a cancel request (or was stopped)",
    ),
    "cancel": Transition(
        frozenset({OperationStatus.PENDING}),
        (OperationStatus.CANCELLED,),
        "cancel before it ran",
    ),
    "retry": Transition(
        frozenset({OperationStatus.FAILED, OperationStatus.CANCELLED}),
        (OperationStatus.PENDING,),
        "queue a failed or cancelled operation again (manual retry)",
    ),
    "delete": Transition(
        frozenset(TERMINAL_STATUSES), (), "remove a finished row (a parent with its children)", parents=None
    ),
    # A parent never runs: its status follows its children.
    "roll_up": Transition(
        ACTIVE_STATUSES,
        (
            OperationStatus.PROCESSING,
            OperationStatus.PENDING,
            OperationStatus.COMPLETED,
            OperationStatus.FAILED,
            OperationStatus.CANCELLED,
        ),
        "recompute a parent from its children; a finished parent never moves back",
        parents=True,
    ),
    "retry_parent": Transition(
        frozenset({OperationStatus.FAILED, OperationStatus.CANCELLED}),
        (OperationStatus.PENDING,),
        "re-open a finished parent whose failed and cancelled children are queued again",
        parents=True,
    ),
}


def concrete_field(model: type[models.Model], name: str) -> models.Field[Any, Any]:
    """A concrete field of the model by name (not a reverse relation)."""
    field = model._meta.get_field(name)
    assert isinstance(field, models.Field), name
    return field


class TransitionError(ValueError):
    """A programming error: an unknown transition or a target it does not allow."""


class OperationQuerySet(models.QuerySet["Operation"]):
    def transition(self, name: str, *, status: str | None = None, **fields: Any) -> int:
        """Perform transition `name` on these rows as one conditional UPDATE:
        only rows in one of its source statuses (and meeting its guard) change.
        `status` picks among the transition's targets (default: the first).
        Stamps `updated_at`. Returns how many rows changed."""
        rows, values = self._transition_update(name, status, fields)
        return rows.update(**values)

    def transition_sql(
        self,
        name: str,
        returning: tuple[str, ...],
        *,
        status: str | None = None,
        extra: dict[str, str] | None = None,
        **fields: Any,
    ) -> tuple[str, list[Any]]:
        """The statement of `transition_returning`, to run it inside another
        (`operations.lifecycle.queries.CLAIM_AND_PICK`)."""
        rows, values = self._transition_update(name, status, fields)
        query = rows.query.chain(UpdateQuery)
        query.add_update_values(values)  # type: ignore[attr-defined]  # chain(UpdateQuery) made it one
        db = connections[rows.db]
        statement, params = query.get_compiler(rows.db).as_sql()
        table = self.model._meta.db_table
        columns = [concrete_field(self.model, name).get_col(table) for name in returning]
        returned = [db.ops.quote_name(str(c.target.column)) for c in columns]
        returned += [f"({condition}) AS {db.ops.quote_name(key)}" for key, condition in (extra or {}).items()]
        statement += " RETURNING " + ", ".join(returned)
        return statement, list(params)

    def transition_returning(
        self,
        name: str,
        returning: tuple[str, ...],
        *,
        status: str | None = None,
        extra: dict[str, str] | None = None,
        **fields: Any,
    ) -> list[dict[str, Any]]:
        """`transition`, returning the named fields of the rows it changed, in
        the same statement (UPDATE … RETURNING: PostgreSQL, SQLite >= 3.35),
        and the `extra` SQL expressions over the changed row, by name."""
        statement, params = self.transition_sql(name, returning, status=status, extra=extra, **fields)
        db = connections[self.db]
        table = self.model._meta.db_table
        columns = [concrete_field(self.model, name).get_col(table) for name in returning]
        with db.cursor() as cursor:
            cursor.execute(statement, params)
            fetched = cursor.fetchall()
        converters = [db.ops.get_db_converters(c) + c.get_db_converters(db) for c in columns]
        result = []
        for row in fetched:
            values_out = {}
            for name, column, convert, value in zip(returning, columns, converters, row[: len(columns)], strict=True):
                for converter in convert:
                    value = converter(value, column, db)
                values_out[name] = value
            values_out.update(zip(extra or {}, row[len(columns) :], strict=True))
            result.append(values_out)
        return result

    def _transition_update(
        self, name: str, status: str | None, fields: dict[str, Any]
    ) -> tuple[OperationQuerySet, dict[str, Any]]:
        transition = TRANSITIONS.get(name)
        if transition is None or not transition.targets:
            raise TransitionError(f"{name!r} is not an UPDATE transition")
        target = status if status is not None else transition.target
        if target not in transition.targets:
            raise TransitionError(f"{name} cannot end in {target!r}")
        rows = self.filter(status__in=transition.sources)
        if transition.sources <= ACTIVE_STATUSES:
            # Only the active partition holds such rows (PostgreSQL skips the others).
            rows = rows.filter(finished_on=ACTIVE_DAY)
        if transition.guard is not None:
            rows = rows.filter(transition.guard)
        if transition.parents is not None:
            parent_types = registry.parent_type_names()
            rows = (
                rows.filter(operation_type__in=parent_types)
                if transition.parents
                else (rows.exclude(operation_type__in=parent_types))
            )
        fields.setdefault("updated_at", timezone.now())
        if target in ACTIVE_STATUSES and not transition.sources <= ACTIVE_STATUSES:
            fields["finished_on"] = ACTIVE_DAY  # back to the live work (a retry)
        return rows, {"status": target, **fields}

    def live(self) -> OperationQuerySet:
        """Rows that may be pending or processing: on PostgreSQL the active
        partition only, so that a query of the live work neither plans nor
        reads the history's partitions."""
        return self.filter(finished_on=ACTIVE_DAY)

    def created_since(self, moment: datetime) -> OperationQuerySet:
        """Rows created at or after `moment`. None of them finished before it,
        so none is filed under a week that ended before its day: saying so
        (a day early, for the clocks of other nodes) lets PostgreSQL skip the
        older weeks' partitions instead of reading an index of each."""
        try:
            day = (moment.astimezone(UTC) - timedelta(days=1)).date()
        except OverflowError:  # the beginning of time: no week is older
            return self.filter(created_at__gte=moment)
        return self.filter(created_at__gte=moment, finished_on__gte=day)

    def bulk_create(self, objs: Any, *args: Any, **kwargs: Any) -> list[Operation]:
        """Rows written whole (tests, imports): a live one in the live rows."""
        objs = list(objs)
        for obj in objs:
            if obj.status in ACTIVE_STATUSES:
                obj.finished_on = ACTIVE_DAY
        return super().bulk_create(objs, *args, **kwargs)

    def update(self, **kwargs: Any) -> int:
        """A row made live again by a `status` set directly (repairs, tests;
        the transitions see to it themselves) goes back among the live rows."""
        if kwargs.get("status") in ACTIVE_STATUSES:
            kwargs.setdefault("finished_on", ACTIVE_DAY)
        return super().update(**kwargs)


ERROR_MESSAGE_MAX = 5000


class Operation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    bank = models.ForeignKey("tenancy.Bank", on_delete=models.CASCADE, related_name="operations", db_index=False)
    operation_type = models.CharField(max_length=64, choices=registry.choices)
    status = models.CharField(max_length=16, choices=OperationStatus.choices, default=OperationStatus.PENDING)
    # JSON of primitives the handler needs; never secrets (they stay in their rows).
    task_payload = models.JSONField(default=dict, blank=True)
    result_metadata = models.JSONField(default=dict, blank=True)
    error_message = models.TextField(null=True, blank=True)
    # One entry per failed attempt: {attempt, at, stage, error}.
    error_history = models.JSONField(default=list, blank=True)
    items_count = models.PositiveIntegerField(default=0)
    progress = models.JSONField(null=True, blank=True)
    retry_count = models.PositiveIntegerField(default=0)
    max_retries = models.PositiveIntegerField(default=0)
    next_retry_at = models.DateTimeField(null=True, blank=True)
    # Indexed only where set (see Meta): most operations have no parent, and
    # every index on every row costs each status change an index entry.
    # No foreign-key constraint in the database: PostgreSQL's partitioned
    # table has no unique index on `id` alone to refer to (Django cascades).
    parent = models.ForeignKey(
        "self",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="children",
        db_index=False,
        db_constraint=False,
    )
    document_id = models.CharField(max_length=512, null=True, blank=True)
    filename = models.CharField(max_length=512, null=True, blank=True)
    mental_model_id = models.CharField(max_length=128, null=True, blank=True)
    tag = models.CharField(max_length=200, null=True, blank=True)
    # Unique among pending operations: a duplicate submit returns the pending one.
    dedupe_key = models.CharField(max_length=700, null=True, blank=True)
    # Unique among processing operations: one running per bank, document, ….
    serial_key = models.CharField(max_length=700, null=True, blank=True)
    worker = models.CharField(max_length=255, null=True, blank=True)
    # Fencing token of the current claim: a worker that lost its lease (the
    # reaper gave the operation to another) can no longer write to the row.
    lease_id = models.UUIDField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    task_id = models.CharField(max_length=64, null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    # The partition key on PostgreSQL: ACTIVE_DAY while pending or processing;
    # the sweep files a finished row under the UTC day it finished (in
    # batches, off the hot path: `partitions.file_finished`), so the live
    # rows stay apart from the history and the prune drops a week whole.
    finished_on = models.DateField(default=ACTIVE_DAY, db_default=ACTIVE_DAY, editable=False)

    objects = OperationQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        # Cancelling and retrying change what runs, so the admin console asks
        # for these beyond the stock view/change/delete permissions.
        permissions = [
            ("cancel_operation", "Can cancel operations"),
            ("retry_operation", "Can retry operations"),
            ("pause_dispatch", "Can pause and resume the dispatch of an operation type"),
        ]
        indexes = [
            models.Index(fields=["bank", "-created_at"], name="ops_bank_created"),
            models.Index(fields=["-created_at"], name="ops_created"),
            models.Index(fields=["parent", "created_at"], condition=Q(parent__isnull=False), name="ops_children"),
            # The dispatch window: messages in flight per type, and the queue
            # of pending operations per type in submission order.
            models.Index(
                fields=["operation_type", "dispatched_at"],
                condition=Q(status="pending"),
                name="ops_pending_dispatched",
            ),
            # The fair pick: per type, bank by bank, oldest first, among the
            # pending operations not yet published (see dispatch._PICK).
            models.Index(
                fields=["operation_type", "bank", "created_at"],
                condition=Q(status="pending", dispatched_at__isnull=True),
                name="ops_pending_fair",
            ),
            # Fair share: does another bank have pending work of the type? Two
            # range probes (banks below, banks above), never a bank's own
            # backlog. And does this bank have a message in the broker (the
            # pick's priority)? One probe on (type, bank, dispatched_at).
            models.Index(
                fields=["operation_type", "bank", "dispatched_at"],
                condition=Q(status="pending"),
                name="ops_pending_bank",
            ),
            models.Index(
                fields=["heartbeat_at"],
                condition=Q(status="processing"),
                name="ops_processing_heartbeat",
            ),
            # Finished rows by status and time: the metrics rollup's window, and
            # status filters of lists over every bank. (Pending and processing
            # rows have partial indexes of their own; no index on status alone,
            # which every status change would have to update.)
            models.Index(
                fields=["status", "completed_at"],
                condition=Q(status__in=["completed", "failed", "cancelled"]),
                name="ops_terminal_completed",
            ),
        ]
        # A unique index of a partitioned table must hold its partition key:
        # every pending or processing row has finished_on = ACTIVE_DAY (the
        # check), so these are unique over all the table's pending rows and
        # all its processing ones, enforced in the one active partition.
        constraints = [
            models.UniqueConstraint(
                fields=["dedupe_key", "finished_on"], condition=Q(status="pending"), name="ops_dedupe_pending"
            ),
            models.UniqueConstraint(
                fields=["serial_key", "finished_on"], condition=Q(status="processing"), name="ops_serial_processing"
            ),
            models.CheckConstraint(
                condition=Q(status__in=sorted(TERMINAL_STATUSES)) | Q(finished_on=ACTIVE_DAY),
                name="ops_live_rows_are_active",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.operation_type} {self.id} ({self.status})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.status in ACTIVE_STATUSES:  # live again, or still: among the live rows
            self.finished_on = ACTIVE_DAY
            update_fields = kwargs.get("update_fields")
            if update_fields is not None and "status" in update_fields:
                kwargs["update_fields"] = {*update_fields, "finished_on"}
        super().save(*args, **kwargs)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class WorkerNode(models.Model):
    """A live Celery worker process of the slot plan, as it last reported itself.

    Each worker's main process upserts its row every heartbeat interval and
    deletes it on shutdown; a row not seen for a lease period is a dead node.
    """

    name = models.CharField(max_length=255, primary_key=True)  # e.g. "shared@host"
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    queues = models.JSONField(default=list)
    concurrency = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.name


class MetricsRollup(models.Model):
    """Prometheus counters and histograms of finished operations, kept as
    rollup rows: each scrape adds what finished since the last one (see
    `operations.metrics`), so they only grow, even when retention prunes the
    operations they counted, and a scrape never scans the whole table.

    One row per (type, series): a status's finish count (`finished:<status>`),
    or one bucket of a histogram (`run:<i>`, `wait:<i>`; `<i>` = len(BUCKETS) is +Inf)
    with the sum of the observed seconds in `total`.
    """

    operation_type = models.CharField(max_length=64)
    series = models.CharField(max_length=32)
    count = models.BigIntegerField(default=0)
    total = models.FloatField(default=0.0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["operation_type", "series"], name="ops_metrics_rollup_unique")]


class FinishedPerMinute(models.Model):
    """How many operations of a type finished with a status in one minute:
    the dashboard's throughput and failure charts, added to by the same pass
    as `MetricsRollup` (so drawing them reads at most a day of minutes, never
    the operations table). Minutes older than two days are dropped."""

    minute = models.DateTimeField()
    operation_type = models.CharField(max_length=64)
    status = models.CharField(max_length=16)
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["minute", "operation_type", "status"], name="ops_finished_minute_unique")
        ]


class PausedType(models.Model):
    """An operation type whose dispatch an operator paused: nothing of it is
    published and no worker claims it (its messages already in the broker are
    dropped at the claim) until it is resumed. Its operations wait, pending."""

    operation_type = models.CharField(max_length=64, primary_key=True)
    paused_at = models.DateTimeField(default=timezone.now)
    paused_by = models.CharField(max_length=150, blank=True, default="")

    def __str__(self) -> str:
        return self.operation_type


class ConsoleAction(models.Model):
    """The audit of a bulk action taken from the dashboard: who, when, what
    (with its filters) and how many operations it changed."""

    at = models.DateTimeField(default=timezone.now)
    user = models.CharField(max_length=150)
    action = models.CharField(max_length=32)
    filters = models.JSONField(default=dict, blank=True)
    count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-at"]
        indexes = [models.Index(fields=["-at"], name="ops_console_action_at")]

    def __str__(self) -> str:
        return f"{self.action} by {self.user}: {self.count}"


class MetricsWatermark(models.Model):
    """Up to when finished operations are in the rollup (one row, pk 1)."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    counted_until = models.DateTimeField()
