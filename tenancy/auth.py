"""Who is calling, and which banks they may reach.

API clients authenticate with `Authorization: Bearer <key>`; the admin console
(and the browsable schema) with a Django session of a staff user, which counts
as admin. A key that cannot reach a bank gets exactly the 404 a missing bank
gets, so a key cannot even learn which banks exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import AnonymousUser
from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

from tenancy.api_keys import api_key_authenticate


@dataclass(frozen=True)
class Access:
    """What the caller may reach: every bank (admin) or the listed ones."""

    is_admin: bool
    bank_ids: frozenset[str] = field(default_factory=frozenset)
    label: str = ""

    def can_access(self, bank_id: str) -> bool:
        return self.is_admin or bank_id in self.bank_ids


class ApiClient(AnonymousUser):
    """The request.user of an API-key request: authenticated, but not a Django user."""

    @property
    def is_authenticated(self) -> bool:  # type: ignore[override]
        return True


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, Access] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            raise exceptions.AuthenticationFailed("use 'Authorization: Bearer <api key>'")
        key = api_key_authenticate(raw.strip())
        if key is None:
            raise exceptions.AuthenticationFailed("invalid or revoked API key")
        access = Access(is_admin=key.is_admin, bank_ids=frozenset(key.bank_ids), label=key.prefix)
        return ApiClient(), access

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class StaffSessionAuthentication(authentication.SessionAuthentication):
    """A logged-in staff user of the admin console acts as an admin key."""

    def authenticate(self, request: Request) -> tuple[Any, Access] | None:
        result = super().authenticate(request)
        if result is None or not result[0].is_staff:
            return None
        return result[0], Access(is_admin=True, label=result[0].get_username())


def access_of(request: Request) -> Access:
    access = request.auth
    if not isinstance(access, Access):
        raise exceptions.NotAuthenticated()
    return access


class IsAdminAccess(permissions.BasePermission):
    message = "this endpoint needs an admin API key"

    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, Access) and request.auth.is_admin


# --- OpenAPI descriptions of the two schemes ----------------------------------------

from drf_spectacular.extensions import OpenApiAuthenticationExtension  # noqa: E402


class ApiKeyScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = ApiKeyAuthentication
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "an API key (manage.py create_api_key)"}


class StaffSessionScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = StaffSessionAuthentication
    name = "adminSession"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "apiKey", "in": "cookie", "name": "sessionid", "description": "admin console login"}
