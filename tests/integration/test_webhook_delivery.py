"""Webhook deliveries through real worker processes, to real receivers on
127.0.0.1: retried on 5xx and on timeouts with the same event id, failed at
once on a 410, one retain.completed per document of a real retain, and the
SSRF guard applied again at delivery time. Retry delays are shortened with
OPS_WEBHOOK_RETRY_DELAYS; the receivers are loopback, so the workers run with
OPS_WEBHOOK_ALLOW_PRIVATE=true except where the guard itself is tested."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from banks import webhooks
from banks.models import Webhook, WebhookDelivery
from operations import lifecycle
from operations.models import Operation
from tenancy.models import Bank
from tests.conftest import wait_for
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.workers

SECRET = "whsec-delivery-test"
FAST = {"OPS_SWEEP_INTERVAL_SECONDS": "0.5", "OPS_LEASE_SECONDS": "10", "OPS_HEARTBEAT_SECONDS": "1"}
TERMINAL = ("completed", "failed", "cancelled")


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    started = [Receiver() for _ in range(4)]
    for receiver in started:
        receiver.start()
    try:
        yield started
    finally:
        for receiver in started:
            receiver.stop()


def register(bank_id: str, url: str, event_types: list[str], **http_config: Any) -> Webhook:
    bank, _ = Bank.objects.get_or_create(bank_id=bank_id)
    return webhooks.webhook_create(
        bank=bank,
        url=url,
        secret=SECRET,
        event_types=event_types,
        enabled=True,
        http_config=http_config,
    )


def finished_deliveries(webhook: Webhook, count: int = 1, timeout: float = 60) -> list[Operation]:
    def done() -> list[Operation] | None:
        rows = [
            o
            for o in Operation.objects.filter(operation_type="webhook_delivery")
            if o.task_payload["webhook_id"] == str(webhook.pk)
        ]
        return rows if len(rows) >= count and all(o.status in TERMINAL for o in rows) else None

    found: list[Operation] = wait_for(done, timeout=timeout, interval=0.2, message=f"deliveries to {webhook.url}")
    return found


def log_of(webhook: Webhook) -> list[WebhookDelivery]:
    return list(WebhookDelivery.objects.filter(webhook=webhook).order_by("created_at", "attempt"))


def test_deliveries_are_retried_failed_and_logged(
    start_workers: Any, receivers: list[Receiver], settings: Any, admin: Any
) -> None:
    settings.OPS_WEBHOOK_ALLOW_PRIVATE = True  # registering loopback receivers in this process
    flaky, gone, slow, retains = receivers
    flaky.answer((500, 0))
    gone.answer((410, 0))
    slow.answer((200, 2.5))
    on_completed = register("alpha", flaky.url, ["operation.completed"])
    on_gone = register("beta", gone.url, ["operation.completed"])
    on_slow = register("gamma", slow.url, ["consolidation.completed"], timeout_seconds=1)
    on_retain = register("delta", retains.url, ["retain.completed"])
    start_workers(
        ready=2,
        beat=True,
        OPS_WORKER_MAX_SLOTS="4",
        OPS_WEBHOOK_ALLOW_PRIVATE="true",
        OPS_WEBHOOK_RETRY_DELAYS="0.3,0.3,0.3",
        **FAST,
    )

    echo = lifecycle.operation_submit(bank_id="alpha", operation_type="test_echo", payload={"value": 7}).operation
    lifecycle.operation_submit(bank_id="beta", operation_type="test_echo")
    webhooks.webhook_send_test(webhook=on_slow)
    response = admin.post(
        "banks/delta/memories",
        {
            "async": True,
            "items": [
                {"content": "Grace Hopper found a moth.", "document_id": "moth"},
                {"content": "Alan Turing asked a question.", "document_id": "question"},
            ],
        },
    )
    assert response.status_code == 200

    # 500, then 200: two attempts with the same body and event id, both logged.
    [delivery] = finished_deliveries(on_completed)
    assert delivery.status == "completed" and delivery.retry_count == 1
    first, second = flaky.requests
    assert first.body == second.body
    assert first.headers["x-ops-delivery"] == second.headers["x-ops-delivery"] == str(delivery.pk)
    body = json.loads(first.body)
    assert body["operation_id"] == str(echo.pk) and body["data"]["result"]["echo"] == 7
    assert [(d.attempt, d.outcome, d.status_code) for d in log_of(on_completed)] == [
        (1, "retrying", 500),
        (2, "delivered", 200),
    ]
    assert {str(d.event_id) for d in log_of(on_completed)} == {body["event_id"]}
    assert log_of(on_completed)[0].next_retry_at is not None and log_of(on_completed)[0].error == "HTTP 500"

    # 410: one attempt, failed for good.
    [delivery] = finished_deliveries(on_gone)
    assert delivery.status == "failed" and "HTTP 410" in (delivery.error_message or "")
    assert len(gone.requests) == 1
    assert [(d.attempt, d.outcome, d.status_code) for d in log_of(on_gone)] == [(1, "failed", 410)]

    # Slower than the timeout: the attempt times out and is retried.
    [delivery] = finished_deliveries(on_slow)
    assert delivery.status == "completed"
    log = log_of(on_slow)
    assert [(d.outcome, d.error) for d in log] == [("retrying", "timed out after 1s"), ("delivered", "")]
    assert len(slow.requests) == 2 and slow.requests[0].body == slow.requests[1].body

    # A real retain of two documents: one retain.completed each.
    deliveries = finished_deliveries(on_retain, count=2, timeout=120)
    assert {d.status for d in deliveries} == {"completed"}
    events = [json.loads(r.body) for r in retains.requests]
    assert sorted(e["data"]["document_id"] for e in events) == ["moth", "question"]
    assert {e["event"] for e in events} == {"retain.completed"}
    assert len({e["event_id"] for e in events}) == 2

    # Deliveries never raise events of their own.
    assert Operation.objects.filter(operation_type="webhook_delivery").count() == 5


def test_delivery_refuses_an_address_that_became_private(
    start_workers: Any, receivers: list[Receiver], settings: Any
) -> None:
    receiver = receivers[0]
    settings.OPS_WEBHOOK_ALLOW_PRIVATE = True  # allowed when it was registered...
    webhook = register("alpha", receiver.url.replace("127.0.0.1", "localhost"), ["operation.completed"])
    # ...but not by the workers: the name now resolves to a loopback address.
    start_workers(ready=2, beat=True, OPS_WORKER_MAX_SLOTS="3", OPS_WEBHOOK_ALLOW_PRIVATE="false", **FAST)
    webhooks.webhook_send_test(webhook=webhook)
    [delivery] = finished_deliveries(webhook)
    assert delivery.status == "failed"
    assert "localhost resolves to 127.0.0.1, a loopback address" in (delivery.error_message or "")
    assert receiver.requests == []
    [logged] = log_of(webhook)
    assert logged.outcome == "failed" and logged.status_code is None and "refused" in logged.error
