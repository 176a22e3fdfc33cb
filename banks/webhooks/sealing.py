"""A webhook's secret at rest: encrypted (Fernet, keyed from DJANGO_SECRET_KEY),
because the signer needs it back."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


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
