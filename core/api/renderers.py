"""JSON responses rendered by orjson: several times faster than the standard
library for large lists, with the same output for what the API returns."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import orjson
from rest_framework.renderers import BaseRenderer
from rest_framework.utils.encoders import JSONEncoder


def _default(value: Any) -> Any:
    # Lazy translation strings in DRF's error details, Decimal, and the like.
    return str(value)


class JSONRenderer(BaseRenderer):
    media_type = "application/json"
    format = "json"
    charset = None

    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Mapping[str, Any] | None = None
    ) -> bytes:
        if data is None:
            return b""
        try:
            return orjson.dumps(data, default=_default, option=orjson.OPT_NON_STR_KEYS)
        except TypeError:
            # An integer past 64 bits (stored JSON may hold one: PostgreSQL
            # keeps any number a client sent): the standard library has no limit.
            return json.dumps(data, cls=JSONEncoder, ensure_ascii=False, separators=(",", ":")).encode()
