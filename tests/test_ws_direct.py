"""Direct writes from the fan-out (issue 12, item 1): a frame with nothing queued before it goes
straight to the socket from the task that sends it; a frame the socket takes only part of keeps
the send lock (a Semaphore(1), web/quart_compat.py) until the connection's writer has finished
it, so nothing (a later frame, hypercorn's ping or close frame) lands inside it; and a writer
task runs only while there is something to finish or a backlog."""

from __future__ import annotations

import inspect
import re
import socket
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest
import trio
import trio.testing
from hypercorn.trio import tcp_server

from heaper_trio.app import RunningServer
from heaper_trio.protocol import messages as m
from heaper_trio.services.live import connection
from heaper_trio.services.live.context import LiveContext
from heaper_trio.services.live.rooms import BUSY, PARTIAL, WRITTEN
from heaper_trio.web import quart_compat, ws_asgi, ws_frames, ws_transport
from heaper_trio.web.ws_transport import RawTransport

from . import test_live_timers as timers
from .live_client import UNCLOSED_SOCKETS, collect_closed_sockets, live_client  # noqa: F401 (autouse)
from .test_live_timers import MemoryTransport
from .test_ws_transport import decode_all, never_called, read_everything

pytestmark = [pytest.mark.engines("sqlite"), *UNCLOSED_SOCKETS]
PING = b"\x89\x00"  # what hypercorn's wsproto writes for Ping()


class FakeSocket:
    """quart_compat.WebSocketSocket over a socket pair, with the lock hypercorn's is swapped
    for."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.socket = sock
        self.send_lock = trio.Semaphore(1, max_value=1)
        self.is_open = True

    def open(self) -> bool:
        return self.is_open


Pair = tuple[RawTransport, FakeSocket, trio.socket.SocketType, list[dict[str, Any]]]


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    a, b = trio.socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    fake = FakeSocket(a)
    sent: list[dict[str, Any]] = []

    async def asgi_send(message: dict[str, Any]) -> None:
        sent.append(message)

    transport = RawTransport(never_called, asgi_send, trio.CancelScope(), fake)  # type: ignore[arg-type]
    yield transport, fake, b, sent
    a.close()
    b.close()


def frame_bytes(*frames: bytes) -> int:
    return sum(len(b"".join(ws_frames.encode(f))) for f in frames)


async def test_a_direct_write_goes_out_whole_and_frees_the_lock(pair: Pair) -> None:
    transport, fake, peer, _ = pair
    async with fake.send_lock:  # hypercorn is writing (a ping): not now
        assert transport.write_now(b"hello") == BUSY
    assert transport.write_now(b"hello") == WRITTEN
    assert not transport.holding and fake.send_lock.value == 1  # looked at, never taken
    assert decode_all(await read_everything(peer, frame_bytes(b"hello"))) == [b"hello"]


async def test_a_begun_frame_keeps_the_lock_until_the_writer_finishes_it(pair: Pair) -> None:
    """Taken by one task, released by another; a later frame and a ping of hypercorn's wait
    for it and land after it, in order."""
    transport, fake, peer, _ = pair
    big, small = b"B" * 200_000, b"s" * 10
    assert transport.write_now(big) == PARTIAL
    assert transport.holding and fake.send_lock.value == 0
    assert transport.write_now(small) == BUSY  # the caller queues it for the writer
    data: list[bytes] = []

    async def hypercorn_pings() -> None:
        async with fake.send_lock:  # as TCPServer.protocol_send does
            await fake.socket.send(PING)

    async def read() -> None:
        data.append(await read_everything(peer, frame_bytes(big, small) + len(PING)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        nursery.start_soon(hypercorn_pings)
        await trio.testing.wait_all_tasks_blocked()
        await transport.send_many([small])  # the writer: the begun frame first, then its own
    assert decode_all(data[0]) in ([big, small, "<ping>"], [big, "<ping>", small])
    assert not transport.holding and fake.send_lock.value == 1
    assert not transport.broken


async def test_close_finishes_a_begun_frame_before_the_close_frame(pair: Pair) -> None:
    transport, fake, peer, sent = pair
    big = b"C" * 200_000
    assert transport.write_now(big) == PARTIAL
    data: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _collect(peer, frame_bytes(big), data))
        await transport.close(1000, "")
    assert decode_all(data[0]) == [big]
    assert [x["type"] for x in sent] == ["websocket.close"]
    assert fake.send_lock.value == 1


async def _collect(peer: trio.socket.SocketType, n: int, into: list[bytes]) -> None:
    into.append(await read_everything(peer, n))


async def test_a_begun_frame_nobody_reads_is_cut_off_at_close(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    transport, fake, peer, _ = pair
    assert transport.write_now(b"z" * 500_000) == PARTIAL
    await transport.close(1000, "")
    assert trio.current_time() >= ws_transport.FINISH_FRAME_S
    assert transport.broken and fake.send_lock.value == 1
    received = b""
    while chunk := await peer.recv(65536):  # part of the frame, then the end: no hang
        received += chunk
    assert 0 < len(received) < 500_000


async def test_abandon_cuts_a_begun_frame_and_frees_the_lock(pair: Pair) -> None:
    transport, fake, _, _ = pair
    assert transport.write_now(b"a" * 300_000) == PARTIAL
    transport.abandon()
    assert transport.broken and not transport.holding and fake.send_lock.value == 1
    assert transport.write_now(b"late") == WRITTEN  # dropped: the peer is gone
    transport.abandon()  # idempotent


async def test_nothing_goes_out_directly_after_close(pair: Pair) -> None:
    transport, fake, peer, _ = pair
    fake.is_open = False  # hypercorn saw a close frame
    assert transport.write_now(b"late") == WRITTEN
    assert fake.send_lock.value == 1
    fake.socket.close()
    assert await peer.recv(100) == b""


# -- the connection: direct when nothing waits, in order always, a writer only on demand -------
class DirectTransport(MemoryTransport):
    """A transport with a direct path that the test opens and closes."""

    def __init__(self) -> None:
        super().__init__()
        self.wire: list[bytes | str] = []
        self.free = True
        self.batches = 0

    def write_now(self, data: bytes | str) -> int:
        if not self.free:
            return BUSY
        self.wire.append(data)
        return WRITTEN

    async def send_many(self, frames: Iterable[bytes | str]) -> None:
        self.batches += 1
        self.wire += frames
        await trio.lowlevel.checkpoint()


def context() -> LiveContext:
    return timers.memory_context()


async def test_frames_never_overtake_queued_ones_and_the_writer_runs_only_for_them() -> None:
    live = context()
    counters = live.counters
    transport = DirectTransport()
    conn = connection.LiveConnection(transport, live, None)
    async with trio.open_nursery() as nursery:
        await nursery.start(live.hub.run)
        nursery.start_soon(conn.run)
        await trio.testing.wait_all_tasks_blocked()
        assert not conn._writing  # idle: no writer task
        assert conn.send_frame(b"1") and transport.wire == [b"1"] and not conn._writing
        transport.free = False  # hypercorn is writing a ping
        assert conn.send_frame(b"2") and conn._writing  # queued, a writer woken
        transport.free = True
        assert conn.send_frame(b"3")  # must not overtake 2
        await trio.testing.wait_all_tasks_blocked()
        assert transport.wire == [b"1", b"2", b"3"] and transport.batches == 1
        assert not conn._writing and not conn.outbox.frames  # the writer ended
        await conn.reply(b"4")
        assert transport.wire[-1] == b"4" and transport.batches == 1
        assert counters.messages_out == 4 and counters.bytes_out == 4
        nursery.cancel_scope.cancel()


# -- the hook: hypercorn takes its send lock only through `async with` ---------------------------
def test_hypercorn_takes_the_send_lock_only_through_async_with() -> None:
    """A Semaphore(1) stands in for the trio.Lock only while nothing else is asked of it
    (``locked()``, owner checks, ``statistics().owner``)."""
    uses = [
        line.strip() for line in inspect.getsource(tcp_server).splitlines() if "send_lock" in line
    ]
    assert uses == ["self.send_lock = trio.Lock()", "async with self.send_lock:"], uses
    assert not re.search(r"send_lock", inspect.getsource(tcp_server.TCPServer._close))


async def test_a_live_websocket_gets_the_transferable_lock(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    found: list[quart_compat.WebSocketSocket | None] = []
    real = ws_asgi.websocket_socket

    def spy(send: Any) -> quart_compat.WebSocketSocket | None:
        found.append(real(send))
        return found[-1]

    monkeypatch.setattr(ws_asgi, "websocket_socket", spy)
    async with live_client(server.url) as a:
        await a.send(m.Ping())
        await a.expect(m.Pong)  # written directly, under the swapped lock
        [ws] = found
        assert ws is not None and isinstance(ws.send_lock, trio.Semaphore)
        assert ws.send_lock.value == 1  # nothing holds it between writes


def test_the_lock_is_not_swapped_while_taken() -> None:
    class Server:
        send_lock = trio.Lock()

    async def check() -> None:
        server = Server()
        async with server.send_lock:
            assert quart_compat.transferable_send_lock(server) is None  # type: ignore[arg-type]
        swapped = quart_compat.transferable_send_lock(server)  # type: ignore[arg-type]
        assert isinstance(swapped, trio.Semaphore) and server.send_lock is swapped
        assert quart_compat.transferable_send_lock(server) is swapped  # type: ignore[arg-type]

    trio.run(check)
