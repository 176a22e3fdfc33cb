"""What every part of the lifecycle shares: the statuses, the refusals, the
retry policy's delay."""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone

from core.errors import Conflict, Missing
from operations import registry
from operations.models import (
    ERROR_MESSAGE_MAX,
    OperationStatus,
)

PENDING = OperationStatus.PENDING
PROCESSING = OperationStatus.PROCESSING
COMPLETED = OperationStatus.COMPLETED
FAILED = OperationStatus.FAILED
CANCELLED = OperationStatus.CANCELLED


class OperationNotFound(Missing):
    def detail(self) -> str:
        return f"operation {self} not found"


class TransitionRefused(Conflict):
    """The operation is not in a status the transition starts from (HTTP 409)."""

    def __init__(self, operation_id: str, action: str, status: str, reason: str = "") -> None:
        self.operation_id = operation_id
        self.action = action
        self.status = status
        self.reason = reason or f"cannot {action} an operation that is {status}"
        super().__init__(self.reason)

    def body(self) -> dict[str, Any]:
        return {"detail": self.reason, "status": self.status, "operation_id": self.operation_id}


def timestamp() -> datetime:
    return timezone.now()


def clip_error(message: str) -> str:
    return message if len(message) <= ERROR_MESSAGE_MAX else message[: ERROR_MESSAGE_MAX - 1] + "…"


def retry_delay(operation_type: registry.OperationType, attempt: int) -> float:
    """Seconds before retry number `attempt` (1-based).

    Explicit `retry_delays` win; otherwise exponential backoff with full jitter
    (uniform between 0 and base * 2^(attempt-1), capped), which spreads a burst
    of failures instead of retrying them in lockstep.
    """
    if operation_type.retry_delays:
        delays = operation_type.retry_delays
        return delays[min(attempt, len(delays)) - 1]
    ceiling = min(
        settings.OPS_RETRY_BACKOFF_CAP_SECONDS,
        settings.OPS_RETRY_BACKOFF_SECONDS * 2 ** (attempt - 1),
    )
    return random.uniform(0, ceiling)
