"""Webhooks without worker processes: the API, the SSRF guard, signatures and
the documented receiver check, events queued in the finishing transaction (and
not for a change that rolls back), the secret kept out of every output, and
the cost of the hook for a bank without webhooks.

Deliveries through real workers are in test_webhook_delivery.py."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from banks import webhooks
from banks.models import DeliveryOutcome, Webhook, WebhookDelivery
from banks.webhooks import addresses
from operations import finish_hooks, lifecycle
from operations.handlers import Lease
from operations.models import Operation
from tenancy.models import Bank
from tests.conftest import PROJECT_DIR
from tests.webhook_receiver import Receiver, receiver  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db

SECRET = "whsec-Tr0ub4dor&3-do-not-leak"
LOOPBACK_URL = "http://127.0.0.1:9/hook"  # never contacted: the discard port


def readme_receiver() -> dict[str, Any]:
    """The documented receiver example (docs/webhooks.md), run exactly as written."""
    text = (PROJECT_DIR / "docs" / "webhooks.md").read_text()
    block = re.search(r"\*\*Verifying a delivery\.\*\*.*?```python\n(.*?)```", text, re.S)
    assert block, "docs/webhooks.md lost its receiver example"
    namespace: dict[str, Any] = {}
    exec(block.group(1), namespace)
    return namespace


@pytest.fixture
def private_ok(settings: Any) -> None:
    settings.OPS_WEBHOOK_ALLOW_PRIVATE = True


def make_webhook(bank: Bank, url: str = LOOPBACK_URL, **fields: Any) -> Webhook:
    fields.setdefault("event_types", ["operation.completed", "operation.failed"])
    return webhooks.webhook_create(
        bank=bank,
        url=url,
        secret=fields.pop("secret", SECRET),
        enabled=fields.pop("enabled", True),
        http_config=fields.pop("http_config", {}),
        **fields,
    )


def claimed(bank_id: str = "alpha", operation_type: str = "test_echo") -> Lease:
    operation = lifecycle.operation_submit(bank_id=bank_id, operation_type=operation_type).operation
    lease = lifecycle.operation_claim(operation_id=str(operation.pk), worker="w@test", task_id="t1")
    assert lease is not None
    return lease


def deliveries() -> list[Operation]:
    return list(Operation.objects.filter(operation_type="webhook_delivery").order_by("created_at"))


# --- signatures and the documented receiver check ---------------------------------------


def test_the_readme_receiver_verifies_both_signatures_and_refuses_old_ones() -> None:
    documented = readme_receiver()
    verify, verify_hindsight = documented["verify"], documented["verify_hindsight"]
    body = b'{"event":"retain.completed","event_id":"e1"}'
    now = int(time.time())
    headers = webhooks.signature_headers(SECRET, body, now)
    assert verify(SECRET, body, headers["X-Ops-Signature"])
    assert verify_hindsight(SECRET, body, headers["X-Hindsight-Signature"])
    assert not verify("another secret", body, headers["X-Ops-Signature"])
    assert not verify(SECRET, body + b" ", headers["X-Ops-Signature"])
    assert not verify_hindsight(SECRET, body + b" ", headers["X-Hindsight-Signature"])
    assert not verify(SECRET, body, "garbage")
    # A captured delivery replayed later: its signed timestamp is too old.
    old = webhooks.signature_headers(SECRET, body, now - 301)
    assert not verify(SECRET, body, old["X-Ops-Signature"])
    assert verify(SECRET, body, webhooks.signature_headers(SECRET, body, now - 200)["X-Ops-Signature"])


def test_a_posted_event_carries_the_documented_headers(alpha: Any, private_ok: None, receiver: Receiver) -> None:
    webhook = make_webhook(alpha, receiver.url, http_config={"headers": {"X-Team": "blue"}})
    body = webhooks.serialize_event(
        event="operation.completed",
        event_id="e-1",
        bank_id="alpha",
        operation_id="op-1",
        status="completed",
        data={"n": 1},
    ).encode()
    attempt = webhooks.post_event(webhook=webhook, event="operation.completed", delivery_id="d-1", body=body)
    assert attempt.delivered and attempt.status_code == 200 and attempt.excerpt == "answered 200"
    [got] = receiver.requests
    assert got.body == body
    assert got.headers["content-type"] == "application/json"
    assert got.headers["x-ops-event"] == got.headers["x-hindsight-event"] == "operation.completed"
    assert got.headers["x-ops-delivery"] == "d-1"
    assert got.headers["x-team"] == "blue"
    documented = readme_receiver()
    assert documented["verify"](SECRET, got.body, got.headers["x-ops-signature"])
    assert documented["verify_hindsight"](SECRET, got.body, got.headers["x-hindsight-signature"])
    assert set(json.loads(got.body)) == {"event", "event_id", "bank_id", "operation_id", "status", "timestamp", "data"}


def test_answers_are_sorted_into_delivered_retried_and_permanent(
    alpha: Any, private_ok: None, receiver: Receiver
) -> None:
    webhook = make_webhook(alpha, receiver.url, http_config={"timeout_seconds": 1})
    receiver.answer((204, 0), (500, 0), (503, 0), (408, 0), (429, 0), (410, 0), (404, 0), (301, 0), (200, 1.5))
    outcomes = [
        webhooks.post_event(webhook=webhook, event="webhook.test", delivery_id="d", body=b"{}") for _ in range(9)
    ]
    assert [(a.delivered, a.retry) for a in outcomes] == [
        (True, False),
        (False, True),
        (False, True),
        (False, True),
        (False, True),
        (False, False),
        (False, False),
        (False, False),
        (False, True),
    ]
    assert outcomes[7].error == "HTTP 301 (redirects are not followed)"
    assert outcomes[8].error == "timed out after 1s" and outcomes[8].status_code is None


# --- the SSRF guard ------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "fe80::1",
        "fc00::1",
        "224.0.0.1",
        "ff02::1",
        "240.0.0.1",
        "0.0.0.0",
        "::",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "100.64.0.1",
        "192.0.2.1",
    ],
)
def test_the_address_check_refuses_non_public_addresses(address: str) -> None:
    assert webhooks.address_refusal(address) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_the_address_check_lets_public_addresses_through(address: str) -> None:
    assert webhooks.address_refusal(address) is None


def fake_resolver(address: str) -> Any:
    """A resolver answering one address for any name (nothing is contacted)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET

    def resolve(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        return [(family, socket.SOCK_STREAM, 6, "", (address, port))]

    return resolve


def test_a_name_is_judged_by_every_address_it_resolves_to(settings: Any) -> None:
    settings.OPS_WEBHOOK_ALLOW_PRIVATE = False
    webhooks.check_url("https://hooks.example/x", resolve=fake_resolver("93.184.216.34"))
    with pytest.raises(
        webhooks.UnsafeWebhookURL, match=r"^hooks\.example resolves to 127\.0\.0\.1, a loopback address; "
    ):
        webhooks.check_url("https://hooks.example/x", resolve=fake_resolver("127.0.0.1"))
    # An address written in the URL is named once.
    with pytest.raises(webhooks.UnsafeWebhookURL, match=r"^127\.0\.0\.1 is a loopback address; "):
        webhooks.check_url("https://127.0.0.1/x", resolve=fake_resolver("127.0.0.1"))
    with pytest.raises(webhooks.UnsafeWebhookURL, match=r"^::1 is a loopback address; "):
        webhooks.check_url("https://[::1]/x", resolve=fake_resolver("::1"))

    def both(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        return fake_resolver("93.184.216.34")(host, port) + fake_resolver("10.1.2.3")(host, port)

    with pytest.raises(webhooks.UnsafeWebhookURL, match="private"):
        webhooks.check_url("https://hooks.example/x", resolve=both)
    webhooks.check_url("https://hooks.example/x", allow_private=True, resolve=fake_resolver("127.0.0.1"))


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://[::1]:8080/hook",
        "http://localhost/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
    ],
)
def test_registration_refuses_private_addresses(admin: Any, alpha: Any, settings: Any, url: str) -> None:
    settings.OPS_WEBHOOK_ALLOW_PRIVATE = False
    response = admin.post("banks/alpha/webhooks", {"url": url, "secret": SECRET})
    assert response.status_code == 400, response.json()
    assert "url" in response.json()["errors"]
    assert not Webhook.objects.exists()


def test_delivery_refuses_a_name_that_now_resolves_to_loopback(alpha: Any, settings: Any, receiver: Receiver) -> None:
    settings.OPS_WEBHOOK_ALLOW_PRIVATE = True
    webhook = make_webhook(alpha, receiver.url.replace("127.0.0.1", "localhost"))
    settings.OPS_WEBHOOK_ALLOW_PRIVATE = False
    attempt = webhooks.post_event(webhook=webhook, event="webhook.test", delivery_id="d", body=b"{}")
    assert not attempt.delivered and not attempt.retry
    assert "refused: localhost resolves to 127.0.0.1, a loopback address" in attempt.error
    assert receiver.requests == []


def test_delivery_connects_to_the_address_the_guard_passed(
    alpha: Any, settings: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name is resolved once, by the guard, and the connection goes to
    that address (no second lookup a rebinding DNS could answer differently):
    a name only our resolver knows is delivered to, at the address it gave."""
    monkeypatch.setattr(addresses, "RESOLVE", fake_resolver("127.0.0.1"))  # the guard's resolver
    port = receiver.url.split(":")[2].split("/")[0]
    settings.OPS_WEBHOOK_ALLOW_PRIVATE = True
    webhook = make_webhook(alpha, f"http://hooks.invalid:{port}/hook")
    attempt = webhooks.post_event(webhook=webhook, event="webhook.test", delivery_id="d", body=b"{}")
    assert attempt.delivered, attempt.error
    assert receiver.requests[0].headers["host"] == f"hooks.invalid:{port}"
    settings.OPS_WEBHOOK_ALLOW_PRIVATE = False
    refused = webhooks.post_event(webhook=webhook, event="webhook.test", delivery_id="d", body=b"{}")
    assert not refused.delivered and not refused.retry and "hooks.invalid resolves to 127.0.0.1" in refused.error
    assert len(receiver.requests) == 1


# --- the API -------------------------------------------------------------------------


def test_create_list_get_patch_delete(admin: Any, alpha: Any, private_ok: None) -> None:
    created = admin.post(
        "banks/alpha/webhooks",
        {
            "url": LOOPBACK_URL,
            "secret": SECRET,
            "event_types": ["retain.completed", "operation.failed"],
            "http_config": {"timeout_seconds": 5, "headers": {"Authorization": "Bearer x"}},
        },
    )
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["bank_id"] == "alpha" and body["url"] == LOOPBACK_URL and body["enabled"] is True
    assert body["event_types"] == ["operation.failed", "retain.completed"]
    assert body["http_config"] == {"method": "POST", "timeout_seconds": 5, "headers": {"Authorization": "Bearer x"}}
    assert body["has_secret"] is True and "secret" not in body
    webhook_id = body["id"]

    default = admin.post("banks/alpha/webhooks", {"url": LOOPBACK_URL}).json()
    assert default["event_types"] == ["consolidation.completed"] and default["has_secret"] is False
    assert default["http_config"]["timeout_seconds"] == 30

    listed = admin.get("banks/alpha/webhooks").json()
    assert listed["total"] == 2 and [w["id"] for w in listed["items"]] == [webhook_id, default["id"]]
    assert admin.get("banks/alpha/webhooks?limit=1&offset=1").json()["items"][0]["id"] == default["id"]
    assert admin.get(f"banks/alpha/webhooks/{webhook_id}").json() == body

    patched = admin.patch(
        f"banks/alpha/webhooks/{webhook_id}",
        {
            "enabled": False,
            "secret": None,
            "url": None,
            "http_config": {"timeout_seconds": 7},
        },
    )
    assert patched.status_code == 200, patched.json()
    assert patched.json()["enabled"] is False and patched.json()["url"] == LOOPBACK_URL
    assert patched.json()["http_config"]["timeout_seconds"] == 7
    assert patched.json()["http_config"]["headers"] == {"Authorization": "Bearer x"}
    assert webhooks.unseal(Webhook.objects.get(pk=webhook_id).secret_sealed) == SECRET  # null: unchanged

    admin.patch(f"banks/alpha/webhooks/{webhook_id}", {"secret": "rotated"})
    assert webhooks.unseal(Webhook.objects.get(pk=webhook_id).secret_sealed) == "rotated"

    deleted = admin.delete(f"banks/alpha/webhooks/{webhook_id}")
    assert deleted.status_code == 200 and deleted.json() == {
        "success": True,
        "message": f"webhook {webhook_id} deleted",
        "deleted_count": 1,
    }
    assert admin.get(f"banks/alpha/webhooks/{webhook_id}").status_code == 404
    assert admin.get("banks/alpha/webhooks/not-a-uuid").status_code == 400


def test_the_secret_is_stored_encrypted(alpha: Any) -> None:
    webhook = make_webhook(alpha)
    stored = Webhook.objects.filter(pk=webhook.pk).values_list("secret_sealed", flat=True).get()
    assert SECRET not in stored and webhooks.unseal(stored) == SECRET


@pytest.mark.parametrize(
    "body, field",
    [
        ({"url": "not a url"}, "url"),
        ({"url": "ftp://127.0.0.1/x"}, "url"),
        ({"url": "http://user:pw@127.0.0.1/x"}, "url"),
        ({}, "url"),
        ({"url": LOOPBACK_URL, "event_types": ["retain.completed", "nope"]}, "event_types.1"),
        ({"url": LOOPBACK_URL, "event_types": []}, "event_types"),
        ({"url": LOOPBACK_URL, "enabled": "yes"}, "enabled"),
        ({"url": LOOPBACK_URL, "http_config": {"timeout_seconds": -1}}, "http_config.timeout_seconds"),
        ({"url": LOOPBACK_URL, "http_config": {"timeout_seconds": 100000}}, "http_config.timeout_seconds"),
        ({"url": LOOPBACK_URL, "http_config": {"headers": {f"X-H{i}": "v" for i in range(50)}}}, "http_config.headers"),
        ({"url": LOOPBACK_URL, "http_config": {"headers": {"X-Big": "v" * 5000}}}, "http_config.headers.X-Big"),
        ({"url": LOOPBACK_URL, "http_config": {"headers": {"X-Ops-Signature": "forged"}}}, "http_config.headers"),
        ({"url": LOOPBACK_URL, "http_config": {"headers": {"Bad Name": "v"}}}, "http_config.headers"),
        ({"url": LOOPBACK_URL, "http_config": {"method": "GET"}}, "http_config.method"),
        ({"url": LOOPBACK_URL, "http_config": "fast"}, "http_config"),
        ({"url": LOOPBACK_URL, "secret": 12}, "secret"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    admin: Any, alpha: Any, private_ok: None, body: dict[str, Any], field: str
) -> None:
    response = admin.post("banks/alpha/webhooks", body)
    assert response.status_code == 400, response.json()
    assert field in response.json()["errors"], response.json()
    assert not Webhook.objects.exists()


def test_bad_patch_and_paging_input_is_a_400(admin: Any, alpha: Any, private_ok: None) -> None:
    webhook = make_webhook(alpha)
    response = admin.patch(f"banks/alpha/webhooks/{webhook.pk}", {"http_config": {"timeout_seconds": 0}})
    assert response.status_code == 400 and "http_config.timeout_seconds" in response.json()["errors"]
    response = admin.patch(f"banks/alpha/webhooks/{webhook.pk}", [1, 2])
    assert response.status_code == 400
    assert "limit" in admin.get("banks/alpha/webhooks?limit=-1").json()["errors"]
    assert "cursor" in admin.get(f"banks/alpha/webhooks/{webhook.pk}/deliveries?cursor=nonsense").json()["errors"]
    assert "limit" in admin.get(f"banks/alpha/webhooks/{webhook.pk}/deliveries?limit=500").json()["errors"]


def test_scoped_keys_reach_only_their_banks_webhooks(
    admin: Any, alice: Any, bob: Any, charlie: Any, anonymous: Any, alpha: Any, beta: Any, private_ok: None
) -> None:
    theirs = make_webhook(beta)
    mine = make_webhook(alpha)
    for path in (
        f"banks/beta/webhooks/{theirs.pk}",
        f"banks/beta/webhooks/{theirs.pk}/deliveries",
        "banks/beta/webhooks",
        f"banks/alpha/webhooks/{theirs.pk}",
    ):
        assert alice.get(path).status_code == 404, path
    assert alice.post("banks/beta/webhooks", {"url": LOOPBACK_URL}).status_code == 404
    assert alice.patch(f"banks/beta/webhooks/{theirs.pk}", {"enabled": False}).status_code == 404
    assert alice.delete(f"banks/beta/webhooks/{theirs.pk}").status_code == 404
    assert alice.post(f"banks/beta/webhooks/{theirs.pk}/test").status_code == 404
    assert charlie.get(f"banks/alpha/webhooks/{mine.pk}").status_code == 404
    assert anonymous.get("banks/alpha/webhooks").status_code == 401
    assert Webhook.objects.get(pk=theirs.pk).enabled
    assert alice.get(f"banks/alpha/webhooks/{mine.pk}").status_code == 200
    assert [w["id"] for w in bob.get("banks/beta/webhooks").json()["items"]] == [str(theirs.pk)]


def test_deliveries_are_listed_newest_first_with_a_cursor(admin: Any, alpha: Any) -> None:
    webhook = make_webhook(alpha)
    operation_id, event_id = uuid.uuid4(), uuid.uuid4()
    now = timezone.now()
    for attempt in range(1, 6):
        WebhookDelivery.objects.create(
            webhook=webhook,
            operation_id=operation_id,
            event_id=event_id,
            event_type="operation.completed",
            url=webhook.url,
            attempt=attempt,
            outcome=DeliveryOutcome.RETRYING if attempt < 5 else "delivered",
            status_code=500 if attempt < 5 else 200,
            error="HTTP 500" if attempt < 5 else "",
            created_at=now + timedelta(seconds=attempt // 2),  # ties on created_at too
        )
    seen: list[int] = []
    cursor = None
    for _ in range(5):
        query = f"?limit=2&cursor={cursor}" if cursor else "?limit=2"
        page = admin.get(f"banks/alpha/webhooks/{webhook.pk}/deliveries{query}").json()
        seen += [item["attempts"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [5, 4, 3, 2, 1]
    newest = admin.get(f"banks/alpha/webhooks/{webhook.pk}/deliveries").json()["items"][0]
    assert newest["status"] == "delivered" and newest["last_response_status"] == 200
    assert newest["event_id"] == str(event_id) and newest["webhook_id"] == str(webhook.pk)


def test_the_test_action_queues_a_test_event(admin: Any, alpha: Any) -> None:
    webhook = make_webhook(alpha, enabled=False)
    response = admin.post(f"banks/alpha/webhooks/{webhook.pk}/test")
    assert response.status_code == 200, response.json()
    [delivery] = deliveries()
    assert str(delivery.pk) == response.json()["operation_id"]
    assert delivery.task_payload["event"] == "webhook.test" and delivery.task_payload["test"] is True
    assert json.loads(delivery.task_payload["body"])["event_id"] == response.json()["event_id"]


# --- events, in the finishing transaction ----------------------------------------------


def test_a_completed_operation_queues_one_delivery_per_subscribed_webhook(alpha: Any, beta: Any) -> None:
    completed = make_webhook(alpha, event_types=["operation.completed"])
    make_webhook(alpha, event_types=["operation.completed"], enabled=False)
    make_webhook(alpha, event_types=["consolidation.completed"])
    make_webhook(beta, event_types=["operation.completed"])
    lease = claimed()
    assert lifecycle.operation_complete(lease=lease, result={"n": 1})
    [delivery] = deliveries()
    assert delivery.bank_id == "alpha" and delivery.status == "pending"
    payload = delivery.task_payload
    assert payload["webhook_id"] == str(completed.pk) and payload["event"] == "operation.completed"
    body = json.loads(payload["body"])
    assert body["event"] == "operation.completed" and body["event_id"] == payload["event_id"]
    assert body["bank_id"] == "alpha" and body["operation_id"] == lease.operation_id
    assert body["status"] == "completed" and body["data"]["result"] == {"n": 1}
    assert body["data"]["operation_type"] == "test_echo"


def test_a_failure_raises_operation_failed_only_when_final(alpha: Any) -> None:
    make_webhook(alpha, event_types=["operation.failed"])
    lease = claimed()
    assert lifecycle.operation_fail(lease=lease, error="transient", permanent=False) == "pending"
    assert deliveries() == []
    Operation.objects.filter(pk=lease.operation_id).update(next_retry_at=None)
    again = lifecycle.operation_claim(operation_id=lease.operation_id, worker="w@test", task_id="t2")
    assert again is not None
    assert lifecycle.operation_fail(lease=again, error="boom", permanent=True) == "failed"
    [delivery] = deliveries()
    body = json.loads(delivery.task_payload["body"])
    assert body["event"] == "operation.failed" and body["status"] == "failed" and "boom" in body["data"]["error"]


def test_a_delivery_never_raises_events(alpha: Any) -> None:
    make_webhook(alpha, event_types=["operation.completed", "operation.failed"])
    webhook = make_webhook(alpha, event_types=["consolidation.completed"])
    queued = webhooks.webhook_send_test(webhook=webhook)
    lease = lifecycle.operation_claim(operation_id=str(queued.pk), worker="w@test", task_id="t1")
    assert lease is not None
    lifecycle.operation_complete(lease=lease, result={})
    assert [d.pk for d in deliveries()] == [queued.pk]


def test_retain_and_consolidation_events() -> None:
    def finished(operation_type: str, result: dict[str, Any]) -> finish_hooks.Finished:
        return finish_hooks.Finished(
            operation_id="op", bank_id="alpha", operation_type=operation_type, status="completed", result=result
        )

    retain = webhooks.events_of(finished("retain", {"document_ids": ["d1", "d2"], "units": 3}))
    assert [(e, d.get("document_id")) for e, d in retain] == [
        ("operation.completed", None),
        ("retain.completed", "d1"),
        ("retain.completed", "d2"),
    ]
    upload = webhooks.events_of(finished("file_convert_retain", {"document_ids": ["f1"]}))
    assert [e for e, _ in upload] == ["operation.completed", "retain.completed"]
    consolidation = webhooks.events_of(finished("consolidation", {"units": 4}))
    assert [e for e, _ in consolidation] == ["operation.completed", "consolidation.completed"]
    assert consolidation[1][1]["result"] == {"units": 4}


def test_one_event_reaches_every_subscriber_with_one_event_id(alpha: Any) -> None:
    first = make_webhook(alpha, event_types=["operation.completed"])
    second = make_webhook(alpha, event_types=["operation.completed", "operation.failed"])
    lifecycle.operation_complete(lease=claimed(), result={})
    rows = deliveries()
    assert {d.task_payload["webhook_id"] for d in rows} == {str(first.pk), str(second.pk)}
    assert len({d.task_payload["event_id"] for d in rows}) == 1


def test_a_rolled_back_change_sends_nothing(alpha: Any) -> None:
    make_webhook(alpha, event_types=["operation.completed"])
    lease = claimed()

    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        assert lifecycle.operation_complete(lease=lease, result={})
        assert len(deliveries()) == 1  # queued inside the transaction...
        raise Abort
    assert deliveries() == []  # ...and gone with it
    assert Operation.objects.get(pk=lease.operation_id).status == "processing"


def test_without_webhooks_a_finish_is_one_statement(alpha: Any) -> None:
    lease = claimed()
    with CaptureQueriesContext(connection) as queries:
        assert lifecycle.operation_complete(lease=lease, result={})
    statements = [q["sql"] for q in queries.captured_queries]
    # The hook's question rides in the finishing UPDATE; no transaction around it.
    assert len(statements) == 1, statements
    assert statements[0].startswith("UPDATE") and "banks_webhook" in statements[0]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET enable_seqscan = off")  # the tiny test table would be scanned anyway
            cursor.execute("EXPLAIN SELECT 1 FROM banks_webhook hook WHERE hook.bank_id = 'alpha' AND hook.enabled")
            plan = " ".join(row[0] for row in cursor.fetchall())
            cursor.execute("RESET enable_seqscan")
        assert "banks_webhook_enabled" in plan, plan


def test_with_webhooks_a_finish_asks_the_hook_inside_its_transaction(alpha: Any) -> None:
    make_webhook(alpha, event_types=["operation.completed"])
    lease = claimed()
    with CaptureQueriesContext(connection) as queries:
        assert lifecycle.operation_complete(lease=lease, result={})
    statements = [q["sql"] for q in queries.captured_queries]
    # The quiet UPDATE does not apply (the hook may act); then, in one
    # transaction, the UPDATE returning the hook's answer, the follower's
    # query and the delivery it queues.
    assert statements[0].startswith("UPDATE") and "NOT (" in statements[0]
    assert any(s.startswith("UPDATE") and "RETURNING" in s for s in statements[1:])
    assert len(deliveries()) == 1


# --- the secret stays secret ------------------------------------------------------------


def test_the_secret_appears_in_no_response_payload_log_or_admin_page(
    admin: Any, alpha: Any, private_ok: None, caplog: Any, client: Any, django_user_model: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    responses = []
    created = admin.post(
        "banks/alpha/webhooks",
        {
            "url": LOOPBACK_URL,
            "secret": SECRET,
            "event_types": ["operation.completed", "operation.failed"],
        },
    )
    webhook_id = created.json()["id"]
    responses += [
        created,
        admin.get("banks/alpha/webhooks"),
        admin.get(f"banks/alpha/webhooks/{webhook_id}"),
        admin.patch(f"banks/alpha/webhooks/{webhook_id}", {"secret": SECRET, "enabled": True}),
        admin.post(f"banks/alpha/webhooks/{webhook_id}/test"),
    ]
    lifecycle.operation_complete(lease=claimed(), result={})
    lifecycle.operation_fail(lease=claimed(), error="boom", permanent=True)
    for operation in Operation.objects.all():
        responses.append(admin.get(f"banks/alpha/operations/{operation.pk}?include_payload=true"))
        assert SECRET not in json.dumps(operation.task_payload)
    responses.append(admin.get("banks/alpha/operations"))
    responses.append(admin.get(f"banks/alpha/webhooks/{webhook_id}/deliveries"))

    user = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    webhook = Webhook.objects.get(pk=webhook_id)
    WebhookDelivery.objects.create(
        webhook=webhook,
        operation_id=uuid.uuid4(),
        event_id=uuid.uuid4(),
        event_type="webhook.test",
        url=webhook.url,
        attempt=1,
        outcome="delivered",
        status_code=200,
    )
    pages = [client.get("/admin/banks/webhook/"), client.get(f"/admin/banks/webhook/{webhook_id}/change/")]
    assert all(page.status_code == 200 for page in pages)
    assert "webhook.test" in pages[1].content.decode()  # the delivery log is shown inline
    for response in responses + pages:
        assert response.status_code in (200, 201), response.content[:300]
        assert SECRET not in response.content.decode()
    assert SECRET not in caplog.text
    for page in [PROJECT_DIR / "README.md", *(PROJECT_DIR / "docs").glob("*.md")]:
        assert SECRET not in page.read_text()


# --- the handler, one run at a time -------------------------------------------------------


def run_delivery(operation_id: Any) -> str | None:
    """Claim a delivery and run its handler once, in this process, recording
    the outcome as the runner does."""
    from banks.operation_types import webhook_delivery
    from operations.handlers import OperationContext, PermanentError

    lease = lifecycle.operation_claim(operation_id=str(operation_id), worker="w@test", task_id=str(uuid.uuid4()))
    assert lease is not None
    try:
        result = webhook_delivery.handle(OperationContext(lease=lease, lifecycle=lifecycle))
    except PermanentError as exc:
        return lifecycle.operation_fail(lease=lease, error=str(exc), permanent=True)
    except webhook_delivery.DeliveryFailed as exc:
        return lifecycle.operation_fail(lease=lease, error=str(exc), permanent=False)
    lifecycle.operation_complete(lease=lease, result=result)
    return "completed"


def test_a_manual_retry_goes_on_numbering_the_attempts(
    admin: Any, alpha: Any, private_ok: None, receiver: Receiver
) -> None:
    webhook = make_webhook(alpha, receiver.url)
    receiver.answer((410, 0))
    queued = webhooks.webhook_send_test(webhook=webhook)
    assert run_delivery(queued.pk) == "failed"
    assert admin.post(f"banks/alpha/operations/{queued.pk}/retry").status_code == 200
    assert run_delivery(queued.pk) == "completed"
    log = list(WebhookDelivery.objects.filter(operation_id=queued.pk).order_by("attempt"))
    assert [(d.attempt, d.outcome, d.status_code) for d in log] == [(1, "failed", 410), (2, "delivered", 200)]
    assert len({d.event_id for d in log}) == 1 and receiver.requests[0].body == receiver.requests[1].body


def test_a_deleted_or_disabled_webhook_is_not_delivered_to(alpha: Any, private_ok: None, receiver: Receiver) -> None:
    webhook = make_webhook(alpha, receiver.url, event_types=["operation.completed"])
    lifecycle.operation_complete(lease=claimed(), result={})
    [disabled_delivery] = deliveries()
    Webhook.objects.filter(pk=webhook.pk).update(enabled=False)
    assert run_delivery(disabled_delivery.pk) == "failed"
    assert "disabled" in (Operation.objects.get(pk=disabled_delivery.pk).error_message or "")
    test_delivery = webhooks.webhook_send_test(webhook=webhook)  # a test event goes even so
    assert run_delivery(test_delivery.pk) == "completed"
    gone = webhooks.webhook_send_test(webhook=webhook)
    webhook.delete()
    assert run_delivery(gone.pk) == "failed"
    assert "no longer exists" in (Operation.objects.get(pk=gone.pk).error_message or "")
    assert len(receiver.requests) == 1
