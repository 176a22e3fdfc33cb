"""Dedupe and serialization keys become unambiguous: the bank id part escapes
':' (and '%'), as `registry.escape_key_part` does, so bank `x` with document
`y:z` and bank `x:y` with document `z` no longer share a key.

A stored key is `<type>:<bank_id>` or `<type>:<bank_id>:<value>`; its type and
bank are the row's own, so the new key is the escaped prefix plus whatever
followed the old one. One UPDATE per column, in SQL both PostgreSQL and SQLite run.
"""

from __future__ import annotations

from django.db import migrations

ESCAPED_BANK = "replace(replace(bank_id, '%', '%25'), ':', '%3A')"


def _rekey(column: str) -> str:
    return (
        f"UPDATE operations_operation SET {column} = operation_type || ':' || {ESCAPED_BANK}"
        f" || substr({column}, length(operation_type) + length(bank_id) + 2)"
        f" WHERE {column} IS NOT NULL AND {ESCAPED_BANK} <> bank_id"
    )


def _unkey(column: str) -> str:
    return (
        f"UPDATE operations_operation SET {column} = operation_type || ':' || bank_id"
        f" || substr({column}, length(operation_type) + length({ESCAPED_BANK}) + 2)"
        f" WHERE {column} IS NOT NULL AND {ESCAPED_BANK} <> bank_id"
    )


class Migration(migrations.Migration):
    dependencies = [("operations", "0003_dispatch_window_indexes")]

    operations = [
        migrations.RunSQL(_rekey(column), reverse_sql=_unkey(column)) for column in ("dedupe_key", "serial_key")
    ]
