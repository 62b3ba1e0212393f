"""web/h11_writes.py: a small fixed-length answer leaves in one socket write, and nothing a
client sees changes (bytes, order, a streamed answer's head arriving before its body)."""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping
from functools import partial
from typing import Any

import pytest
import trio
from hypercorn.config import Config
from hypercorn.events import RawData
from hypercorn.trio import serve
from hypercorn.trio.tcp_server import TCPServer

import heaper_trio.app  # noqa: F401  (applies the patches on import, as served)
from heaper_trio.web.h11_writes import COALESCE_MAX, write_head_with_body, writes_coalesced

from .asgi_support import lifespan

BIG = b"x" * (COALESCE_MAX + 10)
PAGE = b"p" * (200 * 1024)  # a delta page of a thousand rows is about 170 KB
RELEASE: dict[str, trio.Event] = {}


async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    path = scope["path"]
    if path == "/stream":  # chunked: the head must not wait for the first part
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await RELEASE["stream"].wait()
        await send({"type": "http.response.body", "body": b"part", "more_body": False})
        return
    body = {"/big": BIG, "/page": PAGE}.get(path, b'{"ok":true}')
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if path == "/headless":  # the app ends without its body: head, then the close
        return
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def served(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    writes: list[bytes] = []
    original = TCPServer.protocol_send

    async def counting(self: TCPServer, event: Any) -> None:
        if isinstance(event, RawData):
            writes.append(event.data)
        await original(self, event)

    monkeypatch.setattr(TCPServer, "protocol_send", counting)
    RELEASE["stream"] = trio.Event()
    cfg = Config()
    cfg.bind = ["127.0.0.1:0"]
    cfg.accesslog = None
    stop = trio.Event()
    urls = await nursery.start(partial(serve, app, cfg, shutdown_trigger=stop.wait))
    port = int(urls[0].rsplit(":", 1)[1])
    yield port, writes
    stop.set()


async def _exchange(port: int, request: bytes, until: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        got = b""
        with trio.fail_after(5):
            while until not in got:
                chunk = await stream.receive_some()
                if not chunk:
                    break
                got += chunk
        return got


def test_the_patch_is_in_force_and_idempotent() -> None:
    assert writes_coalesced()
    write_head_with_body()
    assert writes_coalesced()


async def test_a_small_answer_is_one_write(served: Any) -> None:
    port, writes = served
    got = await _exchange(port, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n", b'{"ok":true}')
    assert got.startswith(b"HTTP/1.1 200 ")
    assert got.endswith(b'\r\n\r\n{"ok":true}')
    assert len(writes) == 1 and writes[0] == got


async def test_head_and_big_bodies_keep_their_bytes(served: Any) -> None:
    port, writes = served
    got = await _exchange(port, b"HEAD / HTTP/1.1\r\nhost: a\r\n\r\n", b"\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200 ") and b"content-length: 11" in got
    assert got.endswith(b"\r\n\r\n")
    assert len(writes) == 1
    writes.clear()
    got = await _exchange(port, b"GET /big HTTP/1.1\r\nhost: a\r\n\r\n", BIG)
    assert got.endswith(b"\r\n\r\n" + BIG)
    assert len(writes) == 2  # a big body is not copied onto its head
    writes.clear()
    got = await _exchange(port, b"GET /page HTTP/1.1\r\nhost: a\r\n\r\n", PAGE)
    assert got.endswith(b"\r\n\r\n" + PAGE)
    assert len(writes) == 1  # a delta page's head goes with it


async def test_a_streamed_head_is_not_held(served: Any) -> None:
    port, _ = served
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /stream HTTP/1.1\r\nhost: a\r\n\r\n")
        got = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in got:
                got += await stream.receive_some()
        assert b"Transfer-Encoding: chunked" in got  # the head came while the app waits
        RELEASE["stream"].set()
        with trio.fail_after(5):
            while not got.endswith(b"0\r\n\r\n"):
                got += await stream.receive_some()
        assert b"4\r\npart\r\n" in got


async def test_a_held_head_goes_out_when_the_app_ends_without_its_body(served: Any) -> None:
    port, _ = served
    got = await _exchange(port, b"GET /headless HTTP/1.1\r\nhost: a\r\n\r\n", b"\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"\r\n\r\n")
