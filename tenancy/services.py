"""Finding banks, and their writes."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from django.db import connection, transaction

from core import prepared
from tenancy.models import Bank

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


def bank_find(bank_id: str) -> Bank | None:
    """The bank, or None: the lookup of every bank-scoped request, run as a
    prepared statement (queries.execute) with the fields converted as the ORM
    would (building the query anew each time was a tenth of a request's CPU)."""
    statement, converters = _find()
    row = prepared.fetchone(statement, [bank_id])
    if row is None:
        return None
    return Bank.from_db(
        connection.alias,
        None,  # type: ignore[arg-type]  # None: every concrete field, in order (Django's own default)
        [convert(value) for convert, value in zip(converters, row, strict=True)],
    )


@cache
def _find() -> tuple[str, list[Callable[[Any], Any]]]:
    """The lookup's statement and a converter per column (one database per process)."""
    fields = Bank._meta.concrete_fields
    quote = connection.ops.quote_name
    columns = ", ".join(quote(str(field.column)) for field in fields)
    statement = f"SELECT {columns} FROM {quote(Bank._meta.db_table)} WHERE {quote(str(Bank._meta.pk.column))} = %s"
    return statement, [_converter(field) for field in fields]


def _converter(field: Any) -> Callable[[Any], Any]:
    column = field.get_col(Bank._meta.db_table)
    steps = [*connection.ops.get_db_converters(column), *field.get_db_converters(connection)]

    def convert(value: Any) -> Any:
        for step in steps:
            value = step(value, column, connection)
        return value

    return convert


def bank_ensure(*, bank_id: str) -> Bank:
    """The bank, created with defaults on first use (as Hindsight does on retain)."""
    bank = bank_find(bank_id)
    if bank is None:
        bank, _ = Bank.objects.get_or_create(bank_id=bank_id)
    return bank


def bank_delete(*, bank: Bank) -> int:
    """Delete the bank and everything in it; returns how many operations went with it.
    A running operation loses its row, so its worker stops at the next checkpoint."""
    with transaction.atomic():
        count = bank.operations.count()
        bank.delete()
    return count
