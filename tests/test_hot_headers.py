"""The hot path's request headers (web/hot_request.ScopeHeaders) read as werkzeug's Headers
built Quart's way from the same ASGI scope."""

from __future__ import annotations

import pytest
from werkzeug.datastructures import Headers

from heaper_trio.web.hot_request import ScopeHeaders

RAW = [
    (b"host", b"t"),
    (b"content-length", b"12"),
    (b"x-forwarded-for", b"1.2.3.4"),
    (b"x-forwarded-for", b"5.6.7.8"),
    (b"authorization", b"Bearer abc"),
    (b"x-latin", "caf\xe9".encode("latin1")),
    (b"x-bad-int", b"twelve"),
]


def quarts() -> Headers:
    headers = Headers()
    for name, value in RAW:
        headers.add(name.decode("latin1").title(), value.decode("latin1"))
    return headers


@pytest.mark.parametrize(
    "name",
    ["Host", "content-length", "X-FORWARDED-FOR", "authorization", "X-Latin", "Origin", ""],
)
def test_reads_as_werkzeug(name: str) -> None:
    ours, theirs = ScopeHeaders(RAW), quarts()
    assert ours.get(name) == theirs.get(name)
    assert ours.get(name, "d") == theirs.get(name, "d")
    assert ours.get(name, -1, type=int) == theirs.get(name, -1, type=int)
    assert (name in ours) == (name in theirs)
    assert ours.getlist(name) == theirs.getlist(name)
    if name in theirs:
        assert ours[name] == theirs[name]
    else:
        with pytest.raises(KeyError):
            ours[name]
    assert ours.get("x-bad-int", 0, type=int) == theirs.get("x-bad-int", 0, type=int) == 0
    assert list(ours) == list(theirs)
    assert 3 not in ours


def test_cannot_be_changed() -> None:
    headers = ScopeHeaders(RAW)
    with pytest.raises(TypeError):
        headers["Host"] = "other"
    with pytest.raises(TypeError):
        headers.add("Origin", "x")
