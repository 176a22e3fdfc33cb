"""Webhooks (SPEC §7): which events a finished operation raises, how they are
queued, signed and sent, and the guard against server-side request forgery.

Events are queued by a finish hook (`operations.finish_hooks`): each event
becomes one `webhook_delivery` operation per subscribed webhook, inserted in
the transaction that finishes the operation, so a change that rolls back sends
nothing. The operation's payload holds the webhook id, the event id and the
serialized body, never the secret: the handler reads (and decrypts) the secret
from the webhook row at delivery time.

A delivery's body is serialized once, when the event is raised; every attempt
sends exactly those bytes, with the same `event_id`, signed twice:

    X-Hindsight-Signature: sha256=<hex HMAC-SHA256(secret, body)>      (Hindsight's)
    X-Ops-Signature: t=<unix ts>,v1=<hex HMAC-SHA256(secret, "<ts>.<body>")>

The second signs the attempt's time too, so a receiver can refuse a replay
(`verify_ops_signature`, which docs/webhooks.md shows).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from banks.models import Webhook, WebhookDelivery, WebhookEvent
from operations import finish_hooks, services
from operations.models import Operation, OperationStatus
from tenancy.models import Bank

WEBHOOK_DELIVERY = "webhook_delivery"
TEST_EVENT = "webhook.test"
DEFAULT_EVENT_TYPES = [WebhookEvent.CONSOLIDATION_COMPLETED.value]  # Hindsight's default
DEFAULT_TIMEOUT_SECONDS = 30
MAX_TIMEOUT_SECONDS = 300
RESPONSE_EXCERPT_BYTES = 1024
# The operation types whose completion is a retain of documents.
RETAIN_TYPES = frozenset({"retain", "file_convert_retain"})
USER_AGENT = "ops-platform-webhooks/1"

# Header names a webhook's own `http_config.headers` may not set: they carry
# the event, its signature and the framing of the body.
RESERVED_HEADERS = frozenset(
    {"host", "content-type", "content-length", "transfer-encoding", "connection", "user-agent"}
)
RESERVED_HEADER_PREFIXES = ("x-ops-", "x-hindsight-")


# --- the secret at rest -------------------------------------------------------------


def _fernet() -> MultiFernet:
    """Keys derived from DJANGO_SECRET_KEY (then its fallbacks, so a rotation
    keeps old secrets readable while SECRET_KEY_FALLBACKS lists the old key)."""
    keys = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return MultiFernet(
        [
            Fernet(base64.urlsafe_b64encode(hashlib.sha256(f"ops-webhook-secret:{key}".encode()).digest()))
            for key in keys
        ]
    )


def seal(secret: str) -> str:
    """The secret encrypted for storage ('' for no secret)."""
    return _fernet().encrypt(secret.encode()).decode() if secret else ""


class SecretUnreadable(Exception):
    """The stored secret was sealed under a key this node no longer has."""


def unseal(sealed: str) -> str:
    if not sealed:
        return ""
    try:
        return _fernet().decrypt(sealed.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable(
            "the webhook's secret cannot be decrypted (DJANGO_SECRET_KEY changed?); set it again"
        ) from None


# --- signatures ---------------------------------------------------------------------


def _hmac_hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_headers(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    """Both signature headers of one attempt."""
    return {
        "X-Hindsight-Signature": f"sha256={_hmac_hex(secret, body)}",
        "X-Ops-Signature": f"t={timestamp},v1={_hmac_hex(secret, f'{timestamp}.'.encode() + body)}",
    }


# --- the SSRF guard -----------------------------------------------------------------


class UnsafeWebhookURL(ValueError):
    """The URL is malformed, or reaches an address webhooks may not reach."""


# Checked in this order; the first that holds names the refusal.
_REFUSED_KINDS = (
    ("is_loopback", "loopback"),
    ("is_private", "private"),
    ("is_link_local", "link-local"),
    ("is_multicast", "multicast"),
    ("is_reserved", "reserved"),
    ("is_unspecified", "unspecified"),
)


def address_refusal(address: str) -> str | None:
    """Why a webhook may not be sent to this IP address ("a loopback
    address"…), or None when it may. An IPv4-mapped IPv6 address is judged
    as the IPv4 address it maps."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone index
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for attribute, kind in _REFUSED_KINDS:
        if getattr(ip, attribute):
            return f"a {kind} address"
    if not ip.is_global and not ip.is_multicast:
        return "not a public address"  # e.g. shared address space 100.64.0.0/10
    return None


Resolver = Callable[..., Sequence[tuple[Any, ...]]]
# The resolver the guard uses (a module attribute so a test can answer for a
# name without any DNS).
RESOLVE: Resolver = socket.getaddrinfo


def parse_url(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL; raises UnsafeWebhookURL when malformed."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeWebhookURL(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeWebhookURL("must be an http:// or https:// URL")
    if not parts.hostname:
        raise UnsafeWebhookURL("must name a host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeWebhookURL("must not carry credentials; use http_config.headers")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def checked_addresses(
    host: str, port: int, *, allow_private: bool | None = None, resolve: Resolver | None = None
) -> list[str]:
    """The addresses `host` resolves to, once every one of them has passed the
    guard (or OPS_WEBHOOK_ALLOW_PRIVATE). Raises UnsafeWebhookURL, or
    socket.gaierror when the name does not resolve."""
    if allow_private is None:
        allow_private = settings.OPS_WEBHOOK_ALLOW_PRIVATE
    answers = (resolve or RESOLVE)(host, port, type=socket.SOCK_STREAM)
    addresses = [str(sockaddr[0]) for _family, _type, _proto, _canonname, sockaddr in answers]
    for address in [] if allow_private else addresses:
        refusal = address_refusal(address)
        if refusal is not None:
            literal = host.strip("[]") == address.split("%", 1)[0]
            what = f"{address} is {refusal}" if literal else f"{host} resolves to {address}, {refusal}"
            raise UnsafeWebhookURL(
                f"{what}; webhooks may only reach public addresses (unless OPS_WEBHOOK_ALLOW_PRIVATE is set)"
            )
    return addresses


def check_url(url: str, *, allow_private: bool | None = None, resolve: Resolver | None = None) -> None:
    """Raise UnsafeWebhookURL unless the URL is well formed and every address
    its host resolves to is public (or OPS_WEBHOOK_ALLOW_PRIVATE). Raises
    socket.gaierror when the name does not resolve."""
    host, port = parse_url(url)
    checked_addresses(host, port, allow_private=allow_private, resolve=resolve)


def check_url_for_registration(url: str) -> None:
    """check_url, with a name that does not resolve refused too (UnsafeWebhookURL)."""
    try:
        check_url(url)
    except socket.gaierror as exc:
        raise UnsafeWebhookURL(f"{parse_url(url)[0]} does not resolve: {exc.strerror}") from None


# --- events -------------------------------------------------------------------------


def events_of(finished: finish_hooks.Finished) -> list[tuple[str, dict[str, Any]]]:
    """The (event type, data) pairs a finished operation raises."""
    base = {"operation_type": finished.operation_type, "tag": finished.tag, "parent_id": finished.parent_id}
    if finished.status == OperationStatus.FAILED:
        return [(WebhookEvent.OPERATION_FAILED.value, {**base, "error": finished.error})]
    if finished.status != OperationStatus.COMPLETED:
        return []
    events = [(WebhookEvent.OPERATION_COMPLETED.value, {**base, "result": finished.result})]
    if finished.operation_type in RETAIN_TYPES:
        for document_id in finished.result.get("document_ids") or []:
            events.append((WebhookEvent.RETAIN_COMPLETED.value, {**base, "document_id": document_id}))
    if finished.operation_type == "consolidation":
        events.append((WebhookEvent.CONSOLIDATION_COMPLETED.value, {**base, "result": finished.result}))
    return events


def serialize_event(
    *, event: str, event_id: str, bank_id: str, operation_id: str | None, status: str, data: dict[str, Any]
) -> str:
    """The body of every attempt at delivering one event, serialized once."""
    return json.dumps(
        {
            "event": event,
            "event_id": event_id,
            "bank_id": bank_id,
            "operation_id": operation_id,
            "status": status,
            "timestamp": timezone.now().isoformat(),
            "data": data,
        },
        separators=(",", ":"),
        sort_keys=True,
        default=str,
    )


def _delivery(webhook_id: uuid.UUID | str, event: str, event_id: str, body: str, test: bool = False) -> services.Child:
    payload: dict[str, Any] = {"webhook_id": str(webhook_id), "event": event, "event_id": event_id, "body": body}
    if test:
        payload["test"] = True
    return services.Child(operation_type=WEBHOOK_DELIVERY, payload=payload)


def _queue_events(subscribed: list[tuple[uuid.UUID, list[str]]], finished: finish_hooks.Finished) -> None:
    """Inside the finishing transaction: one delivery per event and subscribed webhook."""
    deliveries = []
    for event, data in events_of(finished):
        targets = [pk for pk, event_types in subscribed if event in event_types]
        if not targets:
            continue
        event_id = str(uuid.uuid4())
        body = serialize_event(
            event=event,
            event_id=event_id,
            bank_id=finished.bank_id,
            operation_id=finished.operation_id,
            status=finished.status,
            data=data,
        )
        deliveries += [_delivery(pk, event, event_id, body) for pk in targets]
    if deliveries:
        services.operations_submit_many(bank_id=finished.bank_id, operations=deliveries)


def webhook_finish_hook(bank_id: str, operation_type: str) -> finish_hooks.Follower | None:
    """The finish hook's follower, asked when the bank may have webhooks: the
    enabled ones and what they subscribe to. A delivery never raises events
    (a failing receiver must not feed itself)."""
    if operation_type == WEBHOOK_DELIVERY:
        return None
    subscribed = list(Webhook.objects.filter(bank_id=bank_id, enabled=True).values_list("pk", "event_types"))
    if not subscribed:
        return None
    return partial(_queue_events, subscribed)


_OPERATIONS = Operation._meta.db_table
# The finish hook's question, asked by the finishing UPDATE itself (its
# RETURNING, or its WHERE): a probe of the partial index of enabled webhooks.
WEBHOOK_FINISH_HOOK = finish_hooks.Hook(
    may_act=(
        f"{_OPERATIONS}.operation_type <> '{WEBHOOK_DELIVERY}' AND EXISTS (SELECT 1 FROM "
        f"{Webhook._meta.db_table} hook WHERE hook.bank_id = {_OPERATIONS}.bank_id AND hook.enabled)"
    ),
    follower=webhook_finish_hook,
)


# --- services -----------------------------------------------------------------------


def webhook_create(
    *, bank: Bank, url: str, secret: str, event_types: list[str], enabled: bool, http_config: dict[str, Any]
) -> Webhook:
    """Register a webhook. The caller has checked the URL (check_url_for_registration)."""
    return Webhook.objects.create(
        bank=bank,
        url=url,
        secret_sealed=seal(secret),
        event_types=event_types,
        enabled=enabled,
        http_config=http_config,
    )


def webhook_update(*, webhook: Webhook, fields: dict[str, Any]) -> Webhook:
    """Change the given fields (`secret` is sealed; `http_config` keys replace
    the stored ones key by key)."""
    for name, value in fields.items():
        if name == "secret":
            webhook.secret_sealed = seal(value)
        elif name == "http_config":
            webhook.http_config = {**webhook.http_config, **value}
        else:
            setattr(webhook, name, value)
    webhook.save()
    return webhook


def webhook_send_test(*, webhook: Webhook) -> Operation:
    """Queue a `webhook.test` event to this webhook alone (whatever its event
    types, even when disabled: it is how one checks a receiver)."""
    event_id = str(uuid.uuid4())
    body = serialize_event(
        event=TEST_EVENT,
        event_id=event_id,
        bank_id=webhook.bank_id,
        operation_id=None,
        status=OperationStatus.COMPLETED,
        data={"message": "a test event", "webhook_id": str(webhook.pk)},
    )
    child = _delivery(webhook.pk, TEST_EVENT, event_id, body, test=True)
    with transaction.atomic():
        return services.operation_submit(
            bank_id=webhook.bank_id, operation_type=WEBHOOK_DELIVERY, payload=child.payload
        ).operation


# --- one attempt --------------------------------------------------------------------


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


# --- selectors ----------------------------------------------------------------------


class BadCursor(ValueError):
    pass


def _cursor_of(delivery: WebhookDelivery) -> str:
    # UTC with "Z": no "+" to be mangled into a space in a query string.
    return f"{delivery.created_at.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}|{delivery.pk}"


def deliveries_page(*, webhook: Webhook, limit: int, cursor: str | None) -> tuple[list[WebhookDelivery], str | None]:
    """A webhook's delivery attempts, newest first, after `cursor` (a
    `next_cursor` from the previous page; Hindsight's bare `created_at` is
    read too). Returns (page, next cursor or None). Raises BadCursor."""
    rows = WebhookDelivery.objects.filter(webhook=webhook).order_by("-created_at", "-id")
    if cursor:
        when_text, _, id_text = cursor.partition("|")
        when = parse_datetime(when_text.strip())
        if when is None or (id_text and not id_text.isdigit()):
            raise BadCursor(f"{cursor!r} is not a cursor this endpoint returned")
        if timezone.is_naive(when):
            when = timezone.make_aware(when, UTC)
        older = Q(created_at__lt=when)
        rows = rows.filter(older | Q(created_at=when, id__lt=int(id_text)) if id_text else older)
    page = list(rows[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return page, (_cursor_of(page[-1]) if more and page else None)
