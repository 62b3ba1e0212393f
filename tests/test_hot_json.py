"""The hot path encodes a JSON answer with orjson only where the bytes are Quart's own."""

from __future__ import annotations

import datetime
import decimal
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import pytest
from quart_trio import QuartTrio

from heaper_trio.web.hot_routes import HotRoutes


class Kind(StrEnum):
    a = "a"


@dataclass
class Point:
    x: int
    y: str


VALUES: list[Any] = [
    {"success": True, "id": "abc", "email": None, "n": 12, "nested": {"l": [1, 2.5, "x"]}},
    {"text": "héllo ☃ \U0001f600"},  # json escapes every non-ASCII character
    {"del": "a\x7fb", "ctl": '\x00\x1f\n\t"\\/'},
    {"small": 1e-05, "smaller": 2.3523573848418126e-09, "tiny": 5e-324, "rt": 0.0001},
    {"big": 1e16, "ints": [2**63 - 1, -(2**63), 2**64, -(2**63) - 1]},
    {1: "int key"},
    {"when": datetime.datetime(2026, 12, 2, 22, 0, tzinfo=datetime.UTC)},
    {"day": datetime.date(2026, 12, 2), "id": uuid.UUID(int=7), "d": decimal.Decimal("1.10")},
    {"point": Point(1, "y"), "kind": Kind.a},
    {"line-ending": "e-mail", "hyphen": "x-y"},
    [],
    "plain",
    None,
]


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_encoding_matches_quart(value: Any) -> None:
    app = QuartTrio(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]  (as create_app)
    quart = f"{app.json.dumps(value, separators=(',', ':'))}\n".encode()
    hot = HotRoutes.__new__(HotRoutes)
    hot.json = app.json
    assert hot._json(value) == quart
