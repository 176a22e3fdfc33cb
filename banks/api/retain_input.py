"""A retain request's body, read into what the view needs.

Retains are the busiest write of the API: clients send many small ones, and
DRF's validation was a third of a submit's CPU (the serializer's fields are
deep-copied per request, then each item runs a dozen field objects). Most
bodies are plain: objects of strings, as Hindsight's clients send them. Those
are read here directly, with the serializers' rules (whitespace trimmed where
they trim it, the same limits, the same refusals). Anything else, and every
body with a problem, goes through `RetainRequestSerializer`, which owns the
error messages: a 400 says the same thing whichever way a body came.

It reads bodies as the JSON parser gives them (`core.api.parsers`): object
keys are strings, and any JSON value passes the fields Hindsight's clients
send that this service ignores (`update_mode`, …), as their JSONFields take
any. `tests/unit/test_retain_input.py` checks that both ways read every body
alike.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from rest_framework import serializers

from banks.api import memory_serializers as s
from banks.memory import RetainItem
from core.api.validators import no_nul_characters

_SURROGATE = re.compile("[\ud800-\udfff]")
# The limits are the serializers' own, read from their fields: one place to change them.
_ITEM: dict[str, Any] = dict(s.RetainItemSerializer().fields)
_REQUEST: dict[str, Any] = dict(s.RetainRequestSerializer().fields)
_ENTITY = _ITEM["entities"].child
_TIMESTAMP = _ITEM["timestamp"]
_ITEMS_MAX = _REQUEST["items"].max_length
_TAG_MAX = _REQUEST["tag"].max_length
_LABELS_MAX, _LABEL_MAX = _ITEM["tags"].max_length, _ITEM["tags"].child.max_length
_ENTITIES_MAX = _ITEM["entities"].max_length


@dataclass(frozen=True)
class RetainRequest:
    items: list[RetainItem]
    document_tags: list[str]
    operation_id: uuid.UUID | None
    tag: str | None
    is_async: bool


class _NotPlain(Exception):
    """The body needs the serializer: a type or a value read here does not take."""


def retain_request(data: Any) -> RetainRequest:
    """The request, or a ValidationError (400) from the serializer."""
    try:
        return _plain(data)
    except _NotPlain:
        pass
    serializer = s.RetainRequestSerializer(data={} if data is None else data)
    serializer.is_valid(raise_exception=True)
    return _from_serializer(dict(serializer.validated_data))


def _from_serializer(data: dict[str, Any]) -> RetainRequest:
    item_serializer = s.RetainItemSerializer()
    return RetainRequest(
        items=[item_serializer.to_item(item) for item in data["items"]],
        document_tags=data.get("document_tags") or [],
        operation_id=data.get("operation_id"),
        tag=data.get("tag") or None,
        is_async=bool(data.get("async")),
    )


def _plain(data: Any) -> RetainRequest:
    # Exact types: a QueryDict is a dict too, and JSON gives no subclasses.
    if type(data) is not dict:
        raise _NotPlain
    raw_items = data.get("items")
    if type(raw_items) is not list or not 0 < len(raw_items) <= _ITEMS_MAX:
        raise _NotPlain
    items = [_item(raw) for raw in raw_items]
    document_ids = [item.document_id for item in items if item.document_id]
    if len(set(document_ids)) != len(document_ids):
        raise _NotPlain  # the serializer names the duplicates
    operation_id = data.get("operation_id")
    if operation_id is not None:
        if type(operation_id) is not str:
            raise _NotPlain
        try:
            operation_id = uuid.UUID(hex=operation_id)
        except ValueError:
            raise _NotPlain from None
    is_async = data.get("async", False)
    if is_async is not None and type(is_async) is not bool:
        raise _NotPlain
    tag = data.get("tag")
    return RetainRequest(
        items=items,
        document_tags=_labels(data.get("document_tags")),
        operation_id=operation_id,
        tag=None if tag is None else _text(tag, max_length=_TAG_MAX, blank=True) or None,
        is_async=bool(is_async),
    )


def _item(raw: Any) -> RetainItem:
    if type(raw) is not dict:
        raise _NotPlain
    content = raw.get("content")
    if type(content) is not str or not content.strip():
        raise _NotPlain
    _check(content, max_length=_ITEM["content"].max_length)
    context = raw.get("context")
    document_id = raw.get("document_id")
    return RetainItem(
        content=content,
        timestamp=_timestamp(raw.get("timestamp")),
        context="" if context is None else _text(context, max_length=_ITEM["context"].max_length, blank=True),
        metadata=_metadata(raw.get("metadata")),
        document_id=None if document_id is None else _text(document_id, max_length=_ITEM["document_id"].max_length),
        tags=_labels(raw.get("tags")),
        entities=_entities(raw.get("entities")),
    )


def _text(value: Any, *, max_length: int, blank: bool = False) -> str:
    """A CharField's reading: trimmed; blank only where allowed."""
    if type(value) is not str:
        raise _NotPlain
    trimmed: str = value.strip()
    if not trimmed:
        if not blank:
            raise _NotPlain
        return ""
    _check(trimmed, max_length=max_length)
    return trimmed


def _check(value: str, *, max_length: int) -> None:
    if len(value) > max_length or "\x00" in value or (not value.isascii() and _SURROGATE.search(value)):
        raise _NotPlain


def _labels(value: Any) -> list[str]:
    """Tags: a list of non-blank labels, as many and as long as the serializer takes."""
    if value is None:
        return []
    if type(value) is not list or len(value) > _LABELS_MAX:
        raise _NotPlain
    return [_text(label, max_length=_LABEL_MAX) for label in value]


def _metadata(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if type(value) is not dict:
        raise _NotPlain
    try:
        no_nul_characters(value)
    except serializers.ValidationError:
        raise _NotPlain from None
    return dict(value)


def _timestamp(value: Any) -> Any:
    if value is None:
        return None
    try:
        return _TIMESTAMP.run_validation(value)
    except serializers.ValidationError:
        raise _NotPlain from None


def _entities(value: Any) -> list[Any]:
    if value is None:
        return []
    if type(value) is not list or len(value) > _ENTITIES_MAX:
        raise _NotPlain
    try:
        return [_ENTITY.to_internal_value(entity) for entity in value]
    except serializers.ValidationError:
        raise _NotPlain from None
