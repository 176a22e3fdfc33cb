"""The signatures a delivery carries (Hindsight's, and ours with a timestamp)."""

from __future__ import annotations

import hashlib
import hmac


def _hmac_hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_headers(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    """Both signature headers of one attempt."""
    return {
        "X-Hindsight-Signature": f"sha256={_hmac_hex(secret, body)}",
        "X-Ops-Signature": f"t={timestamp},v1={_hmac_hex(secret, f'{timestamp}.'.encode() + body)}",
    }
