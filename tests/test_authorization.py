"""The authorization matrix: every caller × every endpoint × own bank / other
bank / missing bank. A bank outside a key's scope answers exactly as a bank
that does not exist, and nothing crosses."""

from __future__ import annotations

from typing import Any

import pytest

from banks.memory import RetainItem, retain_items
from banks.models import Bank, MemoryUnit, MentalModel
from operations import services
from operations.models import Operation

pytestmark = pytest.mark.django_db

# (method, path under banks/{bank}, body); {op} is an operation of that bank.
BANK_ENDPOINTS = [
    ("get", "", None),
    ("put", "", {"name": "renamed"}),
    ("patch", "", {"name": "renamed"}),
    ("delete", "", None),
    ("get", "/stats", None),
    ("get", "/operations", None),
    ("get", "/operations/stats", None),
    ("post", "/operations/cancel", {}),
    ("get", "/operations/{op}", None),
    ("delete", "/operations/{op}", None),
    ("post", "/operations/{op}/retry", None),
    ("delete", "/operations/{op}/delete", None),
    ("post", "/memories", {"items": [{"content": "A fact."}]}),
    ("get", "/memories/list", None),
    ("delete", "/memories/{unit}", None),
    ("get", "/documents", None),
    ("delete", "/documents/doc", None),
    ("post", "/consolidate", {}),
    ("get", "/mental-models", None),
    ("post", "/mental-models", {"name": "m", "source_query": "q"}),
    ("get", "/mental-models/{model}", None),
    ("post", "/mental-models/{model}/refresh", None),
]
# Submissions create a missing bank (within the key's scope), as PUT does.
CREATES_BANK = {("put", ""), ("post", "/memories")}
# Which banks each caller reaches ("missing" never exists, except that a PUT creates it).
SCOPES = {
    "admin": {"alpha", "beta", "missing"},
    "alice": {"alpha"},
    "bob": {"alpha", "beta"},
    "charlie": set(),
}


def state() -> list[tuple[Any, ...]]:
    banks = list(Bank.objects.order_by("bank_id").values_list("bank_id", "name"))
    ops = list(Operation.objects.order_by("id").values_list("id", "status", "cancel_requested_at"))
    units = list(MemoryUnit.objects.order_by("id").values_list("id", flat=True))
    models = list(MentalModel.objects.order_by("id").values_list("id", flat=True))
    return [*banks, *ops, *units, *models]


ZERO = "00000000-0000-0000-0000-000000000000"


@pytest.fixture
def world(alpha: Any, beta: Any) -> dict[str, dict[str, str]]:
    """Per bank: an operation, a memory unit (of document "doc") and a mental model."""
    ids = {"missing": {"op": ZERO, "unit": ZERO, "model": ZERO}}
    for bank in (alpha, beta):
        retain_items(bank=bank, items=[RetainItem(content="Seed fact.", document_id="doc")],
                     default_document_id=str)
        ids[bank.pk] = {
            "op": str(services.operation_submit(bank_id=bank.pk, operation_type="test_echo").operation.pk),
            "unit": str(MemoryUnit.objects.get(bank=bank).pk),
            "model": str(MentalModel.objects.create(bank=bank, name="m", source_query="q").pk),
        }
    return ids


@pytest.mark.parametrize("target", ["alpha", "beta", "missing"])
@pytest.mark.parametrize(("method", "path", "body"), BANK_ENDPOINTS)
@pytest.mark.parametrize("who", ["admin", "alice", "bob", "charlie", "anonymous", "bad_key"])
def test_matrix(
    request: pytest.FixtureRequest, world: Any, who: str, method: str, path: str,
    body: Any, target: str,
) -> None:
    from tests.conftest import Caller

    caller = Caller("ops_not_a_real_key") if who == "bad_key" else request.getfixturevalue(who)
    url = f"banks/{target}{path.format(**world[target])}"
    before = state()
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
    else:
        assert response.status_code in (200, 202, 409), (response.status_code, response.json())


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
