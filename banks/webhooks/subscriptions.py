"""Creating and changing a bank's webhooks, and sending one a test event."""

from __future__ import annotations

import uuid
from typing import Any

from django.db import transaction

from banks.models import Webhook
from banks.webhooks.events import _delivery, serialize_event
from banks.webhooks.policy import TEST_EVENT, WEBHOOK_DELIVERY
from banks.webhooks.sealing import seal
from operations import lifecycle
from operations.models import Operation, OperationStatus
from tenancy.models import Bank


def webhook_create(
    *, bank: Bank, url: str, secret: str, event_types: list[str], enabled: bool, http_config: dict[str, Any]
) -> Webhook:
    """Register a webhook. The caller has checked the URL (check_url_for_registration)."""
    return Webhook.objects.create(
        bank=bank,
        url=url,
        secret_sealed=seal(secret),
        event_types=event_types,
        enabled=enabled,
        http_config=http_config,
    )


def webhook_update(*, webhook: Webhook, fields: dict[str, Any]) -> Webhook:
    """Change the given fields (`secret` is sealed; `http_config` keys replace
    the stored ones key by key)."""
    for name, value in fields.items():
        if name == "secret":
            webhook.secret_sealed = seal(value)
        elif name == "http_config":
            webhook.http_config = {**webhook.http_config, **value}
        else:
            setattr(webhook, name, value)
    webhook.save()
    return webhook


def webhook_send_test(*, webhook: Webhook) -> Operation:
    """Queue a `webhook.test` event to this webhook alone (whatever its event
    types, even when disabled: it is how one checks a receiver)."""
    event_id = str(uuid.uuid4())
    body = serialize_event(
        event=TEST_EVENT,
        event_id=event_id,
        bank_id=webhook.bank_id,
        operation_id=None,
        status=OperationStatus.COMPLETED,
        data={"message": "a test event", "webhook_id": str(webhook.pk)},
    )
    child = _delivery(webhook.pk, TEST_EVENT, event_id, body, test=True)
    with transaction.atomic():
        return lifecycle.operation_submit(
            bank_id=webhook.bank_id, operation_type=WEBHOOK_DELIVERY, payload=child.payload
        ).operation
