"""Input checks shared by the API's serializers."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers


def no_nul_characters(value: Any) -> None:
    """PostgreSQL cannot store U+0000 in text or JSON: refuse it (400) rather
    than fail at the database (500). Walks nested JSON, keys included."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise serializers.ValidationError("must not contain the NUL character (U+0000)")
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
