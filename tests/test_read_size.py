"""web/read_size.py: a large body is read from the socket in pieces larger than hypercorn's
64 KiB, whole and in order, and a small request on the same connection is read as before."""

from __future__ import annotations

import hashlib
from collections.abc import MutableMapping
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.trio.tcp_server import MAX_RECV

import heaper_trio.app  # noqa: F401  (applies the patches on import, as served)
from heaper_trio.web.read_size import (
    BULK_READ,
    next_read,
    read_bulk_in_large_pieces,
    reads_bulk_in_large_pieces,
)

from .asgi_support import lifespan

PARTS: dict[str, list[int]] = {}
HOLD: dict[str, trio.Event] = {}


async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    if scope["path"] == "/big":
        await HOLD["reader"].wait()  # the socket's buffers fill meanwhile
    sizes = PARTS.setdefault(scope["path"], [])
    digest = hashlib.sha256()
    while True:
        message = await receive()
        body = message.get("body", b"")
        if body:
            sizes.append(len(body))
            digest.update(body)
        if not message.get("more_body"):
            break
    answer = digest.hexdigest().encode()
    headers = [(b"content-length", b"%d" % len(answer))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


async def _answer(stream: trio.SocketStream) -> bytes:
    got = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < 64:
            more = await stream.receive_some()
            assert more, got
            got += more
    return got.split(b"\r\n\r\n", 1)[1]


def test_read_size_grows_on_full_reads_and_falls_back() -> None:
    base = MAX_RECV
    assert next_read(base, base, base) == BULK_READ  # full: more is waiting
    assert next_read(BULK_READ, BULK_READ, base) == BULK_READ
    assert next_read(BULK_READ, base, base) == BULK_READ  # still a bulk piece
    assert next_read(BULK_READ, base - 1, base) == base  # the stream went quiet
    assert next_read(base, 100, base) == base  # a small request: upstream's size


async def test_a_large_body_comes_in_large_pieces_whole(nursery: trio.Nursery) -> None:
    assert reads_bulk_in_large_pieces()
    assert read_bulk_in_large_pieces()  # idempotent
    PARTS.clear()
    HOLD["reader"] = trio.Event()
    cfg = Config()
    cfg.bind = ["127.0.0.1:0"]
    cfg.accesslog = None
    cfg.max_app_queue_size = 1
    stop = trio.Event()
    urls = await nursery.start(partial(serve, app, cfg, shutdown_trigger=stop.wait))
    port = int(urls[0].rsplit(":", 1)[1])
    body = bytes(range(256)) * (16 * 1024)  # 4 MiB
    small = b"x" * 1000
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream, trio.open_nursery() as inner:
        head = f"PUT /big HTTP/1.1\r\nhost: a\r\ncontent-length: {len(body)}\r\n\r\n"

        async def release_later() -> None:
            await trio.sleep(0.3)  # the client's bytes wait in the socket meanwhile
            HOLD["reader"].set()

        inner.start_soon(release_later)
        await stream.send_all(head.encode() + body)
        assert await _answer(stream) == hashlib.sha256(body).hexdigest().encode()
        head = f"PUT /small HTTP/1.1\r\nhost: a\r\ncontent-length: {len(small)}\r\n\r\n"
        await stream.send_all(head.encode() + small)
        assert await _answer(stream) == hashlib.sha256(small).hexdigest().encode()
    stop.set()
    assert sum(PARTS["/big"]) == len(body)
    assert max(PARTS["/big"]) > MAX_RECV  # upstream never hands more than one read
    assert max(PARTS["/big"]) <= BULK_READ
    assert PARTS["/small"] == [len(small)]
