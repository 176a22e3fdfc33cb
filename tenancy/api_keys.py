"""Issuing and checking API keys."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.db import connection
from django.utils import timezone

from core import prepared
from tenancy.models import ApiKey, bank_id_validator

KEY_PREFIX = "ops_"


def _hash(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def api_key_create(*, name: str = "", admin: bool = False, bank_ids: list[str] | None = None) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the raw key, which is never stored.

    Raises ValueError when the key would reach nothing (neither admin nor any bank)
    or a bank id is malformed.
    """
    bank_ids = sorted(set(bank_ids or []))
    if not admin and not bank_ids:
        raise ValueError("an API key must be an admin key or name at least one bank")
    for bank_id in bank_ids:
        bank_id_validator(bank_id)
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(
        name=name,
        prefix=raw[: len(KEY_PREFIX) + 8],
        key_hash=_hash(raw),
        is_admin=admin,
        bank_ids=[] if admin else bank_ids,
    )
    return key, raw


# `last_used_at` says when a key was last used to about this precision: writing
# it on every request cost a write per read.
LAST_USED_PRECISION = timedelta(seconds=60)


# Every API request's key lookup, with whether `last_used_at` is due a touch:
# run as a prepared statement (queries.execute), since the ORM building it
# anew was a sixth of a submission's CPU. `key_hash` is unique.
_LOOKUP = (
    "SELECT id, name, prefix, is_admin, bank_ids, (last_used_at IS NULL OR last_used_at <= %s)"
    " FROM banks_apikey WHERE key_hash = %s AND revoked_at IS NULL"
)
_LOOKED_UP = ["id", "name", "prefix", "is_admin", "bank_ids"]  # in the model's field order


def api_key_authenticate(raw_key: str) -> ApiKey | None:
    """The live key matching `raw_key` (its other fields load on access), or
    None. Touches `last_used_at` at most once a minute per key."""
    now = timezone.now()
    row = prepared.fetchone(_LOOKUP, [prepared.adapt(now - LAST_USED_PRECISION, connection), _hash(raw_key)])
    if row is None:
        return None
    pk, name, prefix, is_admin, bank_ids, stale = row
    if stale:
        ApiKey.objects.filter(pk=pk).update(last_used_at=now)
    return ApiKey.from_db(
        connection.alias, _LOOKED_UP, [pk, name, prefix, bool(is_admin), prepared.json_value(bank_ids)]
    )


def api_key_revoke(*, key_id: int) -> bool:
    """Revoke a live key at once (its next request is 401). False when it was
    already revoked or does not exist; a revoked key stays listed for audit."""
    return bool(ApiKey.objects.filter(pk=key_id, revoked_at__isnull=True).update(revoked_at=timezone.now()))
