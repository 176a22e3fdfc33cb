"""The guard against server-side request forgery: which addresses a webhook may reach."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings


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
