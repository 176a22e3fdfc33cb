"""A retain body reads the same whether it takes the plain path or the
serializer: the plain path accepts only what the serializer accepts, and
reads it into the same items; what it cannot read goes to the serializer,
which names the problem."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from rest_framework.exceptions import ValidationError

from banks.api import memory_serializers as s
from banks.api import retain_input
from banks.api.retain_input import RetainRequest, retain_request

# Values near every rule of the serializer: trimmed and blank strings, limits,
# NUL, wrong types, nulls, unicode.
_EDGE_TEXT = st.sampled_from(
    [
        *("x", " padded ", "", "   ", "\n", "a\x00b", "ünïcode ✓", "\u2003spaced\u2003", "a\ud800b"),
        *("x" * 100, "x" * 101, " " + "x" * 100, "x" * 200, "x" * 201, "x" * 512, " " + "x" * 512 + " ", "x" * 513),
    ]
)
_TEXT = st.one_of(_EDGE_TEXT, st.text(max_size=20))
_ANY_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False), _TEXT)
_LABELS = st.one_of(
    st.none(),
    _ANY_SCALAR,
    st.lists(st.one_of(_TEXT, _ANY_SCALAR), max_size=4),
    st.sampled_from([["t"] * 100, ["t"] * 101]),
)
_JSON = st.recursive(_ANY_SCALAR, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3))
_ITEM = st.fixed_dictionaries(
    {},
    optional={
        "content": st.one_of(
            _ANY_SCALAR, st.sampled_from(["x" * s.CONTENT_MAX_CHARS, "x" * (s.CONTENT_MAX_CHARS + 1)])
        ),
        "context": st.one_of(_ANY_SCALAR, st.sampled_from(["c" * 20_000, " " + "c" * 20_000])),
        "document_id": _ANY_SCALAR,
        "tags": _LABELS,
        "metadata": st.one_of(_ANY_SCALAR, st.dictionaries(_TEXT, _JSON, max_size=3)),
        "timestamp": st.one_of(
            _ANY_SCALAR, st.sampled_from(["2026-01-02T03:04:05Z", "2026-01-02T03:04:05+02:00", "2026-01-02", "soon"])
        ),
        "entities": st.one_of(
            _ANY_SCALAR,
            st.lists(st.one_of(_TEXT, st.fixed_dictionaries({"text": _ANY_SCALAR, "type": _ANY_SCALAR})), max_size=3),
            st.sampled_from([["Ada"] * 200, ["Ada"] * 201]),
        ),
        "update_mode": _JSON,
    },
)
# Derandomized below: the same examples every run, so CI stays reproducible.
_BODY = st.one_of(
    _JSON,
    st.fixed_dictionaries(
        {},
        optional={
            "items": st.one_of(_ANY_SCALAR, st.lists(st.one_of(_ITEM, _ANY_SCALAR), max_size=4)),
            "async": _ANY_SCALAR,
            "tag": st.one_of(_ANY_SCALAR, st.just("t" * 201)),
            "document_tags": _LABELS,
            "operation_id": st.one_of(
                _ANY_SCALAR,
                st.uuids().map(str),
                st.uuids().map(lambda u: "{" + u.hex + "}"),
                st.uuids().map(lambda u: u.int),
            ),
        },
    ),
)


# Bodies that are valid but for at most one field: most take the plain path.
_VALID_ITEM = st.fixed_dictionaries(
    {"content": st.sampled_from(["Ada met Charles.", "  padded content  ", "ünïcode ✓"])},
    optional={
        "context": st.sampled_from([None, "", "  a meeting  ", "c" * 20_000]),
        "document_id": st.sampled_from([None, "doc", " doc-2 ", "d" * 512]),
        "tags": st.sampled_from([None, [], [" team "], ["t"] * 100]),
        "metadata": st.sampled_from([None, {}, {"source": "slack", "n": [1, None]}]),
        "timestamp": st.sampled_from([None, "2026-01-02T03:04:05Z"]),
        "entities": st.sampled_from([None, [], ["Ada", {"text": "Charles", "type": "person"}]]),
    },
)
_NEARLY_VALID = st.tuples(
    st.fixed_dictionaries(
        {"items": st.lists(_VALID_ITEM, min_size=1, max_size=3)},
        optional={
            "async": st.booleans(),
            "tag": st.sampled_from([None, " import "]),
            "document_tags": st.sampled_from([None, [], ["a", " b "]]),
        },
    ),
    st.sampled_from(["content", "context", "document_id", "tags", "metadata", "timestamp", "entities", None]),
    _ANY_SCALAR,
).map(lambda spoiled: _spoiled(*spoiled))


def _spoiled(body: dict[str, Any], field: str | None, value: Any) -> dict[str, Any]:
    if field is not None:
        body["items"][0][field] = value
    return body


def _by_serializer(body: Any) -> RetainRequest | None:
    serializer = s.RetainRequestSerializer(data={} if body is None else body)
    if not serializer.is_valid():
        return None
    return retain_input._from_serializer(dict(serializer.validated_data))


def _plainly(body: Any) -> RetainRequest | None:
    try:
        return retain_input._plain(body)
    except retain_input._NotPlain:
        return None


@settings(max_examples=1500, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(body=st.one_of(_BODY, _NEARLY_VALID))
def test_the_plain_path_reads_only_what_the_serializer_accepts_and_reads_it_alike(body: Any) -> None:
    plain = _plainly(body)
    if plain is not None:
        assert plain == _by_serializer(body)
    else:
        event("serializer")
    if plain is not None:
        event("plain path")


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(body=_NEARLY_VALID)
def test_every_body_the_serializer_accepts_plainly_takes_the_plain_path(body: dict[str, Any]) -> None:
    # Spoiled with a scalar, a field may still be valid (a string, a null)
    # or be one the plain path leaves to the serializer (a number as text).
    by_serializer = _by_serializer(body)
    first = body["items"][0]
    plain_values = all(v is None or isinstance(v, (str, list, dict)) for v in first.values())
    if by_serializer is not None and plain_values:
        assert _plainly(body) == by_serializer


@pytest.mark.parametrize(
    "body",
    [
        {"items": [{"content": "Ada met Charles in London."}], "async": True},
        {
            "items": [
                {
                    "content": "  kept as sent  ",
                    "context": " a meeting \n",
                    "document_id": " doc-1 ",
                    "timestamp": "2026-01-02T03:04:05+02:00",
                    "metadata": {"source": "slack", "n": 3, "nested": {"a": [1, None]}},
                    "tags": [" team ", "ops"],
                    "entities": ["Ada", {"text": "Charles", "type": "person"}],
                    "update_mode": None,
                },
                {"content": "second", "document_id": "doc-2", "context": "   ", "tags": None, "metadata": None},
            ],
            "async": None,
            "tag": "  import ",
            "document_tags": ["a"],
            "operation_id": "{12345678-1234-5678-1234-567812345678}",
        },
    ],
)
def test_plain_bodies_take_the_plain_path(body: dict[str, Any]) -> None:
    plain = _plainly(body)
    assert plain is not None, "a plain body went to the serializer"
    assert plain == _by_serializer(body)
    assert retain_request(body) == plain


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"items": [{"content": "   "}]}, "items"),
        (
            {"items": [{"content": "a", "document_id": "d"}, {"content": "b", "document_id": " d"}]},
            "items.1.document_id",
        ),
        ({"items": [{"content": "a\x00"}]}, "items"),
        ({"items": [{"content": "a"}], "tag": "t" * 201}, "tag"),
        ({"items": [{"content": "a", "tags": ["t"] * 101}]}, "items"),
        ({"items": [{"content": "a", "entities": ["Ada"] * 201}]}, "items"),
        ({"items": [{"content": "a"}], "document_tags": ["t"] * 101}, "document_tags"),
        ({"items": [{"content": "a", "document_id": " " + "d" * 513}]}, "items"),
        ({"items": [{"content": "a\ud800"}]}, "items"),
        ({"items": []}, "items"),
        (None, "items"),
    ],
)
def test_a_body_with_a_problem_gets_the_serializers_error(body: Any, field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        retain_request(body)
    serializer = s.RetainRequestSerializer(data={} if body is None else body)
    assert not serializer.is_valid()
    assert raised.value.detail == serializer.errors
    assert field in raised.value.detail
