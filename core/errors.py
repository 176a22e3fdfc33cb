"""Refusals of the domain that the API answers with a status of its own
(`core.api.errors` maps them): the apps raise these, never an HTTP error."""

from __future__ import annotations

from typing import Any


class Missing(LookupError):
    """What the request names does not exist (HTTP 404)."""

    def detail(self) -> str:
        return str(self)


class Conflict(Exception):
    """The target's state does not allow the request (HTTP 409)."""

    def body(self) -> dict[str, Any]:
        return {"detail": str(self)}
