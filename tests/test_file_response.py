"""file_response: ranges, validators, HEAD, dispositions and files that change under us.

A tiny QuartTrio app serves files from a tmp dir through hypercorn on an ephemeral loopback
port, and httpx talks to it over a real socket: streaming, HEAD and short bodies are exactly
what a browser would get. The pure decisions (ranges.py) are also checked on their own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypothesis import given
from hypothesis import strategies as st
from quart import request
from quart_trio import QuartTrio

from heaper_trio.web import file_response as file_response_module
from heaper_trio.web.errors import install_error_handlers
from heaper_trio.web.file_response import file_response
from heaper_trio.web.ranges import (
    ByteRange,
    RangeNotSatisfiable,
    content_disposition,
    parse_range,
    plan_response,
)

from .conftest import assert_error

ETAG = "ab" * 32  # the content hash the caller passes
MTIME = 1_700_000_000.75
MTIME_HTTP = "Tue, 14 Nov 2023 22:13:20 GMT"
DATA = bytes((i * 7 + i // 256) % 256 for i in range(1000))
HYPERCORN_LOG = "test_file_response.hypercorn"


def make_app(root: Path) -> QuartTrio:
    app = QuartTrio("file_response_test")
    install_error_handlers(app)

    async def serve_file(name: str) -> Any:
        q = request.args
        return await file_response(
            root / name,
            size=int(q["size"]) if "size" in q else None,
            mime_type=q.get("type", "application/octet-stream"),
            etag=ETAG,
            last_modified=MTIME,
            filename=q.get("filename"),
            disposition="inline" if q.get("inline") else "attachment",
            immutable=bool(q.get("immutable")),
        )

    @app.route("/file/<name>")
    async def get_file(name: str) -> Any:
        return await serve_file(name)

    @app.route("/vanish/<name>")
    async def vanish(name: str) -> Any:
        response = await serve_file(name)  # opened, headers decided ...
        os.truncate(root / name, 10)  # ... and the file is cut short before the body is read
        return response

    @app.route("/fd/<name>")
    async def from_descriptor(name: str) -> Any:
        fd = os.open(root / name, os.O_RDONLY)
        (root / name).unlink()  # what is served is the open file, not what the path holds
        return await file_response(
            fd,
            mime_type=request.args.get("type", "text/plain"),
            etag=ETAG,
            last_modified=MTIME,
            filename=None,
            disposition="inline",
        )

    return app


@dataclass
class Served:
    http: httpx.AsyncClient
    root: Path

    def put(self, name: str, data: bytes) -> Path:
        path = self.root / name
        path.write_bytes(data)
        return path


@pytest.fixture
async def served(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Served]:
    cfg = Config()
    cfg.bind = ["127.0.0.1:0"]
    cfg.accesslog = None
    cfg.errorlog = logging.getLogger(HYPERCORN_LOG)
    cfg.graceful_timeout = 0.5
    shutdown = trio.Event()
    urls = await nursery.start(
        partial(serve, make_app(tmp_path), cfg, shutdown_trigger=shutdown.wait)
    )
    async with httpx.AsyncClient(base_url=urls[0], timeout=10) as http:
        s = Served(http, tmp_path)
        s.put("f.bin", DATA)
        yield s
    shutdown.set()


def fds_open_on(path: Path) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(path)):
                count += 1
        except OSError:
            pass
    return count


async def wait_closed(path: Path) -> None:
    with trio.fail_after(5):
        while fds_open_on(path):
            await trio.sleep(0.01)


def server_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == HYPERCORN_LOG and r.levelno >= logging.ERROR
    ]


# -- ranges over the wire -------------------------------------------------------------------


@pytest.mark.parametrize(
    "header,first,last",
    [
        ("bytes=0-1", 0, 1),  # Safari's probe: 206 with exactly two bytes
        ("bytes=0-", 0, 999),
        ("bytes=500-", 500, 999),
        ("bytes=990-5000", 990, 999),  # clamped, also in Content-Range
        ("bytes=999-999", 999, 999),
        ("bytes=-100", 900, 999),
        ("bytes=-5000", 0, 999),
        ("BYTES=3-4", 3, 4),  # units are case-insensitive
        ("bytes=3-4,", 3, 4),  # empty list elements are allowed
        ("bytes= 3-4", 3, 4),  # OWS around list elements
    ],
)
async def test_single_range_is_206(served: Served, header: str, first: int, last: int) -> None:
    r = await served.http.get("/file/f.bin", headers={"Range": header})
    assert r.status_code == 206
    assert r.content == DATA[first : last + 1]
    assert r.headers["content-range"] == f"bytes {first}-{last}/1000"
    assert r.headers["content-length"] == str(last - first + 1)
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["etag"] == f'"{ETAG}"'


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=1000-2000", "bytes=5000-", "bytes=-0"])
async def test_unsatisfiable_range_is_416(served: Served, header: str) -> None:
    r = await served.http.get("/file/f.bin", headers={"Range": header})
    assert_error(r, 416, "range_not_satisfiable")
    assert r.headers["content-range"] == "bytes */1000"


@pytest.mark.parametrize(
    "header",
    [
        "bytes=5-2",  # last before first: invalid, so ignored
        "bytes=abc",
        "bytes=",
        "bytes=-",
        "bytes",
        "garbage",
        "bytes=1-2-3",
        "bytes=0x1-2",
        "bytes=0-1,5-6",  # multi-range: we may, and do, send the whole file
        "bytes=0-1,2000-",
        "items=0-1",  # not a unit we know
        "bytes=" + "9" * 5000 + "-",  # more digits than int() takes
    ],
)
async def test_ignored_range_is_200(served: Served, header: str) -> None:
    r = await served.http.get("/file/f.bin", headers={"Range": header})
    assert r.status_code == 200
    assert r.content == DATA
    assert "content-range" not in r.headers
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["content-length"] == "1000"


async def test_range_across_read_chunks(served: Served) -> None:
    big = os.urandom(3 * 2**20 + 12345)
    served.put("big.bin", big)
    r = await served.http.get("/file/big.bin")
    assert r.status_code == 200 and r.content == big
    first, last = 2**20 - 7, 2 * 2**20 + 9
    r = await served.http.get("/file/big.bin", headers={"Range": f"bytes={first}-{last}"})
    assert r.status_code == 206 and r.content == big[first : last + 1]


@pytest.mark.parametrize(
    "if_range,status",
    [
        (f'"{ETAG}"', 206),
        ('"something-else"', 200),
        (f'W/"{ETAG}"', 200),  # If-Range needs the strong comparison
        (MTIME_HTTP, 206),  # Last-Modified is whole seconds
        ("Tue, 14 Nov 2023 22:13:21 GMT", 200),  # a date must match exactly
        ("Tue, 14 Nov 2023 22:13:19 GMT", 200),
        ("not a date", 200),
    ],
)
async def test_if_range(served: Served, if_range: str, status: int) -> None:
    r = await served.http.get("/file/f.bin", headers={"Range": "bytes=10-19", "If-Range": if_range})
    assert r.status_code == status
    assert r.content == (DATA[10:20] if status == 206 else DATA)


# -- validators -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers,status",
    [
        ({"If-None-Match": f'"{ETAG}"'}, 304),
        ({"If-None-Match": f'"nope", "{ETAG}"'}, 304),
        ({"If-None-Match": f'"nope",W/"{ETAG}"'}, 304),  # weak comparison for If-None-Match
        ({"If-None-Match": "*"}, 304),
        ({"If-None-Match": '"nope"'}, 200),
        ({"If-None-Match": "garbage"}, 200),
        ({"If-None-Match": f'"{ETAG}"', "Range": "bytes=0-1"}, 304),
        ({"If-Modified-Since": MTIME_HTTP}, 304),
        ({"If-Modified-Since": "Wed, 15 Nov 2023 00:00:00 GMT"}, 304),
        ({"If-Modified-Since": "Tuesday, 14-Nov-23 22:13:20 GMT"}, 304),  # RFC 850 form
        ({"If-Modified-Since": "Tue Nov 14 22:13:20 2023"}, 304),  # asctime form
        ({"If-Modified-Since": "Tue, 14 Nov 2023 22:13:19 GMT"}, 200),
        ({"If-Modified-Since": "yesterday"}, 200),
        # If-None-Match present: If-Modified-Since is not looked at (RFC 9110 §13.1.3)
        ({"If-None-Match": '"nope"', "If-Modified-Since": MTIME_HTTP}, 200),
    ],
)
async def test_conditional_get(served: Served, headers: dict[str, str], status: int) -> None:
    r = await served.http.get("/file/f.bin", headers=headers)
    assert r.status_code == status
    assert r.headers["etag"] == f'"{ETAG}"'
    assert r.headers["cache-control"] == "private, max-age=3600"
    if status == 304:
        assert r.content == b""
        assert "content-type" not in r.headers and "content-length" not in r.headers
        assert r.headers["last-modified"] == MTIME_HTTP
    else:
        assert r.content == DATA


async def test_headers_of_a_plain_get(served: Served) -> None:
    r = await served.http.get("/file/f.bin", params={"type": "text/plain; charset=utf-8"})
    assert r.status_code == 200 and r.content == DATA
    assert r.headers["content-type"] == "text/plain; charset=utf-8"  # kept as given
    assert r.headers["content-length"] == "1000"
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["etag"] == f'"{ETAG}"'
    assert r.headers["last-modified"] == MTIME_HTTP
    assert r.headers["cache-control"] == "private, max-age=3600"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-security-policy"] == "sandbox"
    assert r.headers["content-disposition"] == "attachment"


@pytest.mark.parametrize(
    "headers,status",
    [
        ({}, 200),
        ({"Range": "bytes=2-5"}, 206),
        ({"If-None-Match": f'"{ETAG}"'}, 304),
        ({"Range": "bytes=5000-"}, 416),
    ],
)
async def test_every_answer_is_sandboxed_and_not_sniffed(
    served: Served, headers: dict[str, str], status: int
) -> None:
    for method in ("GET", "HEAD"):
        r = await served.http.request(method, "/file/f.bin", headers=headers)
        assert r.status_code == status
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["content-security-policy"] == "sandbox"


async def test_an_open_descriptor_is_served_and_closed(served: Served) -> None:
    """The caller hands over a descriptor: its file is served (not what the path holds by
    then), and closed after the body, after a 304/416, and after HEAD."""
    path = served.root / "held.bin"
    for method, headers, status, body in (
        ("GET", {}, 200, DATA),
        ("GET", {"Range": "bytes=10-19"}, 206, DATA[10:20]),
        ("GET", {"If-None-Match": f'"{ETAG}"'}, 304, b""),
        ("HEAD", {}, 200, b""),
        ("GET", {"Range": "bytes=5000-"}, 416, None),
    ):
        served.put("held.bin", DATA)
        r = await served.http.request(method, "/fd/held.bin", headers=headers)
        assert r.status_code == status
        if body is not None:
            assert r.content == body
        assert not path.exists()
        await wait_closed(path)  # the unlinked file's descriptor is gone too


async def test_immutable_thumbnails(served: Served) -> None:
    r = await served.http.get("/file/f.bin", params={"immutable": "1", "type": "image/webp"})
    assert r.headers["cache-control"] == "private, max-age=31536000, immutable"
    assert r.headers["content-type"] == "image/webp"


async def test_malformed_media_type_is_not_sent(served: Served) -> None:
    r = await served.http.get("/file/f.bin", params={"type": "text/html\r\nX-Evil: 1"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert "x-evil" not in r.headers


# -- HEAD -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers", [{}, {"Range": "bytes=0-1"}, {"Range": "bytes=-0"}, {"If-None-Match": f'"{ETAG}"'}]
)
async def test_head_has_the_headers_of_get_and_no_body(
    served: Served, headers: dict[str, str]
) -> None:
    got = await served.http.get("/file/f.bin", headers=headers)
    head = await served.http.head("/file/f.bin", headers=headers)
    assert head.status_code == got.status_code
    assert head.content == b""

    def comparable(r: httpx.Response) -> dict[str, str]:
        return {k: v for k, v in r.headers.items() if k != "date"}

    assert comparable(head) == comparable(got)


async def test_head_does_not_read_the_file(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_body(*args: object) -> None:
        raise AssertionError("HEAD read the file")

    monkeypatch.setattr(file_response_module, "_read_file", no_body)
    r = await served.http.head("/file/f.bin")
    assert r.status_code == 200 and r.headers["content-length"] == "1000"


# -- Content-Disposition ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,disposition,expected",
    [
        (
            'Résumé "final".pdf',
            "attachment",
            (
                'attachment; filename="Resume final.pdf"; '
                "filename*=UTF-8''R%C3%A9sum%C3%A9%20%22final%22.pdf"
            ),
        ),
        (
            "日本語.txt",
            "inline",
            "inline; filename=\".txt\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC%E8%AA%9E.txt",
        ),
        (
            'a\\b\r\nX-Evil: 1".txt',
            "attachment",
            "attachment; filename=\"abX-Evil: 1.txt\"; filename*=UTF-8''a%5CbX-Evil%3A%201%22.txt",
        ),
        ("日本", "inline", "inline; filename=\"file\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC"),
    ],
)
async def test_content_disposition(
    served: Served, name: str, disposition: str, expected: str
) -> None:
    params = {"filename": name, **({"inline": "1"} if disposition == "inline" else {})}
    r = await served.http.get("/file/f.bin", params=params)
    assert r.status_code == 200
    assert r.headers["content-disposition"] == expected
    assert "x-evil" not in r.headers


# -- edge files -------------------------------------------------------------------------------


async def test_empty_file(served: Served) -> None:
    served.put("empty", b"")
    r = await served.http.get("/file/empty")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-length"] == "0"
    for header in ("bytes=0-", "bytes=0-0", "bytes=-5"):
        r = await served.http.get("/file/empty", headers={"Range": header})
        assert_error(r, 416, "range_not_satisfiable")
        assert r.headers["content-range"] == "bytes */0"


async def test_caller_size_bounds_the_body(served: Served) -> None:
    r = await served.http.get("/file/f.bin", params={"size": "600"})
    assert r.status_code == 200 and r.content == DATA[:600]
    r = await served.http.get("/file/f.bin", params={"size": "600"}, headers={"Range": "bytes=-10"})
    assert r.headers["content-range"] == "bytes 590-599/600" and r.content == DATA[590:600]


@pytest.mark.parametrize("name", ["missing.bin", "adir"])
async def test_missing_file_is_404(served: Served, name: str) -> None:
    (served.root / "adir").mkdir()
    for method in ("GET", "HEAD"):
        r = await served.http.request(method, f"/file/{name}")
        assert r.status_code == 404
    assert_error(await served.http.get(f"/file/{name}"), 404, "file_missing")


async def test_file_cut_short_after_headers_gives_short_body(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        await served.http.get("/vanish/f.bin")
    assert any("short" in r.getMessage() for r in caplog.records)
    assert server_errors(caplog) == []
    # the server is still fine for the next request
    served.put("again.bin", DATA)
    assert (await served.http.get("/file/again.bin")).content == DATA


async def test_file_truncated_while_streaming(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    big = os.urandom(32 * 2**20)
    path = served.put("big.bin", big)
    received = bytearray()
    with pytest.raises(httpx.RemoteProtocolError):
        async with served.http.stream("GET", "/file/big.bin") as r:
            assert r.headers["content-length"] == str(len(big))
            async for chunk in r.aiter_raw():
                if not received:
                    os.truncate(path, 2**20)  # the server is blocked on a full socket by now
                received += chunk
    assert 0 < len(received) < len(big)
    assert received == big[: len(received)]
    await wait_closed(path)
    assert server_errors(caplog) == []


async def test_client_gone_mid_stream_closes_the_file(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    path = served.put("big.bin", os.urandom(32 * 2**20))
    url = served.http.base_url
    assert url.host is not None and url.port is not None
    # a bare socket: httpx leaves its inner generators unclosed when a body is abandoned
    stream = await trio.open_tcp_stream(url.host, url.port)
    await stream.send_all(b"GET /file/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while len(got) < 2**20:
        got += await stream.receive_some()
    assert got.startswith(b"HTTP/1.1 200")
    assert fds_open_on(path) == 1
    await stream.aclose()
    await wait_closed(path)
    assert server_errors(caplog) == []


async def test_file_responses_have_no_response_timeout(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(DATA)
    app = make_app(tmp_path)
    async with app.test_request_context("/file/f.bin"):
        response = await file_response(
            tmp_path / "f.bin",
            mime_type="text/plain",
            etag=ETAG,
            last_modified=MTIME,
            filename=None,
            disposition="inline",
        )
        assert response.timeout is None  # Quart's default would cut sending at 60 s
        await response.response.__aexit__(None, None, None)  # type: ignore[arg-type]


# -- the pure part ----------------------------------------------------------------------------


def test_parse_range_examples() -> None:
    assert parse_range("bytes=0-1", 1000) == ByteRange(0, 1)
    assert parse_range("bytes=-1", 1) == ByteRange(0, 0)
    assert parse_range("bytes=0-1,3-4", 1000) is None
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=-1", 0)
    assert plan_response(etag="x", last_modified=0, size=10).status == 200


@given(st.text(max_size=40), st.integers(min_value=0, max_value=10**6))
def test_parse_range_never_fails_or_escapes(value: str, size: int) -> None:
    try:
        result = parse_range(value, size)
    except RangeNotSatisfiable:
        return
    if result is not None:
        assert 0 <= result.first <= result.last < size


@given(
    st.one_of(st.none(), st.integers(0, 3000)),
    st.one_of(st.none(), st.integers(0, 3000)),
    st.integers(0, 2000),
)
def test_parse_range_matches_a_model(first: int | None, last: int | None, size: int) -> None:
    header = f"bytes={'' if first is None else first}-{'' if last is None else last}"
    data = range(size)
    if first is None and last is None:
        expected: object = None
    elif first is None:
        assert last is not None
        expected = "416" if last == 0 or size == 0 else data[-last:]
    elif last is not None and last < first:
        expected = None
    elif first >= size:
        expected = "416"
    else:
        expected = data[first : None if last is None else last + 1]
    try:
        got = parse_range(header, size)
    except RangeNotSatisfiable:
        assert expected == "416"
        return
    if got is None:
        assert expected is None
    else:
        assert data[got.first : got.last + 1] == expected


def test_content_disposition_without_a_name() -> None:
    assert content_disposition("inline", None) == "inline"
    with pytest.raises(ValueError):
        content_disposition("evil\r\n", "x")
