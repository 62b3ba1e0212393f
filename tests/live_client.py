"""A small Hocuspocus client over trio-websocket for the live tests: frames in, messages out."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from heaper_trio.protocol import messages as m

T = TypeVar("T")

# Live tests close sockets abruptly (a server's close, a dropped client); the socket objects the
# garbage collector then finds are expected. A module takes ``*UNCLOSED_SOCKETS`` into its
# pytestmark and imports ``collect_closed_sockets``, which collects them at each test's teardown,
# under these filters (a test's exception info keeps them alive until the test has returned).
UNCLOSED_SOCKETS = [
    pytest.mark.filterwarnings("ignore:unclosed <socket:ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


@pytest.fixture(autouse=True)
def collect_closed_sockets() -> Iterator[None]:
    yield
    gc.collect()


def ws_url(http_url: str, path: str = "/ws") -> str:
    return http_url.replace("http://", "ws://", 1) + path


class LiveClient:
    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.seen: list[m.Message] = []  # every message received, in order

    async def send(self, message: m.Message) -> None:
        await self.ws.send_message(m.encode(message))

    async def send_raw(self, frame: bytes | str) -> None:
        await self.ws.send_message(frame)

    async def receive(self, timeout: float = 5) -> m.Message:
        with trio.fail_after(timeout):
            data = await self.ws.get_message()
        assert isinstance(data, bytes), data
        message = m.decode_server_frame(data)
        self.seen.append(message)
        return message

    async def expect(
        self, kind: type[T], where: Callable[[T], bool] = lambda _: True, timeout: float = 5
    ) -> T:
        """The next message of ``kind`` (matching ``where``), skipping others."""
        with trio.fail_after(timeout):
            while True:
                message = await self.receive(timeout)
                if isinstance(message, kind) and where(message):
                    return message

    async def open(self, address: str, token: str, state_vector: bytes = b"\x00") -> None:
        """What the stock provider does on connect: auth, step 1 (no waiting between)."""
        await self.send(m.AuthToken(address, token, "4.8.0"))
        await self.send(m.SyncStep1(address, state_vector))

    async def sync(self, address: str, token: str) -> bytes:
        """Open a document and return the server's step 2 (what we lack)."""
        await self.open(address, token)
        await self.expect(m.Authenticated, lambda x: x.address == address)
        step2 = await self.expect(m.SyncStep2, lambda x: x.address == address)
        return step2.update


@asynccontextmanager
async def live_client(
    http_url: str, path: str = "/ws", disconnect_timeout: float = 2, **kw: Any
) -> AsyncIterator[LiveClient]:
    clean = False
    try:
        async with open_websocket_url(
            ws_url(http_url, path),
            max_message_size=64 * 1024 * 1024,
            disconnect_timeout=disconnect_timeout,
            **kw,
        ) as ws:
            yield LiveClient(ws)
        clean = ws.closed is not None and ws.closed.code == 1000  # we closed it, normally
    finally:
        # trio-websocket leaves the socket of a connection the server closed abruptly to the
        # garbage collector; collect it here, inside the test (and its warning filters). Not
        # after a normal close: a full collection costs ~0.1 s, and a test opening 50 clients
        # spent 5 s in them.
        if not clean:
            gc.collect()
