"""What every webhook shares: event defaults, time limits, reserved headers."""

from __future__ import annotations

from banks.models import WebhookEvent

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
