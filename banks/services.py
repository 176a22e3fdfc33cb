"""Writes of banks."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from banks.models import Bank

BANK_FIELDS = ("name", "mission", "background", "enable_observations", "enable_auto_consolidation", "config")


def bank_put(*, bank_id: str, fields: dict[str, Any]) -> tuple[Bank, bool]:
    """Create the bank, or update the given fields of an existing one; returns
    (bank, created). Fields given as None keep their current (or default) value;
    `disposition_traits` (some or all traits) change those of the disposition."""
    values = {k: v for k, v in fields.items() if k in BANK_FIELDS and v is not None}
    traits = fields.get("disposition_traits") or {}
    with transaction.atomic():
        bank, created = Bank.objects.select_for_update().get_or_create(bank_id=bank_id, defaults=values)
        if traits:
            values["disposition"] = {**bank.disposition, **traits}
        if values and (traits or not created):
            for name, value in values.items():
                setattr(bank, name, value)
            bank.save(update_fields=[*values, "updated_at"])
    return bank, created


def bank_ensure(*, bank_id: str) -> Bank:
    """The bank, created with defaults on first use (as Hindsight does on retain)."""
    bank, _ = Bank.objects.get_or_create(bank_id=bank_id)
    return bank


def bank_delete(*, bank: Bank) -> int:
    """Delete the bank and everything in it; returns how many operations went with it.
    A running operation loses its row, so its worker stops at the next checkpoint."""
    with transaction.atomic():
        count = bank.operations.count()
        bank.delete()
    return count
