"""The GET forms' query strings read as the POST bodies they stand for
(``routes_heaps.query_body``), fuzzed: integers only as ASCII digits within the JSON field's
bounds (past 2^63, negative, not a number: 400 invalid_value), booleans true/false/1/0, every
parameter known and given once (but ``type``), and any body the POST form takes reads back
equal from its query string."""

from __future__ import annotations

import string
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from quart_trio import QuartTrio

from heaper_trio.errors import BadRequest
from heaper_trio.web.routes_heaps import CHANGED_FIELDS, GET_QUERY, ONE_HEAP, query_body
from heaper_trio.web.schema import MAX_INT, obj

APP = QuartTrio(__name__)
CHANGED = obj({}, CHANGED_FIELDS, **ONE_HEAP)
IDS = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=40)


def read(schema: dict[str, Any], params: list[tuple[str, str]]) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        async with APP.test_request_context("/api/heap", query_string=params):  # type: ignore[arg-type]
            return query_body(schema)

    return trio.run(go)


def code_of(schema: dict[str, Any], params: list[tuple[str, str]]) -> str | None:
    try:
        read(schema, params)
    except BadRequest as e:
        return e.code
    return None


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.integers(), st.text(max_size=25), st.floats().map(str)))
def test_limit_is_a_json_integer_in_range(raw: int | str) -> None:
    text = str(raw)
    expected_ok = (
        text.isascii() and text.lstrip("-").isdigit() and len(text) <= 20 and 1 <= int(text) <= 500
    )
    code = code_of(GET_QUERY, [("heap_id", "h"), ("limit", text)])
    if expected_ok:
        assert code is None and read(GET_QUERY, [("heap_id", "h"), ("limit", text)])[
            "limit"
        ] == int(text)
    else:
        assert code == "invalid_value", (text, code)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from(["marker", "since"]))
def test_markers_hold_to_the_json_bounds(value: int, name: str) -> None:
    code = code_of(CHANGED, [("heap_id", "h"), (name, str(value))])
    assert (code is None) == (0 <= value <= MAX_INT), (value, code)
    if code is not None:
        assert code == "invalid_value"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=8))
def test_booleans(text: str) -> None:
    code = code_of(GET_QUERY, [("heap_id", "h"), ("unlinked", text)])
    if text.lower() in ("true", "1", "false", "0"):
        assert read(GET_QUERY, [("heap_id", "h"), ("unlinked", text)])["unlinked"] is (
            text.lower() in ("true", "1")
        )
    else:
        assert code == "invalid_value", text


BODIES = st.fixed_dictionaries(
    {"heap_id": IDS},
    optional={
        "type": st.one_of(
            st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=20),
            st.lists(st.text(alphabet=string.ascii_lowercase, max_size=20), min_size=2, max_size=5),
        ),
        "tag": IDS,
        "query": st.text(max_size=60).filter(lambda t: "\x00" not in t and t.isprintable()),
        "unlinked": st.booleans(),
        "has_content": st.booleans(),
        "trash": st.booleans(),
        "in_trash": st.booleans(),
        "sort": st.sampled_from(["created", "updated", "title"]),
        "order": st.sampled_from(["asc", "desc"]),
        "limit": st.integers(min_value=1, max_value=500),
        "cursor": st.text(alphabet=string.ascii_letters + string.digits + "-_=", max_size=80),
    },
)


def to_params(body: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name, value in body.items():
        for one in value if isinstance(value, list) else [value]:
            out.append((name, ("true" if one else "false") if isinstance(one, bool) else str(one)))
    return out


@settings(max_examples=300, deadline=None)
@given(BODIES)
def test_any_post_body_reads_back_from_its_query_string(body: dict[str, Any]) -> None:
    assert read(GET_QUERY, to_params(body)) == body


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ([("heap_id", "h"), ("limit", "1"), ("limit", "1")], "invalid_value"),
        ([("heap_id", "h"), ("sort", "title"), ("sort", "title")], "invalid_value"),
        ([("heap_id", "h"), ("workspaceId", "h")], "unknown_field"),
        ([("type", "tag")], "missing_field"),
        ([("heap_id", "h"), ("type", "x" * 51)], "invalid_value"),
        ([("heap_id", "h"), *[("type", f"t{i}") for i in range(11)]], "invalid_value"),
    ],
)
def test_refused_query_strings(params: list[tuple[str, str]], code: str) -> None:
    assert code_of(GET_QUERY, params) == code
