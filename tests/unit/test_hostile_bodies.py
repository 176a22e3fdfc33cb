"""No request body of any shape gets a 500: JSON nested thousands of levels
deep, numbers past what a double holds, very long strings, wrong types at the
top level. Sent to every endpoint of the OpenAPI schema that takes a body (and
to the multipart `request` field), against an existing bank and real ids, so the
body is what answers rather than a 404."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from banks import webhooks
from banks.models import MentalModel
from operations import lifecycle
from tenancy.api_keys import api_key_create
from tenancy.models import Bank

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]

DEEP = 5000
LONG = 300_000
HOSTILE_BODIES: dict[str, str] = {
    "deep array": "[" * DEEP + "]" * DEEP,
    "deep object": '{"a":' * DEEP + "1" + "}" * DEEP,
    "deep array in a field": '{"items": ' + "[" * DEEP + "]" * DEEP + ', "name": ' + "[" * DEEP + "]" * DEEP + "}",
    # Parses (orjson allows 1,024 levels) but is deeper than OPS_MAX_JSON_DEPTH.
    "moderately deep field": '{"config": ' + '{"a":' * 200 + "1" + "}" * 200 + "}",
    "huge float": '{"limit": 1e400, "max_tokens": 1e400, "items": 1e400}',
    "huge integer": '{"limit": 1' + "0" * 5000 + ', "max_tokens": 9' + "9" * 400 + "}",
    "64-bit overflow": '{"max_tokens": 18446744073709551616, "limit": -18446744073709551617}',
    "NaN": '{"max_tokens": NaN}',
    "top-level string": json.dumps("x" * LONG),
    "top-level number": "12345678901234567890123456789",
    "top-level null": "null",
    "not JSON": "{'single': quotes}",
    "invalid UTF-8": '{"name": "\udcff"}',
}


def _path_values(bank: str) -> dict[str, str]:
    lifecycle.operation_submit(bank_id=bank, operation_type="test_echo")
    failed = lifecycle.operation_submit(bank_id=bank, operation_type="test_echo").operation
    lease = lifecycle.operation_claim(operation_id=str(failed.pk), worker="w", task_id="t")
    assert lease is not None
    lifecycle.operation_fail(lease=lease, error="boom", permanent=True)
    model = MentalModel.objects.create(bank_id=bank, name="m", source_query="q")
    webhook = webhooks.webhook_create(
        bank=Bank.objects.get(pk=bank),
        url="http://127.0.0.1:9/hook",
        secret="s",
        event_types=["operation.failed"],
        enabled=True,
        http_config={},
    )
    return {
        "bank_id": bank,
        "operation_id": str(failed.pk),
        "mental_model_id": str(model.pk),
        "document_id": "doc-1",
        "memory_id": "00000000-0000-0000-0000-000000000001",
        "webhook_id": str(webhook.pk),
    }


def _long_string_bodies(operation: dict[str, Any], components: dict[str, Any]) -> dict[str, str]:
    """One body per top-level property of the request schema, holding a very long string."""
    content = operation.get("requestBody", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema", {})
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    return {f"long {name}": json.dumps({name: "x" * LONG}) for name in schema.get("properties", {})}


@pytest.fixture
def api(alpha: Any) -> tuple[Client, dict[str, str]]:
    client = Client(HTTP_AUTHORIZATION=f"Bearer {api_key_create(admin=True)[1]}")
    return client, _path_values("alpha")


def test_no_body_gets_a_server_error_on_any_endpoint(api: tuple[Client, dict[str, str]]) -> None:
    client, values = api
    schema = client.get("/v1/openapi.json").json()
    components = schema["components"]["schemas"]
    tried = 0
    for path, operations in schema["paths"].items():
        url = path.format(**values)
        for method, operation in operations.items():
            if method not in ("post", "put", "patch", "delete"):
                continue
            content = operation.get("requestBody", {}).get("content", {})
            if content and "application/json" not in content:
                continue  # the multipart upload: tested below
            bodies = {**HOSTILE_BODIES, **_long_string_bodies(operation, components)}
            for name, body in bodies.items():
                response = getattr(client, method)(
                    url, data=body.encode("utf-8", "surrogatepass"), content_type="application/json"
                )
                assert response.status_code < 500, f"{method.upper()} {url} with {name}: {response.status_code}"
                assert response["Content-Type"].startswith("application/json"), f"{method} {url} {name}"
                assert "detail" in response.json() or response.status_code < 300, f"{method} {url} {name}"
                tried += 1
    assert tried > 100  # every body endpoint was reached


@pytest.mark.parametrize("name", ["deep array in a field", "moderately deep field", "deep object"])
def test_deep_nesting_is_a_400_that_says_so(api: tuple[Client, dict[str, str]], name: str) -> None:
    client, _ = api
    response = client.put("/v1/default/banks/alpha", data=HOSTILE_BODIES[name], content_type="application/json")
    assert response.status_code == 400
    assert "nested too deeply" in response.json()["detail"]
    memories = client.post(
        "/v1/default/banks/alpha/memories", data=HOSTILE_BODIES[name], content_type="application/json"
    )
    assert memories.status_code == 400 and "nested too deeply" in memories.json()["detail"]


def test_the_multipart_request_field_is_held_to_the_same_rules(api: tuple[Client, dict[str, str]]) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    client, _ = api
    for name, body in HOSTILE_BODIES.items():
        if name in ("64-bit overflow", "invalid UTF-8"):
            continue  # valid JSON whose fields mean nothing there; not sendable as a form field
        upload = SimpleUploadedFile("a.txt", b"Some text.", content_type="text/plain")
        response = client.post("/v1/default/banks/alpha/files/retain", {"files": [upload], "request": body})
        assert response.status_code == 400, f"{name}: {response.status_code} {response.content[:200]!r}"
        assert response.json()["detail"]
    upload = SimpleUploadedFile("a.txt", b"Some text.", content_type="text/plain")
    wrong_count = client.post(
        "/v1/default/banks/alpha/files/retain", {"files": [upload], "request": json.dumps({"files_metadata": [{}, {}]})}
    )
    assert wrong_count.status_code == 400 and "request.files_metadata" in wrong_count.json()["errors"]


def test_numbers_past_64_bits_stored_in_json_are_rendered(api: tuple[Client, dict[str, str]]) -> None:
    """PostgreSQL keeps 1.8e19 as the integer 18446744073709552000, which
    reads back past what orjson renders: the response falls back, never a 500.
    (SQLite keeps it as a float, so the value is compared as one.)"""
    client, _ = api
    stored = client.put(
        "/v1/default/banks/alpha", data='{"config": {"big": 1.8446744073709552e+19}}', content_type="application/json"
    )
    assert stored.status_code == 200
    again = client.get("/v1/default/banks/alpha")
    assert again.status_code == 200
    assert float(again.json()["config"]["big"]) == 1.8446744073709552e19


def test_a_nul_character_in_an_explicit_entity_is_a_400() -> None:
    """Found by the fuzzer: an entity's name with U+0000 reached PostgreSQL's
    INSERT (a 500); it is refused with the other bad input."""
    from banks.api.memory_serializers import RetainItemSerializer

    for entity in ({"text": "a\x00b"}, "c\x00", {"text": "d", "type": "t\x00"}):
        item = RetainItemSerializer(data={"content": "x", "entities": [entity]})
        assert not item.is_valid() and "entities" in item.errors
