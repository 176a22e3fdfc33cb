"""webhook_delivery: POST one signed event to one webhook, and log the attempt.

The payload is `{webhook_id, event, event_id, body[, test]}`; the secret is
read from the webhook row. A 2xx completes the operation; a 4xx other than
408/429, a refused address or a redirect fails it for good (`PermanentError`);
timeouts, connection errors, 408, 429 and 5xx raise `DeliveryFailed`, which
the runner retries on the type's schedule (OPS_WEBHOOK_RETRY_DELAYS) with the
same body and event id. Every attempt writes one `WebhookDelivery` row, keyed
by (operation, attempt) so a re-run of the same attempt replaces it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from banks import webhooks
from banks.models import DeliveryOutcome, Webhook, WebhookDelivery
from operations import lifecycle, registry
from operations.handlers import OperationContext, PermanentError
from operations.models import Operation


class DeliveryFailed(Exception):
    """A transient delivery failure: retried on the webhook schedule."""


def handle(ctx: OperationContext) -> dict[str, Any]:
    payload = ctx.payload
    webhook = Webhook.objects.filter(pk=payload["webhook_id"]).first()
    if webhook is None:
        raise PermanentError(f"webhook {payload['webhook_id']} no longer exists")
    if not webhook.enabled and not payload.get("test"):
        raise PermanentError("the webhook is disabled")
    # Counted from the log, not from retry_count: a manual retry resets that,
    # and a run that crashed after its POST was an attempt too.
    attempt_number = WebhookDelivery.objects.filter(operation_id=ctx.operation_id).count() + 1
    ctx.progress("delivering", detail={"attempt": attempt_number})
    try:
        attempt = webhooks.post_event(
            webhook=webhook, event=payload["event"], delivery_id=ctx.operation_id, body=payload["body"].encode()
        )
    except webhooks.SecretUnreadable as exc:
        attempt = webhooks.Attempt(delivered=False, retry=False, error=str(exc))
    next_retry_at = _next_retry_at(ctx) if attempt.retry else None
    if attempt.delivered:
        outcome = DeliveryOutcome.DELIVERED
    elif next_retry_at is not None:
        outcome = DeliveryOutcome.RETRYING
    else:
        outcome = DeliveryOutcome.FAILED
    WebhookDelivery.objects.create(
        webhook=webhook,
        operation_id=ctx.operation_id,
        attempt=attempt_number,
        event_id=payload["event_id"],
        event_type=payload["event"],
        url=webhook.url,
        outcome=outcome,
        status_code=attempt.status_code,
        response_excerpt=attempt.excerpt,
        error=attempt.error,
        duration_ms=attempt.duration_ms,
        next_retry_at=next_retry_at,
    )
    if attempt.delivered:
        return {"status_code": attempt.status_code, "attempt": attempt_number, "duration_ms": attempt.duration_ms}
    message = f"delivery to {webhook.url} failed: {attempt.error}"
    if attempt.retry:
        raise DeliveryFailed(message)
    raise PermanentError(message)


def _next_retry_at(ctx: OperationContext) -> Any:
    """When the lifecycle service will retry this attempt (None: the retry
    budget is spent). The type's delays are explicit, so this is the same
    schedule `lifecycle.operation_fail` applies."""
    max_retries = Operation.objects.filter(pk=ctx.operation_id).values_list("max_retries", flat=True).first()
    if max_retries is None or ctx.attempt >= max_retries:
        return None
    delay = lifecycle.retry_delay(registry.get(webhooks.WEBHOOK_DELIVERY), ctx.attempt + 1)
    return timezone.now() + timedelta(seconds=delay)
