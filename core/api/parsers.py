"""The JSON request parser: orjson, with a nesting limit.

Python's own parser answers a body nested a few thousand levels deep with a
RecursionError (a 500), and even a body it can parse may be too deep for what
runs after it (serializers, `json.dumps` on the way to the database). Bodies
nested deeper than `OPS_MAX_JSON_DEPTH` are refused with a 400 that says so;
numbers that do not fit a double, NaN and Infinity are refused by orjson.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser


def nested_deeper_than(value: Any, limit: int) -> bool:
    """True when containers (objects, arrays) nest more than `limit` levels.
    Iterative, so any depth is safe to check."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def parse_json(raw: bytes | str, *, what: str = "the request body") -> Any:
    """Parse JSON text; raises ParseError (400) naming the problem."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):
            raise ParseError(
                f"{what} is JSON nested too deeply (at most {settings.OPS_MAX_JSON_DEPTH} levels)"
            ) from None
        raise ParseError(f"{what} is not valid JSON: {exc}") from None
    limit = settings.OPS_MAX_JSON_DEPTH
    if isinstance(value, (dict, list)):
        text = raw if isinstance(raw, bytes) else raw.encode()
        # Fewer brackets than the limit cannot nest past it: skip the walk.
        if text.count(b"[") + text.count(b"{") > limit and nested_deeper_than(value, limit):
            raise ParseError(f"{what} is JSON nested too deeply (at most {limit} levels)")
    return value


class JSONParser(BaseParser):
    media_type = "application/json"

    def parse(
        self, stream: IO[bytes] | None, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> Any:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raw = stream.read(limit + 1) if stream is not None else b""
        if limit is not None and len(raw) > limit:
            raise RequestDataTooBig(f"the body is larger than OPS_MAX_REQUEST_BYTES ({limit} bytes)")
        if not raw:
            raise ParseError("the request body is empty; send a JSON value")
        return parse_json(raw)
