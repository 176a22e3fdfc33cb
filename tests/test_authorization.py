"""The authorization matrix: every caller × every endpoint × own bank / other
bank / missing bank. A bank outside a key's scope answers exactly as a bank
that does not exist, and nothing crosses."""

from __future__ import annotations

from typing import Any

import pytest

from banks.models import Bank
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
]
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
    return [*banks, *ops]


@pytest.fixture
def world(alpha: Any, beta: Any) -> dict[str, str]:
    operations = {}
    for bank in ("alpha", "beta"):
        operations[bank] = str(
            services.operation_submit(bank_id=bank, operation_type="test_echo").operation.pk
        )
    operations["missing"] = "00000000-0000-0000-0000-000000000000"
    return operations


@pytest.mark.parametrize("target", ["alpha", "beta", "missing"])
@pytest.mark.parametrize(("method", "path", "body"), BANK_ENDPOINTS)
@pytest.mark.parametrize("who", ["admin", "alice", "bob", "charlie", "anonymous", "bad_key"])
def test_matrix(
    request: pytest.FixtureRequest, world: dict[str, str], who: str, method: str, path: str,
    body: Any, target: str,
) -> None:
    from tests.conftest import Caller

    caller = Caller("ops_not_a_real_key") if who == "bad_key" else request.getfixturevalue(who)
    url = f"banks/{target}{path.format(op=world[target])}"
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
    elif not exists and not (method == "put" and path == ""):
        assert response.status_code == 404
        assert response.json() == {"detail": f"bank '{target}' not found"}
    else:
        assert response.status_code in (200, 202, 409), (response.status_code, response.json())


@pytest.mark.parametrize("who", ["admin", "alice", "bob", "charlie"])
def test_bank_lists_show_only_the_scope(request: pytest.FixtureRequest, world: dict[str, str], who: str) -> None:
    caller = request.getfixturevalue(who)
    listed = {b["bank_id"] for b in caller.get("banks").json()["banks"]}
    assert listed == SCOPES[who] - {"missing"}


@pytest.mark.parametrize("who", ["admin", "alice", "bob", "charlie", "anonymous", "bad_key"])
@pytest.mark.parametrize("endpoint", ["operations", "workers"])
def test_cross_bank_endpoints_need_an_admin_key(
    request: pytest.FixtureRequest, world: dict[str, str], who: str, endpoint: str
) -> None:
    from tests.conftest import Caller

    caller = Caller("ops_not_a_real_key") if who == "bad_key" else request.getfixturevalue(who)
    expected = {"admin": 200, "anonymous": 401, "bad_key": 401}.get(who, 403)
    assert caller.get(endpoint).status_code == expected


def test_an_operation_id_never_reaches_across_banks(world: dict[str, str], alice: Any) -> None:
    """Alice names beta's operation under her own bank: 404, untouched."""
    before = state()
    for method, path, body in BANK_ENDPOINTS:
        if "{op}" in path:
            response = getattr(alice, method)(f"banks/alpha{path.format(op=world['beta'])}", body)
            assert response.status_code == 404
    assert state() == before
