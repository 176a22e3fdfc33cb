"""Which events a finished operation raises, and their deliveries queued by the
finish hook, in the finishing transaction."""

from __future__ import annotations

import json
import uuid
from functools import partial
from typing import Any

from django.utils import timezone

from banks.models import Webhook, WebhookEvent
from banks.webhooks.policy import RETAIN_TYPES, WEBHOOK_DELIVERY
from operations import finish_hooks, lifecycle
from operations.models import Operation, OperationStatus


def events_of(finished: finish_hooks.Finished) -> list[tuple[str, dict[str, Any]]]:
    """The (event type, data) pairs a finished operation raises."""
    base = {"operation_type": finished.operation_type, "tag": finished.tag, "parent_id": finished.parent_id}
    if finished.status == OperationStatus.FAILED:
        return [(WebhookEvent.OPERATION_FAILED.value, {**base, "error": finished.error})]
    if finished.status != OperationStatus.COMPLETED:
        return []
    events = [(WebhookEvent.OPERATION_COMPLETED.value, {**base, "result": finished.result})]
    if finished.operation_type in RETAIN_TYPES:
        for document_id in finished.result.get("document_ids") or []:
            events.append((WebhookEvent.RETAIN_COMPLETED.value, {**base, "document_id": document_id}))
    if finished.operation_type == "consolidation":
        events.append((WebhookEvent.CONSOLIDATION_COMPLETED.value, {**base, "result": finished.result}))
    return events


def serialize_event(
    *, event: str, event_id: str, bank_id: str, operation_id: str | None, status: str, data: dict[str, Any]
) -> str:
    """The body of every attempt at delivering one event, serialized once."""
    return json.dumps(
        {
            "event": event,
            "event_id": event_id,
            "bank_id": bank_id,
            "operation_id": operation_id,
            "status": status,
            "timestamp": timezone.now().isoformat(),
            "data": data,
        },
        separators=(",", ":"),
        sort_keys=True,
        default=str,
    )


def _delivery(webhook_id: uuid.UUID | str, event: str, event_id: str, body: str, test: bool = False) -> lifecycle.Child:
    payload: dict[str, Any] = {"webhook_id": str(webhook_id), "event": event, "event_id": event_id, "body": body}
    if test:
        payload["test"] = True
    return lifecycle.Child(operation_type=WEBHOOK_DELIVERY, payload=payload)


def _queue_events(subscribed: list[tuple[uuid.UUID, list[str]]], finished: finish_hooks.Finished) -> None:
    """Inside the finishing transaction: one delivery per event and subscribed webhook."""
    deliveries = []
    for event, data in events_of(finished):
        targets = [pk for pk, event_types in subscribed if event in event_types]
        if not targets:
            continue
        event_id = str(uuid.uuid4())
        body = serialize_event(
            event=event,
            event_id=event_id,
            bank_id=finished.bank_id,
            operation_id=finished.operation_id,
            status=finished.status,
            data=data,
        )
        deliveries += [_delivery(pk, event, event_id, body) for pk in targets]
    if deliveries:
        lifecycle.operations_submit_many(bank_id=finished.bank_id, operations=deliveries)


def webhook_finish_hook(bank_id: str, operation_type: str) -> finish_hooks.Follower | None:
    """The finish hook's follower, asked when the bank may have webhooks: the
    enabled ones and what they subscribe to. A delivery never raises events
    (a failing receiver must not feed itself)."""
    if operation_type == WEBHOOK_DELIVERY:
        return None
    subscribed = list(Webhook.objects.filter(bank_id=bank_id, enabled=True).values_list("pk", "event_types"))
    if not subscribed:
        return None
    return partial(_queue_events, subscribed)


_OPERATIONS = Operation._meta.db_table
# The finish hook's question, asked by the finishing UPDATE itself (its
# RETURNING, or its WHERE): a probe of the partial index of enabled webhooks.
WEBHOOK_FINISH_HOOK = finish_hooks.Hook(
    may_act=(
        f"{_OPERATIONS}.operation_type <> '{WEBHOOK_DELIVERY}' AND EXISTS (SELECT 1 FROM "
        f"{Webhook._meta.db_table} hook WHERE hook.bank_id = {_OPERATIONS}.bank_id AND hook.enabled)"
    ),
    follower=webhook_finish_hook,
)
