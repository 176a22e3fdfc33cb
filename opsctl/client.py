"""The REST API as opsctl sees it: one httpx client, errors as ApiError.

OPS_URL is the service root (http://127.0.0.1:8000); bank-scoped paths live
under /v1/default/, the unified task view at /tasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import httpx

API_PREFIX = "/v1/default/"


class ApiError(click.ClickException):
    """An error answer (or no answer) from the API: printed, exit status 1."""

    exit_code = 1

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    def format_message(self) -> str:
        return f"{self.message} (HTTP {self.status})" if self.status else self.message


def service_root(url: str) -> str:
    """The service root, whether OPS_URL names it or the API prefix under it."""
    root = url.strip().rstrip("/")
    for suffix in ("/v1/default", "/v1"):
        if root.endswith(suffix):
            root = root[: -len(suffix)]
    if not root.startswith(("http://", "https://")):
        raise click.UsageError(f"OPS_URL must be an http(s) URL, not {url!r}")
    return root


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict) and body.get("detail"):
        return str(body["detail"])
    return str(body)[:500]


class Api:
    def __init__(self, url: str, api_key: str, *, timeout: float = 30.0) -> None:
        self.root = service_root(url)
        self.http = httpx.Client(
            base_url=self.root,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "opsctl"},
            timeout=timeout,
        )

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach {self.root}: {exc}") from None
        if response.status_code >= 400:
            raise ApiError(_message(response), response.status_code)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ApiError(f"the API answered {path} with something that is not JSON", response.status_code) from None

    def object(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """A JSON object answer; anything else is an ApiError (a server of another kind)."""
        data = self.json(method, path, **kwargs)
        if not isinstance(data, dict):
            raise ApiError(f"the API answered {path} with JSON that is not an object")
        return data

    def array(self, method: str, path: str, **kwargs: Any) -> list[dict[str, Any]]:
        data = self.json(method, path, **kwargs)
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise ApiError(f"the API answered {path} with JSON that is not a list of objects")
        return data

    # --- endpoints ---------------------------------------------------------------

    def bank_path(self, bank_id: str, *parts: str) -> str:
        return API_PREFIX + "banks/" + "/".join(quote(p, safe="") for p in (bank_id, *parts))

    def operations(self, bank_id: str, **params: Any) -> dict[str, Any]:
        return self.object("GET", self.bank_path(bank_id, "operations"), params=_clean(params))

    def operation(self, bank_id: str, operation_id: str, *, include_payload: bool = False) -> dict[str, Any]:
        params = {"include_payload": "true"} if include_payload else None
        return self.object("GET", self.bank_path(bank_id, "operations", operation_id), params=params)

    def operation_stats(self, bank_id: str) -> dict[str, Any]:
        return self.object("GET", self.bank_path(bank_id, "operations", "stats"))

    def cancel(self, bank_id: str, operation_id: str) -> tuple[int, dict[str, Any]]:
        path = self.bank_path(bank_id, "operations", operation_id)
        response = self.request("DELETE", path)
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ApiError(f"the API answered {path} with something that is not a JSON object", response.status_code)
        return response.status_code, data

    def cancel_pending(self, bank_id: str, operation_type: str | None) -> dict[str, Any]:
        body = {"type": operation_type} if operation_type else {}
        return self.object("POST", self.bank_path(bank_id, "operations", "cancel"), json=body)

    def retry(self, bank_id: str, operation_id: str) -> dict[str, Any]:
        return self.object("POST", self.bank_path(bank_id, "operations", operation_id, "retry"))

    def delete(self, bank_id: str, operation_id: str) -> dict[str, Any]:
        return self.object("DELETE", self.bank_path(bank_id, "operations", operation_id, "delete"))

    def upload(self, bank_id: str, path: Path, fields: dict[str, str]) -> dict[str, Any]:
        with path.open("rb") as handle:
            return self.object(
                "POST",
                self.bank_path(bank_id, "files", "retain"),
                files={"files": (path.name, handle)},
                data=_clean(fields),
            )

    def tasks(self, **params: Any) -> list[dict[str, Any]]:
        return self.array("GET", "/tasks", params=_clean(params))

    def workers(self) -> dict[str, Any]:
        return self.object("GET", API_PREFIX + "workers")

    def banks(self, **params: Any) -> dict[str, Any]:
        return self.object("GET", API_PREFIX + "banks", params=_clean(params))

    def webhooks(self, bank_id: str, **params: Any) -> dict[str, Any]:
        return self.object("GET", self.bank_path(bank_id, "webhooks"), params=_clean(params))

    def webhook_deliveries(self, bank_id: str, webhook_id: str, **params: Any) -> dict[str, Any]:
        return self.object("GET", self.bank_path(bank_id, "webhooks", webhook_id, "deliveries"), params=_clean(params))


def _clean(params: dict[str, Any]) -> dict[str, Any]:
    """Drop unset parameters (None, empty lists) so the API applies its defaults."""
    return {k: v for k, v in params.items() if v not in (None, [], (), "")}
