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

from banks.webhooks.addresses import (
    Resolver,
    UnsafeWebhookURL,
    address_refusal,
    check_url,
    check_url_for_registration,
    checked_addresses,
    parse_url,
)
from banks.webhooks.events import WEBHOOK_FINISH_HOOK, events_of, serialize_event, webhook_finish_hook
from banks.webhooks.policy import (
    DEFAULT_EVENT_TYPES,
    DEFAULT_TIMEOUT_SECONDS,
    MAX_TIMEOUT_SECONDS,
    RESERVED_HEADER_PREFIXES,
    RESERVED_HEADERS,
    RESPONSE_EXCERPT_BYTES,
    RETAIN_TYPES,
    TEST_EVENT,
    USER_AGENT,
    WEBHOOK_DELIVERY,
)
from banks.webhooks.sealing import SecretUnreadable, seal, unseal
from banks.webhooks.selectors import BadCursor, deliveries_page
from banks.webhooks.sending import Attempt, post_event
from banks.webhooks.signing import signature_headers
from banks.webhooks.subscriptions import webhook_create, webhook_send_test, webhook_update

__all__ = [
    "DEFAULT_EVENT_TYPES",
    "DEFAULT_TIMEOUT_SECONDS",
    "MAX_TIMEOUT_SECONDS",
    "RESERVED_HEADERS",
    "RESERVED_HEADER_PREFIXES",
    "RESPONSE_EXCERPT_BYTES",
    "RETAIN_TYPES",
    "TEST_EVENT",
    "USER_AGENT",
    "WEBHOOK_DELIVERY",
    "WEBHOOK_FINISH_HOOK",
    "Attempt",
    "BadCursor",
    "Resolver",
    "SecretUnreadable",
    "UnsafeWebhookURL",
    "address_refusal",
    "check_url",
    "check_url_for_registration",
    "checked_addresses",
    "deliveries_page",
    "events_of",
    "parse_url",
    "post_event",
    "seal",
    "serialize_event",
    "signature_headers",
    "unseal",
    "webhook_create",
    "webhook_finish_hook",
    "webhook_send_test",
    "webhook_update",
]
