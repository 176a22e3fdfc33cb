"""The admin console's session reaching the API (`tenancy/auth.py`): who may
use it, and CSRF on unsafe methods (a session is a cookie a browser sends by
itself, so a forged cross-site request must fail)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tenancy.api_keys import api_key_create
from tenancy.models import Bank

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]

API = "/v1/default"


def browser(user: User | None) -> Client:
    """A client that enforces CSRF as a browser session meets it, holding a CSRF cookie."""
    client = Client(enforce_csrf_checks=True)
    client.get("/admin/login/")  # the login form sets the csrftoken cookie
    if user is not None:
        client.force_login(user)
    return client


def csrf(client: Client) -> dict[str, str]:
    return {"HTTP_X_CSRFTOKEN": client.cookies["csrftoken"].value}


def put_bank(client: Client, bank: str, **headers: str) -> Any:
    return client.put(
        f"{API}/banks/{bank}", data={"name": "from a session"}, content_type="application/json", **headers
    )


@pytest.fixture
def staff() -> User:
    return User.objects.create_user("staff", password="pw", is_staff=True)


def test_a_staff_session_reads_like_an_admin_key(staff: User, alpha: Any, beta: Any) -> None:
    client = browser(staff)
    listed = client.get(f"{API}/banks")
    assert listed.status_code == 200
    assert {b["bank_id"] for b in listed.json()["banks"]} == {"alpha", "beta"}
    assert client.get(f"{API}/operations").status_code == 200  # admin-only endpoint
    assert client.get("/tasks").status_code == 200


def test_a_staff_session_needs_the_csrf_token_to_change_anything(staff: User, alpha: Any) -> None:
    client = browser(staff)
    forged = put_bank(client, "alpha")
    assert forged.status_code == 403 and "CSRF" in forged.json()["detail"]
    assert Bank.objects.get(pk="alpha").name == "Alpha"
    forged_post = client.post(f"{API}/banks/alpha/consolidate", data={}, content_type="application/json")
    assert forged_post.status_code == 403
    assert not Bank.objects.get(pk="alpha").operations.exists()
    assert client.delete(f"{API}/banks/alpha").status_code == 403
    assert Bank.objects.filter(pk="alpha").exists()

    allowed = put_bank(client, "alpha", **csrf(client))
    assert allowed.status_code == 200 and Bank.objects.get(pk="alpha").name == "from a session"


@pytest.mark.parametrize("kind", ["not staff", "inactive staff", "no session"])
def test_other_sessions_do_not_reach_the_api(kind: str, alpha: Any) -> None:
    user = None
    if kind == "not staff":
        user = User.objects.create_user("user", password="pw")
    elif kind == "inactive staff":
        user = User.objects.create_user("gone", password="pw", is_staff=True, is_active=False)
    # force_login even for the inactive user: its session cookie exists, but
    # Django no longer resolves it to the user.
    client = browser(user)
    assert client.get(f"{API}/banks").status_code == 401
    assert put_bank(client, "alpha", **csrf(client)).status_code == 401
    assert Bank.objects.get(pk="alpha").name == "Alpha"


def test_an_api_key_needs_no_csrf_token_even_beside_a_session(staff: User, alpha: Any) -> None:
    """CSRF guards cookies; a bearer key is never sent by a browser on its own."""
    client = browser(staff)
    key = api_key_create(name="script", bank_ids=["alpha"])[1]
    response = put_bank(client, "alpha", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 200 and Bank.objects.get(pk="alpha").name == "from a session"
    # …and the key's scope, not the session's, decides what it reaches.
    assert client.get(f"{API}/banks/beta", HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 404
