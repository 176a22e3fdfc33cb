"""Schema-driven fuzzing: schemathesis generates requests from the OpenAPI
schema (valid and invalid) for every endpoint; no response is a 5xx and every
response matches the schema. Twice: with generated path parameters (random
bank and operation ids, which mostly meet a 404), and with the ids of a real
bank, operation, mental model, document and memory, so that input validation
is what answers. Bounded so `make test` stays quick."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from opsproject.wsgi import application

schema = schemathesis.openapi.from_wsgi("/v1/openapi.json", application)
# Examples per endpoint: bounded so `make test` stays quick; raise it to hunt.
EXAMPLES = int(os.environ.get("OPS_FUZZ_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture
def admin_header(db: None, alpha: Any, beta: Any) -> Iterator[dict[str, str]]:
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    from operations import lifecycle
    from tenancy.api_keys import api_key_create

    # The app is called straight through WSGI: keep Django from closing the
    # test's connection at the end of each request, as its test client does.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)

    for bank in ("alpha", "beta"):
        lifecycle.operation_submit(bank_id=bank, operation_type="test_echo")
    try:
        yield {"Authorization": f"Bearer {api_key_create(admin=True)[1]}"}
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


def real_ids() -> dict[str, str]:
    """Existing things to point every path parameter at, made again if an
    earlier example deleted them (a DELETE of the bank, the operation, …)."""
    from banks.memory import RetainItem, retain_items
    from banks.models import MemoryUnit, MentalModel
    from operations import lifecycle
    from operations.models import Operation
    from tenancy.models import Bank

    bank, _ = Bank.objects.get_or_create(bank_id="alpha")
    if not MemoryUnit.objects.filter(bank=bank, document__document_id="doc-1").exists():
        retain_items(
            bank=bank, items=[RetainItem(content="A seed fact.", document_id="doc-1")], default_document_id=str
        )
    failed = Operation.objects.filter(bank=bank, status="failed").first()
    if failed is None:
        failed = lifecycle.operation_submit(bank_id="alpha", operation_type="test_echo").operation
        lease = lifecycle.operation_claim(operation_id=str(failed.pk), worker="w", task_id="t")
        assert lease is not None
        lifecycle.operation_fail(lease=lease, error="boom", permanent=True)
    model = MentalModel.objects.filter(bank=bank).first() or MentalModel.objects.create(
        bank=bank, name="m", source_query="q"
    )
    return {
        "bank_id": "alpha",
        "operation_id": str(failed.pk),
        "mental_model_id": str(model.pk),
        "document_id": "doc-1",
        "memory_id": str(MemoryUnit.objects.filter(bank=bank).values_list("pk", flat=True).first()),
    }


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_with_real_ids_validates_its_input(case: Any, admin_header: dict[str, str]) -> None:
    ids = real_ids()
    for name in case.path_parameters:
        if name in ids:
            case.path_parameters[name] = ids[name]
    case.call_and_validate(headers=admin_header, checks=CHECKS)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case: Any, admin_header: dict[str, str]) -> None:
    # The conformance checks: no 5xx, and every status code, content type,
    # header and body as the schema documents. Not the strictness probes: the
    # API is tolerant where Hindsight's clients rely on it (an empty query
    # parameter counts as absent, a number is taken as its text) and refuses
    # some schema-valid input with a documented 400 (created_after later than
    # created_before).
    case.call_and_validate(headers=admin_header, checks=CHECKS)
