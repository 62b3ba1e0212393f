"""web/idle_timer.py: one idle-timer task per keep-alive connection, with upstream's
behaviour: an idle connection is closed after keep_alive_timeout, a connection with a request
in hand is not, however long the answer takes."""

from __future__ import annotations

from collections.abc import MutableMapping
from functools import partial
from typing import Any

import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.trio.tcp_server import TCPServer

import heaper_trio.app  # noqa: F401  (applies the patches on import, as served)
from heaper_trio.web.idle_timer import (
    IdleTimer,
    idle_task_per_connection,
    one_idle_task_per_connection,
)

from .asgi_support import lifespan

TIMEOUT = 0.5
TIMERS: list[IdleTimer] = []


async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    if scope["path"] == "/slow":
        await trio.sleep(TIMEOUT * 2)  # longer than the idle timeout, with a request in hand
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


async def _get(stream: trio.SocketStream, path: str) -> bytes:
    await stream.send_all(f"GET {path} HTTP/1.1\r\nhost: a\r\n\r\n".encode())
    got = b""
    with trio.fail_after(5):
        while not got.endswith(b"ok"):
            got += await stream.receive_some()
    return got


@pytest.mark.serial  # timed against the wall clock
async def test_idle_connections_close_and_busy_ones_do_not(
    nursery: trio.Nursery, monkeypatch: Any
) -> None:
    assert idle_task_per_connection()
    one_idle_task_per_connection()  # idempotent
    original = TCPServer.__init__

    def recording(self: TCPServer, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        TIMERS.append(self.idle_task)  # type: ignore[arg-type]

    monkeypatch.setattr(TCPServer, "__init__", recording)
    cfg = Config()
    cfg.bind = ["127.0.0.1:0"]
    cfg.accesslog = None
    cfg.keep_alive_timeout = TIMEOUT
    stop = trio.Event()
    urls = await nursery.start(partial(serve, app, cfg, shutdown_trigger=stop.wait))
    port = int(urls[0].rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    for _ in range(5):
        assert (await _get(stream, "/")).startswith(b"HTTP/1.1 200")
        await trio.sleep(TIMEOUT / 5)  # idle, but less than the timeout each time
    assert (await _get(stream, "/slow")).startswith(b"HTTP/1.1 200")  # busy past it
    assert len(TIMERS) == 1 and isinstance(TIMERS[0], IdleTimer)
    with trio.fail_after(TIMEOUT * 5):
        assert await stream.receive_some() == b""  # idle past the timeout: closed
    await stream.aclose()
    stop.set()
