"""web/app_queue.py: body parts reach the app whole and in order, with or without room in
its queue (an app that is not reading still holds the sender back)."""

from __future__ import annotations

from collections.abc import MutableMapping
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

import heaper_trio.app  # noqa: F401  (applies the patches on import, as served)
from heaper_trio.web.app_queue import body_queued_without_yield, queue_body_without_yield

from .asgi_support import lifespan

HOLD: dict[str, trio.Event] = {}


async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    if scope["path"] == "/slow":
        await HOLD["reader"].wait()  # the queue (one message) fills meanwhile
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    answer = b"%d:%s" % (len(body), body[-8:])
    headers = [(b"content-length", b"%d" % len(answer))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


async def _post_chunked(port: int, path: str, parts: list[bytes]) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        head = f"POST {path} HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
        await stream.send_all(head.encode())
        for part in parts:
            await stream.send_all(b"%x\r\n%s\r\n" % (len(part), part))
            await trio.sleep(0.001)  # separate reads, separate body events
        await stream.send_all(b"0\r\n\r\n")
        got = b""
        with trio.fail_after(5):
            while not got.endswith(b"end-mark"):
                got += await stream.receive_some()
        return got


async def test_body_parts_arrive_whole_with_and_without_room(nursery: trio.Nursery) -> None:
    assert body_queued_without_yield()
    queue_body_without_yield()  # idempotent
    assert body_queued_without_yield()
    HOLD["reader"] = trio.Event()
    cfg = Config()
    cfg.bind = ["127.0.0.1:0"]
    cfg.accesslog = None
    cfg.max_app_queue_size = 1
    stop = trio.Event()
    urls = await nursery.start(partial(serve, app, cfg, shutdown_trigger=stop.wait))
    port = int(urls[0].rsplit(":", 1)[1])
    parts = [b"p%02d-" % i * 50 for i in range(20)] + [b"end-mark"]
    size = sum(map(len, parts))
    assert (await _post_chunked(port, "/", parts)).endswith(b"%d:end-mark" % size)

    async def release_later() -> None:
        await trio.sleep(0.2)
        HOLD["reader"].set()

    nursery.start_soon(release_later)
    assert (await _post_chunked(port, "/slow", parts)).endswith(b"%d:end-mark" % size)
    stop.set()


async def test_a_closed_stream_ignores_its_body_as_upstream_does() -> None:
    """Upstream's ``handle`` returns at once for a closed stream, which may have no app at all
    (a request refused for its server name); the patch must not queue or crash (review)."""
    from hypercorn.protocol.events import Body, EndBody
    from hypercorn.protocol.http_stream import HTTPStream

    stream = HTTPStream.__new__(HTTPStream)
    stream.closed = True  # no app_put: nothing was spawned
    await stream.handle(Body(stream_id=1, data=b"x"))
    await stream.handle(EndBody(stream_id=1))
    send, receive = trio.open_memory_channel[dict[str, Any]](4)
    stream.app_put = send.send  # a stream closed after its app started
    await stream.handle(Body(stream_id=1, data=b"x"))
    assert receive.statistics().current_buffer_used == 0
