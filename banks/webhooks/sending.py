"""One attempt at a delivery: the HTTP POST, pinned to the checked addresses."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from banks.models import Webhook
from banks.webhooks.addresses import UnsafeWebhookURL, checked_addresses, parse_url
from banks.webhooks.policy import DEFAULT_TIMEOUT_SECONDS, RESPONSE_EXCERPT_BYTES, USER_AGENT
from banks.webhooks.sealing import unseal
from banks.webhooks.signing import signature_headers


@dataclass(frozen=True)
class Attempt:
    """What one POST came to. `retry`: a transient failure (timeouts,
    connection errors, 408, 429, 5xx, a name that does not resolve)."""

    delivered: bool
    retry: bool
    status_code: int | None = None
    excerpt: str = ""
    error: str = ""
    duration_ms: int = 0


class _PinnedBackend(httpcore.SyncBackend):
    """Connects only to an address the guard has just passed: the host is
    resolved once, here, and the connection goes to that address, so a DNS
    answer that changes between the check and the connect (rebinding) cannot
    slip a private address through. TLS still verifies the URL's host name
    (httpcore passes it as the server name, whatever address we connect to)."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        addresses = checked_addresses(host, port)
        return super().connect_tcp(addresses[0], port, timeout, local_address, socket_options)


class _GuardedTransport(httpx.HTTPTransport):
    """httpx's transport with the pinned backend and no proxy from the
    environment. httpx takes no network backend parameter, so its connection
    pool is rebuilt with ours (and its defaults)."""

    def __init__(self) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False), network_backend=_PinnedBackend()
        )


def _headers(webhook: Webhook, *, event: str, delivery_id: str, body: bytes, secret: str) -> dict[str, str]:
    headers = dict((webhook.http_config or {}).get("headers") or {})
    headers.update(
        {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Ops-Event": event,
            "X-Ops-Delivery": delivery_id,
            "X-Hindsight-Event": event,
        }
    )
    if secret:
        headers.update(signature_headers(secret, body, int(time.time())))
    return headers


def _outcome_of(status_code: int) -> tuple[bool, bool]:
    """(delivered, retry) for an HTTP status."""
    if 200 <= status_code < 300:
        return True, False
    return False, status_code in (408, 429) or status_code >= 500


def post_event(*, webhook: Webhook, event: str, delivery_id: str, body: bytes) -> Attempt:
    """POST one event to the webhook's URL: the SSRF guard again as it connects
    (DNS may have changed since registration; see _PinnedBackend), no
    redirects, no proxies from the environment, at most
    RESPONSE_EXCERPT_BYTES of the answer read. Raises SecretUnreadable."""
    started = time.monotonic()

    def elapsed() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        parse_url(webhook.url)
    except UnsafeWebhookURL as exc:
        return Attempt(delivered=False, retry=False, error=f"refused: {exc}")
    secret = unseal(webhook.secret_sealed)
    headers = _headers(webhook, event=event, delivery_id=delivery_id, body=body, secret=secret)
    timeout = float((webhook.http_config or {}).get("timeout_seconds") or DEFAULT_TIMEOUT_SECONDS)
    try:
        with (
            httpx.Client(
                transport=_GuardedTransport(), timeout=timeout, follow_redirects=False, trust_env=False
            ) as client,
            client.stream("POST", webhook.url, content=body, headers=headers) as response,
        ):
            excerpt = b""
            for chunk in response.iter_bytes():
                excerpt += chunk
                if len(excerpt) >= RESPONSE_EXCERPT_BYTES:
                    break
    except UnsafeWebhookURL as exc:  # raised by the pinned backend as it connects
        return Attempt(delivered=False, retry=False, error=f"refused: {exc}", duration_ms=elapsed())
    except socket.gaierror as exc:
        return Attempt(
            delivered=False, retry=True, error=f"name resolution failed: {exc.strerror}", duration_ms=elapsed()
        )
    except httpx.TimeoutException:
        return Attempt(delivered=False, retry=True, error=f"timed out after {timeout:g}s", duration_ms=elapsed())
    except httpx.HTTPError as exc:
        return Attempt(delivered=False, retry=True, error=f"{type(exc).__name__}: {exc}", duration_ms=elapsed())
    delivered, retry = _outcome_of(response.status_code)
    error = (
        ""
        if delivered
        else f"HTTP {response.status_code}" + (" (redirects are not followed)" if response.is_redirect else "")
    )
    return Attempt(
        delivered=delivered,
        retry=retry,
        status_code=response.status_code,
        excerpt=excerpt[:RESPONSE_EXCERPT_BYTES].decode(errors="replace"),
        error=error,
        duration_ms=elapsed(),
    )
