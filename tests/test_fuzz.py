"""Schema-driven fuzzing: schemathesis generates requests from the OpenAPI
schema (valid and invalid) for every endpoint; no response is a 5xx and every
response matches the schema. Bounded so `make test` stays quick."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from opsproject.wsgi import application
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

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

    from banks.api_keys import api_key_create
    from operations import services

    # The app is called straight through WSGI: keep Django from closing the
    # test's connection at the end of each request, as its test client does.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)

    for bank in ("alpha", "beta"):
        services.operation_submit(bank_id=bank, operation_type="test_echo")
    try:
        yield {"Authorization": f"Bearer {api_key_create(admin=True)[1]}"}
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


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
