"""The REST API: every endpoint, filter and error code, on PostgreSQL."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from operations import lifecycle, selectors
from operations.models import Operation, WorkerNode
from tests.plans import file_all_finished

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]

ZERO_ID = "00000000-0000-0000-0000-000000000000"


def make(bank: str = "alpha", operation_type: str = "test_echo", status: str = "pending", **fields: Any) -> Operation:
    """An operation brought to `status` through the lifecycle service."""
    operation = lifecycle.operation_submit(bank_id=bank, operation_type=operation_type, **fields).operation
    if status == "cancelled":
        lifecycle.operation_cancel(operation_id=operation.pk)
    elif status != "pending":
        lease = lifecycle.operation_claim(operation_id=str(operation.pk), worker="w@n", task_id="t")
        assert lease is not None
        if status == "completed":
            lifecycle.operation_complete(lease=lease, result={"ok": True})
        elif status == "failed":
            lifecycle.operation_fail(lease=lease, error="boom", permanent=True)
    return Operation.objects.get(pk=operation.pk)


def ids(response: Any) -> list[str]:
    return [o["id"] for o in response.json()["operations"]]


# --- banks ------------------------------------------------------------------------------


def test_list_banks_shows_only_reachable_ones(admin: Any, alice: Any, alpha: Any, beta: Any) -> None:
    everything = admin.get("banks").json()
    assert [b["bank_id"] for b in everything["banks"]] == ["alpha", "beta"]
    assert everything["total"] == 2 and everything["limit"] == 100 and everything["offset"] == 0
    assert [b["bank_id"] for b in alice.get("banks").json()["banks"]] == ["alpha"]
    assert admin.get("banks", {"limit": 1, "offset": 1}).json()["banks"][0]["bank_id"] == "beta"
    assert admin.get("banks", {"limit": 0}).status_code == 400


def test_put_creates_then_updates_a_bank(admin: Any) -> None:
    created = admin.put("banks/newbank", {"name": "New", "enable_auto_consolidation": True})
    assert created.status_code == 200
    assert created.json()["bank_id"] == "newbank" and created.json()["enable_auto_consolidation"] is True
    updated = admin.put(
        "banks/newbank",
        # Explicit nulls keep values; fields Hindsight sends that we do not use are ignored.
        {"name": None, "mission": "remember", "disposition": {"skepticism": 3}},
    )
    assert updated.status_code == 200
    assert updated.json()["name"] == "New" and updated.json()["mission"] == "remember"
    assert updated.json()["enable_auto_consolidation"] is True


def test_put_with_bad_input_is_400_and_writes_nothing(admin: Any) -> None:
    bad = admin.put("banks/newbank", {"enable_observations": "perhaps"})
    assert bad.status_code == 400
    assert "enable_observations" in bad.json()["errors"]
    assert bad.json()["detail"].startswith("invalid input: enable_observations")
    nul = admin.put("banks/newbank", {"config": {"key\u0000": "value"}})
    assert nul.status_code == 400 and "config" in nul.json()["errors"]
    not_an_object = admin.put("banks/newbank", [1, 2])
    assert not_an_object.status_code == 400
    malformed_id = admin.put("banks/bad%20id!", {})
    assert malformed_id.status_code == 400 and "bank_id" in malformed_id.json()["errors"]
    assert admin.get("banks").json()["total"] == 0


def test_get_patch_delete_and_stats_of_a_bank(admin: Any, alpha: Any) -> None:
    assert admin.get("banks/alpha").json()["name"] == "Alpha"
    patched = admin.patch("banks/alpha", {"enable_observations": False})
    assert patched.status_code == 200 and patched.json()["enable_observations"] is False
    make(status="failed")
    make(status="pending")
    stats = admin.get("banks/alpha/stats").json()
    assert stats["total_operations"] == 2 and stats["failed_operations"] == 1
    assert stats["pending_operations"] == 1 and stats["operations_by_status"]["completed"] == 0
    deleted = admin.delete("banks/alpha")
    assert deleted.status_code == 200 and deleted.json()["deleted_operations"] == 2
    assert admin.get("banks/alpha").status_code == 404
    assert Operation.objects.count() == 0


# --- listing operations ------------------------------------------------------------------


def test_list_operations_newest_first_with_every_field(admin: Any, alpha: Any) -> None:
    first = make(tag="a", document_id="doc-1", items_count=3)
    second = make(status="completed")
    body = admin.get("banks/alpha/operations").json()
    assert body["bank_id"] == "alpha" and body["total"] == 2 and body["limit"] == 20 and body["offset"] == 0
    assert ids_of(body) == [str(second.pk), str(first.pk)]
    assert body["items"] == body["operations"]  # as Hindsight's documentation examples read them
    item = body["operations"][1]
    assert item == {
        "id": str(first.pk),
        "operation_id": str(first.pk),
        "bank_id": "alpha",
        "task_type": "test_echo",
        "operation_type": "test_echo",
        "status": "pending",
        "items_count": 3,
        "document_id": "doc-1",
        "filename": None,
        "mental_model_id": None,
        "tag": "a",
        "parent_id": None,
        "details": None,
        "execution": {"worker": None, "max_retries": 3, "heartbeat_at": None, "cancel_requested_at": None},
        "created_at": item["created_at"],
        "updated_at": item["updated_at"],
        "started_at": None,
        "completed_at": None,
        "error_message": None,
        "retry_count": 0,
        "next_retry_at": None,
        "progress": None,
    }


def ids_of(body: dict[str, Any]) -> list[str]:
    return [o["id"] for o in body["operations"]]


def test_status_and_type_filters_repeat_and_split_on_commas(admin: Any, alpha: Any) -> None:
    pending = make(status="pending")
    failed = make(status="failed")
    done = make(status="completed", operation_type="test_sleep")
    url = "banks/alpha/operations"
    assert set(ids(admin.get(f"{url}?status=pending&status=failed"))) == {str(pending.pk), str(failed.pk)}
    assert set(ids(admin.get(f"{url}?status=pending,completed"))) == {str(pending.pk), str(done.pk)}
    assert ids(admin.get(f"{url}?type=test_sleep")) == [str(done.pk)]
    assert set(ids(admin.get(f"{url}?type=test_echo,test_sleep&status=completed,failed"))) == {
        str(failed.pk),
        str(done.pk),
    }


def test_an_id_prefix_finds_operations_by_their_short_id(admin: Any, alpha: Any, beta: Any) -> None:
    low = make(operation_id="0123abcd-0000-4000-8000-000000000000")
    high = make(operation_id="0123abcd-ffff-4fff-bfff-ffffffffffff")
    other = make(operation_id="0123abce-0000-4000-8000-000000000000")
    make(bank="beta", operation_id="0123abcd-1111-4000-8000-000000000000")
    url = "banks/alpha/operations"
    assert set(ids(admin.get(url, {"id_prefix": "0123ABCD"}))) == {str(low.pk), str(high.pk)}  # the range's both ends
    assert ids(admin.get(url, {"id_prefix": "0123abcd-f"})) == [str(high.pk)]  # dashes as ids are written
    assert ids(admin.get(url, {"id_prefix": str(other.pk)})) == [str(other.pk)]
    assert ids(admin.get(url, {"id_prefix": "0123abcc"})) == []
    for bad in ("0123abc", "0123abcg", "0" * 33):
        response = admin.get(url, {"id_prefix": bad})
        assert response.status_code == 400, bad
        assert "hexadecimal digits of an operation id" in str(response.json()), response.json()


def test_tag_time_parent_filters(admin: Any, alpha: Any) -> None:
    tagged = make(tag="nightly")
    old = make()
    Operation.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=5))
    parent = make(operation_type="test_batch")
    child = make(parent_id=parent.pk)
    url = "banks/alpha/operations"
    assert ids(admin.get(url, {"tag": "nightly"})) == [str(tagged.pk)]
    assert str(old.pk) not in ids(admin.get(url, {"within_hours": 2}))
    assert len(ids(admin.get(url, {"within_hours": 6}))) == 4
    cutoff = (timezone.now() - timedelta(hours=1)).isoformat()
    assert ids(admin.get(url, {"created_before": cutoff})) == [str(old.pk)]
    assert str(old.pk) not in ids(admin.get(url, {"created_after": cutoff}))
    assert ids(admin.get(url, {"parent_id": str(parent.pk)})) == [str(child.pk)]
    assert str(parent.pk) not in ids(admin.get(url, {"exclude_parents": "true"}))
    assert str(parent.pk) in ids(admin.get(url, {"exclude_parents": "false"}))


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=running", "status.0"),
        ("status=pending,nope", "status.1"),
        ("type=no_such_type", "type.0"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("offset=-1", "offset"),
        ("within_hours=0", "within_hours"),
        ("within_hours=soon", "within_hours"),
        ("created_after=yesterday", "created_after"),
        ("created_before=2026-13-45", "created_before"),
        ("created_after=2026-02-01T00:00:00Z&created_before=2026-01-01T00:00:00Z", "created_after"),
        ("parent_id=42", "parent_id"),
        ("exclude_parents=maybe", "exclude_parents"),
        ("tag=" + "x" * 201, "tag"),
    ],
)
def test_invalid_filters_are_400_naming_the_parameter(admin: Any, alpha: Any, query: str, field: str) -> None:
    response = admin.get(f"banks/alpha/operations?{query}")
    assert response.status_code == 400
    body = response.json()
    assert field in body["errors"], body
    assert body["detail"].startswith("invalid input: ")


def test_a_wrong_status_or_type_is_answered_with_the_valid_ones(admin: Any, alpha: Any) -> None:
    body = admin.get("banks/alpha/operations?status=done").json()
    assert body["errors"]["status.0"] == ['"done" is not one of: pending, processing, completed, failed, cancelled']
    (message,) = admin.get("banks/alpha/operations?type=retian").json()["errors"]["type.0"]
    assert message.startswith('"retian" is not one of: ') and "retain" in message.split(": ", 1)[1].split(", ")


def test_pagination_walk(admin: Any, alpha: Any) -> None:
    made = [make() for _ in range(23)]
    # Several rows share one creation time: the order must still be total.
    Operation.objects.filter(pk__in=[o.pk for o in made[:6]]).update(created_at=timezone.now())
    seen: list[str] = []
    offset = 0
    while True:
        body = admin.get("banks/alpha/operations", {"limit": 5, "offset": offset}).json()
        assert body["total"] == 23
        if not body["operations"]:
            break
        seen += ids_of(body)
        offset += 5
    assert len(seen) == len(set(seen)) == 23
    created = {str(o.pk): o.created_at for o in Operation.objects.all()}
    times = [created[i] for i in seen]
    assert times == sorted(times, reverse=True)


def test_a_time_filter_from_the_beginning_of_time_lists_everything(admin: Any, alpha: Any) -> None:
    made = make()
    for since in ("0001-01-01T00:00:00Z", "0001-01-02T00:00:00+01:00"):
        response = admin.get("banks/alpha/operations", {"created_after": since})
        assert response.status_code == 200, response.content
        assert ids(response) == [str(made.pk)]


def test_a_total_past_the_count_cap_is_the_databases_estimate(
    admin: Any, alpha: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counting stops at COUNT_CAP (a first page costs the same in a bank of
    any size); past it PostgreSQL's estimate stands in, flagged. SQLite counts."""
    monkeypatch.setattr(selectors, "COUNT_CAP", 5)
    for _ in range(4):
        make()
    body = admin.get("banks/alpha/operations", {"limit": 2}).json()
    assert (body["total"], body["total_is_estimate"], len(body["operations"])) == (4, False, 2)
    for _ in range(4):
        make()
    body = admin.get("banks/alpha/operations", {"limit": 20}).json()
    assert len(body["operations"]) == 8
    if connection.vendor == "postgresql":
        assert body["total_is_estimate"] is True and body["total"] >= 5
    else:
        assert (body["total"], body["total_is_estimate"]) == (8, False)
    everything = admin.get("operations", {"bank_id": "alpha"}).json()
    assert everything["total_is_estimate"] is body["total_is_estimate"]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the estimate is PostgreSQL's planner's")
def test_an_estimated_total_is_not_compiled(admin: Any, alpha: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The estimate's EXPLAIN costs one row, whatever the table's size: an
    unlimited plan's cost grows with the table, and past `jit_above_cost`
    PostgreSQL compiles what it only explains (3 ms at 100M rows)."""
    monkeypatch.setattr(selectors, "COUNT_CAP", 2)
    for _ in range(3):
        make()
    with CaptureQueriesContext(connection) as queries:
        body = admin.get("banks/alpha/operations").json()
    assert body["total_is_estimate"] is True
    (explained,) = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("EXPLAIN")]
    unlimited = re.sub(r" LIMIT 1$", "", explained)
    assert unlimited != explained

    def plan(statement: str) -> dict[str, Any]:
        with connection.cursor() as cursor:
            cursor.execute(statement)
            found: dict[str, Any] = cursor.fetchone()[0][0]
            return found

    one_row, every_row = plan(explained)["Plan"]["Total Cost"], plan(unlimited)["Plan"]["Total Cost"]
    assert every_row > 2 * one_row  # as a table grows, only the unlimited cost does
    with connection.cursor() as cursor:  # this table's size, made small
        cursor.execute("SET jit_above_cost = %s", [2 * one_row])
    try:
        if "JIT" not in plan(unlimited):
            pytest.skip("this PostgreSQL compiles nothing (no JIT provider)")
        assert "JIT" not in plan(explained)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET jit_above_cost")


def test_pages_are_the_newest_first_whether_recent_or_old(
    admin: Any, alpha: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page is looked for among the last RECENT's operations first (on
    PostgreSQL) and in the whole list when those are too few: either way
    every page is the same slice of the newest-first order, and `total`
    counts all of them, recent or old."""
    monkeypatch.setattr(selectors, "COUNT_CAP", 8)
    now = timezone.now()
    made = [make(status="completed") for _ in range(9)]
    for age, operation in enumerate(made[:5]):  # 20 to 24 days old, each under its own week
        moment = now - timedelta(days=20 + age)
        Operation.objects.filter(pk=operation.pk).update(created_at=moment, completed_at=moment)
    file_all_finished()
    made.append(make())  # and one live
    newest_first = list(
        Operation.objects.filter(bank_id="alpha").order_by("-created_at", "-id").values_list("pk", flat=True)
    )
    assert len(newest_first) == 10
    for limit, offset in [(1, 0), (4, 0), (5, 0), (5, 2), (6, 0), (3, 4), (10, 0), (20, 0), (2, 9), (5, 10)]:
        body = admin.get("banks/alpha/operations", {"limit": limit, "offset": offset}).json()
        assert ids_of(body) == [str(pk) for pk in newest_first[offset : offset + limit]], (limit, offset)
        if connection.vendor == "sqlite":
            assert (body["total"], body["total_is_estimate"]) == (10, False)
        else:  # past the cap of 8, whichever rows the page came from
            assert body["total_is_estimate"] is True and body["total"] >= 8, (limit, offset, body["total"])
    monkeypatch.setattr(selectors, "COUNT_CAP", 1000)
    for limit, offset in [(2, 0), (6, 0), (4, 3)]:
        body = admin.get("banks/alpha/operations", {"limit": limit, "offset": offset}).json()
        assert ids_of(body) == [str(pk) for pk in newest_first[offset : offset + limit]], (limit, offset)
        assert (body["total"], body["total_is_estimate"]) == (10, False)


# --- one operation -----------------------------------------------------------------------


def test_operation_detail(admin: Any, alpha: Any) -> None:
    operation = make(status="completed", payload={"secret_free": 1})
    body = admin.get(f"banks/alpha/operations/{operation.pk}").json()
    assert body["operation_id"] == str(operation.pk) and body["status"] == "completed"
    assert body["result_metadata"] == {"ok": True} and body["child_operations"] is None
    assert "task_payload" not in body
    with_payload = admin.get(f"banks/alpha/operations/{operation.pk}", {"include_payload": "true"}).json()
    assert with_payload["task_payload"] == {"secret_free": 1}
    assert admin.get(f"banks/alpha/operations/{operation.pk}", {"include_payload": "nah"}).status_code == 400


def test_parent_detail_lists_its_children(admin: Any, alpha: Any) -> None:
    parent = make(operation_type="test_batch")
    kids = [make(parent_id=parent.pk) for _ in range(2)]
    body = admin.get(f"banks/alpha/operations/{parent.pk}").json()
    assert [c["id"] for c in body["child_operations"]] == [str(k.pk) for k in kids]
    assert body["progress"]["total"] == 2


def test_operation_ids_malformed_unknown_or_in_another_bank(admin: Any, alpha: Any, beta: Any) -> None:
    elsewhere = make(bank="beta")
    bad = admin.get("banks/alpha/operations/not-a-uuid")
    assert bad.status_code == 400 and "operation_id" in bad.json()["errors"]
    assert admin.get(f"banks/alpha/operations/{ZERO_ID}").status_code == 404
    assert admin.get(f"banks/alpha/operations/{elsewhere.pk}").status_code == 404
    assert admin.delete(f"banks/alpha/operations/{elsewhere.pk}").status_code == 404
    assert admin.post(f"banks/alpha/operations/{elsewhere.pk}/retry").status_code == 404
    assert Operation.objects.get(pk=elsewhere.pk).status == "pending"


def test_cancel_pending_running_and_finished(admin: Any, alpha: Any) -> None:
    pending, running, done = make(), make(status="processing"), make(status="completed")
    first = admin.delete(f"banks/alpha/operations/{pending.pk}")
    assert first.status_code == 200
    assert first.json() == {
        "success": True,
        "message": "operation cancelled",
        "operation_id": str(pending.pk),
        "status": "cancelled",
    }
    second = admin.delete(f"banks/alpha/operations/{running.pk}")
    assert second.status_code == 202 and second.json()["status"] == "processing"
    assert Operation.objects.get(pk=running.pk).cancel_requested_at is not None
    refused = admin.delete(f"banks/alpha/operations/{done.pk}")
    assert refused.status_code == 409
    assert refused.json()["status"] == "completed" and "cannot cancel" in refused.json()["detail"]


def test_retry_and_delete(admin: Any, alpha: Any) -> None:
    failed, done, pending = make(status="failed"), make(status="completed"), make()
    retried = admin.post(f"banks/alpha/operations/{failed.pk}/retry")
    assert retried.status_code == 200 and retried.json()["status"] == "pending"
    assert admin.post(f"banks/alpha/operations/{pending.pk}/retry").status_code == 409
    assert admin.delete(f"banks/alpha/operations/{pending.pk}/delete").status_code == 409
    deleted = admin.delete(f"banks/alpha/operations/{done.pk}/delete")
    assert deleted.status_code == 200 and deleted.json()["success"] is True
    assert not Operation.objects.filter(pk=done.pk).exists()


def test_bulk_cancel_and_stats(admin: Any, alpha: Any) -> None:
    for _ in range(3):
        make()
    make(operation_type="test_sleep")
    make(status="processing")
    stats = admin.get("banks/alpha/operations/stats").json()
    assert stats["by_status"]["pending"] == 4 and stats["by_type"] == {"test_echo": 4, "test_sleep": 1}
    assert stats["oldest_pending_age_seconds"] >= 0
    only_sleep = admin.post("banks/alpha/operations/cancel", {"type": "test_sleep"})
    assert only_sleep.json() == {"success": True, "bank_id": "alpha", "cancelled_count": 1}
    assert admin.post("banks/alpha/operations/cancel", {"type": "nope"}).status_code == 400
    assert admin.post("banks/alpha/operations/cancel").json()["cancelled_count"] == 3
    after = admin.get("banks/alpha/operations/stats").json()
    assert after["by_status"]["cancelled"] == 4 and after["oldest_pending_age_seconds"] is None


# --- across banks --------------------------------------------------------------------------


def test_all_operations_for_admins(admin: Any, alice: Any, alpha: Any, beta: Any) -> None:
    a, b = make(bank="alpha"), make(bank="beta", status="failed")
    body = admin.get("operations").json()
    assert set(ids_of(body)) == {str(a.pk), str(b.pk)} and body["bank_id"] is None
    assert ids(admin.get("operations", {"bank_id": "beta"})) == [str(b.pk)]
    assert ids(admin.get("operations", {"status": "failed"})) == [str(b.pk)]
    assert admin.get("operations", {"limit": 500}).status_code == 400
    assert alice.get("operations").status_code == 403


def test_workers_shows_the_plan_and_live_nodes(admin: Any, alice: Any, alpha: Any) -> None:
    running = make(status="processing")
    Operation.objects.filter(pk=running.pk).update(worker="shared@n1")
    WorkerNode.objects.create(name="shared@n1", hostname="n1", pid=1, queues=["ops.test_echo"], concurrency=8)
    WorkerNode.objects.create(
        name="shared@gone", hostname="gone", pid=2, last_seen_at=timezone.now() - timedelta(hours=1)
    )
    body = admin.get("workers").json()
    assert body["plan"]["max_slots"] == 10 and body["plan_error"] is None
    assert [n["name"] for n in body["nodes"]] == ["shared@n1"]
    node = body["nodes"][0]
    assert node["busy"] == 1 and node["running"][0]["operation_id"] == str(running.pk)
    assert alice.get("workers").status_code == 403


# --- errors of every kind -------------------------------------------------------------------


def test_authentication_errors_are_401(anonymous: Any, alpha: Any) -> None:
    from rest_framework.test import APIClient

    missing = anonymous.get("banks/alpha/operations")
    assert missing.status_code == 401 and missing.json()["detail"]
    assert missing["WWW-Authenticate"].startswith("Bearer")
    client = APIClient()
    for header in ("Bearer ops_wrong", "Basic dXNlcjpwYXNz", "Bearer", "ops_key_without_scheme"):
        client.credentials(HTTP_AUTHORIZATION=header)
        response = client.get("/v1/default/banks/alpha/operations")
        assert response.status_code == 401, header
        assert "detail" in response.json()


def test_a_revoked_key_is_refused(db: None, alpha: Any) -> None:
    from tenancy.api_keys import api_key_create
    from tests.conftest import Caller

    key, raw = api_key_create(admin=True)
    key.revoked_at = timezone.now()
    key.save()
    assert Caller(raw).get("banks/alpha").status_code == 401


def test_malformed_json_is_400(admin: Any, alpha: Any) -> None:
    response = admin.client.put("/v1/default/banks/alpha", data="{not json", content_type="application/json")
    assert response.status_code == 400 and "JSON" in response.json()["detail"]


def test_oversize_body_is_413(admin: Any, alpha: Any, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    response = admin.put("banks/alpha", {"mission": "x" * 5000})
    assert response.status_code == 413 and "too large" in response.json()["detail"]
    assert admin.get("banks/alpha").json()["mission"] == ""


def test_unknown_endpoints_and_methods(admin: Any) -> None:
    response = admin.get("no/such/thing")
    assert response.status_code == 404 and response.json()["detail"].startswith("no such endpoint")
    wrong_method = admin.post("banks")
    assert wrong_method.status_code == 405 and "not allowed" in wrong_method.json()["detail"]


# --- health, metrics, schema ------------------------------------------------------------------


def test_health_endpoints(client: Any) -> None:
    assert client.get("/health/live").json() == {"status": "alive"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "healthy", "database": "ok", "broker": "ok"}
    assert client.get("/health").json()["status"] == "healthy"


def test_readiness_fails_when_the_broker_is_unreachable(client: Any, private_broker: Any, caplog: Any) -> None:
    private_broker.stop()
    with caplog.at_level("WARNING", logger="operations.api.health"):
        response = client.get("/health/ready")
    assert response.status_code == 503
    # The component and its state, never the exception text (hosts, ports, users):
    # that goes to the log.
    assert response.json() == {"status": "unhealthy", "database": "ok", "broker": "unavailable"}
    assert str(private_broker.port) not in response.content.decode()
    assert "broker is unavailable" in caplog.text and "refused" in caplog.text.lower()


def _settled(*operations: Operation) -> None:
    """As if they finished long enough ago for the metrics to count them."""
    past = timezone.now() - timedelta(minutes=1)
    Operation.objects.filter(pk__in=[o.pk for o in operations]).update(
        created_at=past - timedelta(seconds=3), started_at=past - timedelta(seconds=2), completed_at=past
    )


def test_metrics(client: Any, alpha: Any) -> None:
    client.get("/metrics")  # the first scrape starts the count
    from operations.models import MetricsWatermark

    MetricsWatermark.objects.update(counted_until=timezone.now() - timedelta(hours=1))
    _settled(make(status="completed"), make(status="completed", operation_type="test_sleep"), make(status="failed"))
    assert file_all_finished() in (0, 3)  # counted under their week as in the live rows (PostgreSQL)
    make()
    make(status="processing")
    Operation.objects.filter(status="pending").update(created_at=timezone.now() - timedelta(seconds=1))
    text = client.get("/metrics").content.decode()
    assert 'ops_operations{status="pending",type="test_echo"} 1.0' in text
    assert 'ops_operations{status="processing",type="test_echo"} 1.0' in text
    assert 'ops_queue_depth{type="test_echo"} 1.0' in text
    assert 'ops_operations_finished_total{status="completed",type="test_echo"} 1.0' in text
    assert 'ops_operations_finished_total{status="failed",type="test_echo"} 1.0' in text
    assert 'ops_run_seconds_bucket{le="1",type="test_echo"} 0.0' in text
    assert 'ops_run_seconds_bucket{le="2.5",type="test_echo"} 1.0' in text
    assert 'ops_run_seconds_sum{type="test_echo"} 2.0' in text
    assert 'ops_queue_wait_seconds_count{type="test_sleep"} 1.0' in text
    assert 'ops_queue_wait_seconds_count{type="test_echo"} 2.0' in text  # completed and failed both ran


def test_metrics_only_grow_and_count_each_finish_once(client: Any, alpha: Any) -> None:
    """Counters and histograms never shrink: not when retention prunes the
    operations they counted, not on a second scrape; a finish too recent to be
    surely committed is counted by a later scrape, once."""
    from operations.models import MetricsWatermark

    client.get("/metrics")
    MetricsWatermark.objects.update(counted_until=timezone.now() - timedelta(hours=1))
    old = [make(status="completed") for _ in range(3)]
    _settled(*old)
    recent = make(status="completed")  # finished just now: not yet counted

    def count() -> float:
        text = client.get("/metrics").content.decode()
        line = next(ln for ln in text.splitlines() if ln.startswith('ops_run_seconds_count{type="test_echo"}'))
        return float(line.split()[-1])

    assert count() == 3.0
    assert count() == 3.0  # a second scrape adds nothing
    Operation.objects.filter(pk__in=[o.pk for o in old]).delete()  # as retention would
    assert count() == 3.0
    # Ten seconds pass: the recent finish is now surely committed.
    for rows, field in (
        (Operation.objects.filter(pk=recent.pk), "completed_at"),
        (MetricsWatermark.objects.all(), "counted_until"),
    ):
        rows.update(**{field: F(field) - timedelta(seconds=10)})
    assert count() == 4.0
    assert count() == 4.0


def test_a_scrape_reads_the_rollup_not_the_table(client: Any, alpha: Any) -> None:
    """Its queries touch finished operations only through the watermark's window."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.get("/metrics")
    with CaptureQueriesContext(connection) as queries:
        client.get("/metrics")
    scans = [q["sql"] for q in queries.captured_queries if 'FROM "operations_operation"' in q["sql"]]
    assert scans and all('"status" IN' in sql or '"status" =' in sql for sql in scans), scans


def test_schema_and_docs_are_served(client: Any) -> None:
    schema = client.get("/v1/openapi.json", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in (
        "/v1/default/banks",
        "/v1/default/banks/{bank_id}/operations",
        "/v1/default/banks/{bank_id}/operations/{operation_id}/retry",
        "/v1/default/workers",
    ):
        assert path in paths
    responses = paths["/v1/default/banks/{bank_id}/operations/{operation_id}"]["delete"]["responses"]
    assert {"200", "202", "400", "401", "404", "409"} <= set(responses)
    assert client.get("/v1/docs").status_code == 200


def test_the_docs_page_loads_everything_from_the_platform(client: Any) -> None:
    """/v1/docs works on a machine without internet: Swagger UI's scripts,
    styles and icon are the platform's own static files."""
    page = client.get("/v1/docs")
    assert page.status_code == 200
    html = page.content.decode()
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert any("swagger-ui" in asset for asset in assets), html[:2000]
    external = [asset for asset in assets if re.match(r"(https?:)?//", asset)]
    assert not external, f"loaded from elsewhere: {external}"
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        b"".join(response.streaming_content) if response.streaming else response.content


@pytest.mark.parametrize(
    ("method", "url", "status"),
    [
        ("get", "banks/%00", 404),
        ("get", "banks/%00/operations", 404),
        ("put", "banks/%00", 400),
        ("delete", "banks/alpha/documents/%00", 404),
        ("get", "banks/alpha/operations?tag=%00", 400),
        ("get", "banks/alpha/memories/list?document_id=%00", 400),
        ("get", "operations?bank_id=%00", 400),
    ],
)
def test_nul_characters_never_reach_the_database(admin: Any, alpha: Any, method: str, url: str, status: int) -> None:
    """PostgreSQL refuses U+0000 in text: it is a 400/404 here, not a 500."""
    response = getattr(admin, method)(url)
    assert response.status_code == status and "detail" in response.json()


# --- speed without changing a byte -----------------------------------------------------------


def test_the_fast_list_representation_matches_the_documented_serializer(alpha: Any) -> None:
    """Lists are built from .values() rows for speed; the serializers document
    the shape. Every kind of row renders the same through both."""
    from operations.api.representation import operation_detail, operation_items
    from operations.api.serializers import OperationDetailSerializer, OperationSerializer
    from operations.selectors import DETAIL_FIELDS

    parent = make(operation_type="test_batch")
    rows = [
        make(tag="t", document_id="d", items_count=2),
        make(status="processing"),
        make(status="failed"),
        make(status="cancelled"),
        make(status="completed"),
        make(parent_id=parent.pk),
        parent,
    ]
    lifecycle.operation_cancel(operation_id=rows[1].pk)  # a pending cancel request
    operations = list(Operation.objects.filter(pk__in=[r.pk for r in rows]).order_by("created_at"))
    fast = operation_items(Operation.objects.filter(pk__in=[r.pk for r in rows]).order_by("created_at"))
    assert fast == [dict(OperationSerializer(o).data) for o in operations]
    for operation in operations:
        row = Operation.objects.filter(pk=operation.pk).values(*DETAIL_FIELDS).get()
        children = list(operation.children.order_by("created_at", "id")) or None
        documented = OperationDetailSerializer(operation, context={"children": children, "include_payload": True}).data
        child_rows = (
            None if children is None else list(operation.children.order_by("created_at", "id").values(*DETAIL_FIELDS))
        )
        assert operation_detail(row, children=child_rows, include_payload=True) == dict(documented)


def test_a_key_records_its_use_at_most_once_a_minute(admin: Any, alpha: Any) -> None:
    from datetime import timedelta

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tenancy.models import ApiKey

    assert admin.get("banks/alpha").status_code == 200
    first = ApiKey.objects.get(name="admin").last_used_at
    assert first is not None
    with CaptureQueriesContext(connection) as queries:
        assert admin.get("banks/alpha").status_code == 200
    assert not [q for q in queries.captured_queries if q["sql"].startswith('UPDATE "banks_apikey"')]
    assert ApiKey.objects.get(name="admin").last_used_at == first
    ApiKey.objects.filter(name="admin").update(last_used_at=first - timedelta(minutes=2))
    admin.get("banks/alpha")
    assert ApiKey.objects.get(name="admin").last_used_at > first


def test_requests_find_banks_and_keys_as_the_orm_loads_them(alpha: Any) -> None:
    # Both lookups run as prepared statements of their own, converting each
    # column themselves (JSON, booleans, times: SQLite stores them as text).
    from tenancy.api_keys import api_key_authenticate, api_key_create
    from tenancy.models import ApiKey, Bank
    from tenancy.services import bank_find, bank_put

    bank_put(
        bank_id="alpha",
        fields={
            "mission": "m",
            "enable_observations": False,
            "config": {"a": [1, {"b": None}]},
            "disposition_traits": {"empathy": 5},
        },
    )

    def fields(row: Any) -> dict[str, Any]:
        return {k: v for k, v in vars(row).items() if k != "_state"}

    found = bank_find("alpha")
    assert found is not None and fields(found) == fields(Bank.objects.get(pk="alpha"))
    assert found.config == {"a": [1, {"b": None}]} and found.enable_observations is False
    assert bank_find("nobody") is None
    key, raw = api_key_create(name="scoped", bank_ids=["beta", "alpha"])
    authenticated = api_key_authenticate(raw)
    assert authenticated is not None
    assert (authenticated.pk, authenticated.is_admin, authenticated.bank_ids) == (key.pk, False, ["alpha", "beta"])
    assert authenticated.created_at == ApiKey.objects.get(pk=key.pk).created_at  # the rest loads on access


@pytest.mark.parametrize("word", ["cancel", "stats"])
def test_an_operation_id_that_is_an_endpoint_name_is_a_400_not_a_405(admin: Any, alpha: Any, word: str) -> None:
    for method in ("get", "delete"):
        response = getattr(admin, method)(f"banks/alpha/operations/{word}")
        if (method, word) == ("get", "stats"):
            assert response.status_code == 200  # the bank's operation stats
            continue
        assert response.status_code == 400, (method, word, response.content)
        assert "operation_id" in response.json()["errors"]
    schema = admin.client.get("/v1/openapi.json").json()["paths"]
    assert "/v1/default/banks/{bank_id}/operations/cancel" in schema
    assert "/v1/default/banks/{bank_id}/operations/stats" in schema
