"""The authorization matrix: every caller × every endpoint × own bank / other
bank / missing bank. A bank outside a key's scope answers exactly as a bank
that does not exist, and nothing crosses."""

from __future__ import annotations

from typing import Any

import pytest

from banks.memory import RetainItem, retain_items
from banks.models import MemoryUnit, MentalModel
from operations import lifecycle
from operations.models import Operation
from tenancy.models import Bank

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]

# (method, path under banks/{bank}, body); {op} is an operation of that bank.
# By endpoint group: each group is a test of its own, so a failure names what broke.
BANK = [
    ("get", "", None),
    ("put", "", {"name": "renamed"}),
    ("patch", "", {"name": "renamed"}),
    ("delete", "", None),
    ("get", "/stats", None),
]
OPERATIONS = [
    ("get", "/operations", None),
    ("get", "/operations/stats", None),
    ("post", "/operations/cancel", {}),
    ("get", "/operations/{op}", None),
    ("delete", "/operations/{op}", None),
    ("post", "/operations/{op}/retry", None),
    ("delete", "/operations/{op}/delete", None),
]
MEMORY = [
    ("post", "/memories", {"items": [{"content": "A fact."}]}),
    ("get", "/memories/list", None),
    ("delete", "/memories/{unit}", None),
    ("get", "/documents", None),
    ("delete", "/documents/doc", None),
    ("post", "/consolidate", {}),
]
MENTAL_MODELS = [
    ("get", "/mental-models", None),
    ("post", "/mental-models", {"name": "m", "source_query": "q"}),
    ("get", "/mental-models/{model}", None),
    ("patch", "/mental-models/{model}", {"name": "renamed", "trigger": {"refresh_cron": "@daily"}}),
    ("post", "/mental-models/{model}/refresh", None),
]
BANK_ENDPOINTS = BANK + OPERATIONS + MEMORY + MENTAL_MODELS
# Submissions create a missing bank (within the key's scope), as PUT does.
CREATES_BANK = {("put", ""), ("post", "/memories")}
# Which banks each caller reaches ("missing" never exists, except that a PUT creates it).
SCOPES = {
    "admin": {"alpha", "beta", "missing"},
    "alice": {"alpha"},
    "bob": {"alpha", "beta"},
    "charlie": set(),
}


def _op(world: Any, target: str) -> Operation:
    return Operation.objects.get(pk=world[target]["op"])


def _ops(target: str, operation_type: str) -> int:
    return Operation.objects.filter(bank_id=target, operation_type=operation_type).count()


# What each endpoint does to an existing bank in the caller's scope: the exact
# status, and the effect checked in the database (target: the bank named;
# world: its seeded ids; body: the response's JSON).
EFFECTS: dict[tuple[str, str], tuple[int, Any]] = {
    ("get", ""): (200, lambda t, w, b: b["bank_id"] == t),
    ("put", ""): (200, lambda t, w, b: Bank.objects.get(pk=t).name == "renamed"),
    ("patch", ""): (200, lambda t, w, b: Bank.objects.get(pk=t).name == "renamed"),
    ("delete", ""): (200, lambda t, w, b: not Bank.objects.filter(pk=t).exists()),
    ("get", "/stats"): (200, lambda t, w, b: b["bank_id"] == t and b["total_operations"] == 1),
    ("get", "/operations"): (200, lambda t, w, b: [o["id"] for o in b["operations"]] == [w[t]["op"]]),
    ("get", "/operations/stats"): (200, lambda t, w, b: b["by_status"]["pending"] == 1),
    ("post", "/operations/cancel"): (
        200,
        lambda t, w, b: b["cancelled_count"] == 1 and _op(w, t).status == "cancelled",
    ),
    ("get", "/operations/{op}"): (200, lambda t, w, b: b["id"] == w[t]["op"]),
    ("delete", "/operations/{op}"): (200, lambda t, w, b: _op(w, t).status == "cancelled"),
    ("post", "/operations/{op}/retry"): (409, lambda t, w, b: _op(w, t).status == "pending"),
    ("delete", "/operations/{op}/delete"): (409, lambda t, w, b: _op(w, t).status == "pending"),
    ("post", "/memories"): (200, lambda t, w, b: MemoryUnit.objects.filter(bank_id=t).count() == 2),
    ("get", "/memories/list"): (200, lambda t, w, b: [u["id"] for u in b["items"]] == [w[t]["unit"]]),
    ("delete", "/memories/{unit}"): (
        200,
        lambda t, w, b: not MemoryUnit.objects.filter(pk=w[t]["unit"]).exists() and _ops(t, "graph_maintenance") == 1,
    ),
    ("get", "/documents"): (200, lambda t, w, b: [d["document_id"] for d in b["items"]] == ["doc"]),
    ("delete", "/documents/doc"): (
        200,
        lambda t, w, b: not MemoryUnit.objects.filter(bank_id=t).exists() and _ops(t, "graph_maintenance") == 1,
    ),
    ("post", "/consolidate"): (200, lambda t, w, b: _ops(t, "consolidation") == 1),
    ("get", "/mental-models"): (200, lambda t, w, b: [m["id"] for m in b["items"]] == [w[t]["model"]]),
    ("post", "/mental-models"): (
        200,
        lambda t, w, b: MentalModel.objects.filter(bank_id=t).count() == 2 and _ops(t, "refresh_mental_model") == 1,
    ),
    ("get", "/mental-models/{model}"): (200, lambda t, w, b: b["id"] == w[t]["model"]),
    ("patch", "/mental-models/{model}"): (
        200,
        lambda t, w, b: MentalModel.objects.filter(pk=w[t]["model"], name="renamed", refresh_cron="@daily").exists(),
    ),
    ("post", "/mental-models/{model}/refresh"): (200, lambda t, w, b: _ops(t, "refresh_mental_model") == 1),
}
# A reachable bank that does not exist yet, created by the request.
CREATED: dict[tuple[str, str], Any] = {
    ("put", ""): lambda t: Bank.objects.get(pk=t).name == "renamed",
    ("post", "/memories"): lambda t: MemoryUnit.objects.filter(bank_id=t).count() == 1,
}


def state_of(bank: str) -> list[tuple[Any, ...]]:
    """Everything of one bank, to show a request changed nothing there."""
    return [
        *Bank.objects.filter(pk=bank).values_list("bank_id", "name"),
        *Operation.objects.filter(bank_id=bank).order_by("id").values_list("id", "status", "cancel_requested_at"),
        *MemoryUnit.objects.filter(bank_id=bank).order_by("id").values_list("id"),
        *MentalModel.objects.filter(bank_id=bank).order_by("id").values_list("id", "name", "refresh_cron"),
    ]


def state() -> list[tuple[Any, ...]]:
    banks = list(Bank.objects.order_by("bank_id").values_list("bank_id", "name"))
    ops = list(Operation.objects.order_by("id").values_list("id", "status", "cancel_requested_at"))
    units = list(MemoryUnit.objects.order_by("id").values_list("id", flat=True))
    models = list(MentalModel.objects.order_by("id").values_list("id", "name", "refresh_cron"))
    return [*banks, *ops, *units, *models]


ZERO = "00000000-0000-0000-0000-000000000000"


@pytest.fixture
def world(alpha: Any, beta: Any) -> dict[str, dict[str, str]]:
    """Per bank: an operation, a memory unit (of document "doc") and a mental model."""
    ids = {"missing": {"op": ZERO, "unit": ZERO, "model": ZERO}}
    for bank in (alpha, beta):
        retain_items(bank=bank, items=[RetainItem(content="Seed fact.", document_id="doc")], default_document_id=str)
        ids[bank.pk] = {
            "op": str(lifecycle.operation_submit(bank_id=bank.pk, operation_type="test_echo").operation.pk),
            "unit": str(MemoryUnit.objects.get(bank=bank).pk),
            "model": str(MentalModel.objects.create(bank=bank, name="m", source_query="q").pk),
        }
    return ids


TARGETS = pytest.mark.parametrize("target", ["alpha", "beta", "missing"])
CALLERS = pytest.mark.parametrize("who", ["admin", "alice", "bob", "charlie", "anonymous", "bad_key"])


@TARGETS
@pytest.mark.parametrize(("method", "path", "body"), BANK)
@CALLERS
def test_bank_endpoints(
    request: pytest.FixtureRequest, world: Any, who: str, method: str, path: str, body: Any, target: str
) -> None:
    check_access(request, world, who, method, path, body, target)


@TARGETS
@pytest.mark.parametrize(("method", "path", "body"), OPERATIONS)
@CALLERS
def test_operation_endpoints(
    request: pytest.FixtureRequest, world: Any, who: str, method: str, path: str, body: Any, target: str
) -> None:
    check_access(request, world, who, method, path, body, target)


@TARGETS
@pytest.mark.parametrize(("method", "path", "body"), MEMORY)
@CALLERS
def test_memory_endpoints(
    request: pytest.FixtureRequest, world: Any, who: str, method: str, path: str, body: Any, target: str
) -> None:
    check_access(request, world, who, method, path, body, target)


@TARGETS
@pytest.mark.parametrize(("method", "path", "body"), MENTAL_MODELS)
@CALLERS
def test_mental_model_endpoints(
    request: pytest.FixtureRequest, world: Any, who: str, method: str, path: str, body: Any, target: str
) -> None:
    check_access(request, world, who, method, path, body, target)


def check_access(
    request: pytest.FixtureRequest, world: Any, who: str, method: str, path: str, body: Any, target: str
) -> None:
    """One caller, one endpoint, one bank: the answer its scope allows, the
    work done only where allowed, and no other bank touched."""
    from tests.conftest import Caller

    caller = Caller("ops_not_a_real_key") if who == "bad_key" else request.getfixturevalue(who)
    url = f"banks/{target}{path.format(**world[target])}"
    before = state()
    others_before = {bank: state_of(bank) for bank in ("alpha", "beta", "missing") if bank != target}
    response = getattr(caller, method)(url, body)

    if who in ("anonymous", "bad_key"):
        assert response.status_code == 401
        assert state() == before
        return
    reachable = target in SCOPES[who]
    exists = target != "missing"
    if not reachable:
        # Out of scope: the very answer a missing bank gets, and no change.
        assert response.status_code == 404, response.json()
        assert response.json() == {"detail": f"bank '{target}' not found"}
        assert state() == before
    elif not exists and (method, path) not in CREATES_BANK:
        assert response.status_code == 404
        assert response.json() == {"detail": f"bank '{target}' not found"}
    elif not exists:
        assert response.status_code == 200, response.json()
        assert CREATED[(method, path)](target)
    else:
        status, effect = EFFECTS[(method, path)]
        assert response.status_code == status, (response.status_code, response.json())
        assert effect(target, world, response.json()), f"{method} {path} did not do its work on {target}"
    # Whatever happened, it happened to the bank named and to no other.
    assert {bank: state_of(bank) for bank in others_before} == others_before


@pytest.mark.parametrize("who", ["admin", "alice", "bob", "charlie"])
def test_bank_lists_show_only_the_scope(request: pytest.FixtureRequest, world: Any, who: str) -> None:
    caller = request.getfixturevalue(who)
    listed = {b["bank_id"] for b in caller.get("banks").json()["banks"]}
    assert listed == SCOPES[who] - {"missing"}


@pytest.mark.parametrize("who", ["admin", "alice", "bob", "charlie", "anonymous", "bad_key"])
@pytest.mark.parametrize("endpoint", ["operations", "workers"])
def test_cross_bank_endpoints_need_an_admin_key(
    request: pytest.FixtureRequest, world: Any, who: str, endpoint: str
) -> None:
    from tests.conftest import Caller

    caller = Caller("ops_not_a_real_key") if who == "bad_key" else request.getfixturevalue(who)
    expected = {"admin": 200, "anonymous": 401, "bad_key": 401}.get(who, 403)
    assert caller.get(endpoint).status_code == expected


def test_an_id_never_reaches_across_banks(world: Any, alice: Any) -> None:
    """Alice names beta's operation, memory or mental model under her own bank: 404, untouched."""
    before = state()
    for method, path, body in BANK_ENDPOINTS:
        if "{" in path:
            response = getattr(alice, method)(f"banks/alpha{path.format(**world['beta'])}", body)
            assert response.status_code == 404
    assert state() == before


def test_file_uploads_are_scoped(world: Any, alice: Any) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    def upload(bank: str) -> Any:
        return alice.client.post(
            f"/v1/default/banks/{bank}/files/retain",
            {"files": [SimpleUploadedFile("a.txt", b"A fact.", content_type="text/plain")]},
            format="multipart",
        )

    before = state()
    assert upload("beta").status_code == 404 and upload("missing").status_code == 404
    assert state() == before
    assert upload("alpha").status_code == 200
