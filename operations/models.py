"""The operation: one row records the whole lifecycle of one piece of background work.

Rows change status only through `operations.services`, each change a conditional
UPDATE; `TRANSITIONS` below is the table of what is allowed.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q
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


TERMINAL_STATUSES = frozenset(
    {OperationStatus.COMPLETED, OperationStatus.FAILED, OperationStatus.CANCELLED}
)

# Every allowed transition, by the name of the service function that makes it:
# action -> (statuses it starts from, status it ends in). A transition from any
# other status is refused; `services` applies each as a conditional UPDATE.
TRANSITIONS: dict[str, tuple[frozenset[str], str | None]] = {
    "submit": (frozenset(), OperationStatus.PENDING),
    "claim": (frozenset({OperationStatus.PENDING}), OperationStatus.PROCESSING),
    "progress": (frozenset({OperationStatus.PROCESSING}), OperationStatus.PROCESSING),
    "complete": (frozenset({OperationStatus.PROCESSING}), OperationStatus.COMPLETED),
    "fail": (frozenset({OperationStatus.PROCESSING}), OperationStatus.FAILED),
    "reschedule": (frozenset({OperationStatus.PROCESSING}), OperationStatus.PENDING),
    "cancel": (frozenset({OperationStatus.PENDING}), OperationStatus.CANCELLED),
    "request_cancel": (frozenset({OperationStatus.PROCESSING}), OperationStatus.PROCESSING),
    "confirm_cancel": (frozenset({OperationStatus.PROCESSING}), OperationStatus.CANCELLED),
    "retry": (
        frozenset({OperationStatus.FAILED, OperationStatus.CANCELLED}),
        OperationStatus.PENDING,
    ),
    "delete": (frozenset(TERMINAL_STATUSES), None),
}

ERROR_MESSAGE_MAX = 5000


class Operation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    bank = models.ForeignKey(
        "banks.Bank", on_delete=models.CASCADE, related_name="operations", db_index=False
    )
    operation_type = models.CharField(max_length=64, choices=registry.choices)
    status = models.CharField(
        max_length=16, choices=OperationStatus.choices, default=OperationStatus.PENDING
    )
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
    parent = models.ForeignKey(
        "self", on_delete=models.CASCADE, null=True, blank=True, related_name="children"
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

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["bank", "-created_at"], name="ops_bank_created"),
            models.Index(fields=["status", "next_retry_at"], name="ops_status_due"),
            models.Index(fields=["-created_at"], name="ops_created"),
            # The dispatch window: messages in flight per type, and the queue
            # of pending operations per type in submission order.
            models.Index(
                fields=["operation_type", "dispatched_at"],
                condition=Q(status="pending"),
                name="ops_pending_dispatched",
            ),
            models.Index(
                fields=["operation_type", "created_at"],
                condition=Q(status="pending"),
                name="ops_pending_queue",
            ),
            models.Index(
                fields=["heartbeat_at"],
                condition=Q(status="processing"),
                name="ops_processing_heartbeat",
            ),
            models.Index(
                fields=["completed_at"],
                condition=Q(status__in=["completed", "failed", "cancelled"]),
                name="ops_terminal_completed",
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["dedupe_key"], condition=Q(status="pending"), name="ops_dedupe_pending"
            ),
            models.UniqueConstraint(
                fields=["serial_key"], condition=Q(status="processing"), name="ops_serial_processing"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.operation_type} {self.id} ({self.status})"

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
