"""The raw ``/ws`` transport (web/ws_asgi.py, ws_transport.py, ws_frames.py).

Frames are checked by a real WebSocket decoder (wsproto as a client); the socket writes run
against a socket pair with a small send buffer, so partial writes, waits for writability and
hypercorn's own writes under the shared lock all happen; end to end, a live server fans the
same frame object out and a connection that fails closes with 1011.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed
from wsproto.connection import Connection, ConnectionType
from wsproto.events import Message, Ping

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.protocol import messages as m
from heaper_trio.services.live.outbox import Outbox
from heaper_trio.web import quart_compat, ws_asgi, ws_frames, ws_transport
from heaper_trio.web.ws_transport import AsgiTransport, RawTransport

from .live_client import UNCLOSED_SOCKETS, collect_closed_sockets, live_client  # noqa: F401 (autouse)
from .test_sync import ClientBlock, new_heap

pytestmark = [
    pytest.mark.engines("sqlite"),  # transport only: the engine plays no part
    # the client socket of the connection closed with 1011 is left to the garbage collector
    *UNCLOSED_SOCKETS,
]


def decode_all(data: bytes) -> list[bytes | str]:
    """Every complete message (and ping) in ``data``, as a client's wsproto reads them."""
    conn = Connection(ConnectionType.CLIENT)
    conn.receive_data(data)
    out: list[bytes | str] = []
    pending: Any = None
    for event in conn.events():
        if isinstance(event, Ping):
            out.append("<ping>")
        elif isinstance(event, Message):
            pending = event.data if pending is None else pending + event.data
            if event.message_finished:
                out.append(pending)
                pending = None
        else:
            raise AssertionError(event)
    assert pending is None
    return out


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 300_000])
def test_frames_decode_at_every_length_boundary(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert decode_all(b"".join(ws_frames.encode(payload))) == [payload]
    assert decode_all(b"".join(ws_frames.encode("é" * size))) == ["é" * size]


def test_the_encoding_is_shared_by_identity_not_by_value() -> None:
    ws_frames._cache.clear()
    frame = b"\x01" * 100
    [first] = ws_frames.encode(frame)
    [again] = ws_frames.encode(frame)
    assert again is first  # one encoding for every subscriber of a fan-out
    [copy] = ws_frames.encode(bytes(bytearray(frame)))
    assert copy == first and copy is not first
    assert ws_frames.cached_frames() == 2
    big = b"\x02" * (ws_frames.CACHE_MAX_PAYLOAD + 1)
    _header, body = ws_frames.encode(big)
    assert body is big  # large payloads are never copied
    assert ws_frames.cached_frames() == 2


class FakeSocket:
    """What RawTransport needs of quart_compat.WebSocketSocket, over a socket pair."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.socket = sock
        self.send_lock = trio.Lock()
        self.is_open = True

    def open(self) -> bool:
        return self.is_open


async def never_called() -> dict[str, Any]:
    raise AssertionError("not used")


async def ignore(message: dict[str, Any]) -> None:
    raise AssertionError(f"no ASGI send expected: {message}")


Pair = tuple[RawTransport, FakeSocket, trio.socket.SocketType]


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    """A raw transport writing into one end of a socket pair with small buffers."""
    a, b = trio.socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    fake = FakeSocket(a)
    transport = RawTransport(never_called, ignore, trio.CancelScope(), fake)  # type: ignore[arg-type]
    yield transport, fake, b
    a.close()
    b.close()


async def read_everything(sock: trio.socket.SocketType, until: int) -> bytes:
    data = b""
    with trio.fail_after(10):
        while len(data) < until:
            chunk = await sock.recv(65536)
            assert chunk
            data += chunk
    return data


async def test_writes_larger_than_the_socket_buffer_arrive_whole_and_in_order(pair: Pair) -> None:
    """A peer slow to read: writes wait for writability; a ping hypercorn writes under the
    same lock meanwhile lands between frames, never inside one."""
    transport, fake, peer = pair
    frames = [bytes([i]) * (1000 + 997 * i) for i in range(40)]
    ping = b"\x89\x00"  # what hypercorn's wsproto writes for Ping()
    expected = sum(len(b"".join(ws_frames.encode(f))) for f in frames) + len(ping)

    async def hypercorn_pings() -> None:
        await trio.sleep(0.01)
        async with fake.send_lock:  # as TCPServer.protocol_send does
            await fake.socket.send(ping)

    data: list[bytes] = []

    async def read_slowly() -> None:
        await trio.sleep(0.02)  # the socket buffer is full by then
        data.append(await read_everything(peer, expected))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_slowly)
        nursery.start_soon(hypercorn_pings)
        await transport.send_many(frames[:20])
        for frame in frames[20:]:
            await transport.send(frame)
    got = decode_all(data[0])
    assert [g for g in got if g != "<ping>"] == frames
    assert got.count("<ping>") == 1
    assert not transport.broken


async def test_a_cancelled_write_still_finishes_its_frame(pair: Pair) -> None:
    transport, _, peer = pair
    frame = b"x" * 200_000
    data: list[bytes] = []

    async def read_later() -> None:
        await trio.sleep(0.05)  # after the cancel
        data.append(await read_everything(peer, len(frame) + 10))

    async def cancel_soon(scope: trio.CancelScope) -> None:
        await trio.sleep(0.01)
        scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_later)
        with trio.CancelScope() as scope:
            nursery.start_soon(cancel_soon, scope)
            await transport.send(frame)  # waits for room, shielded, once the socket is full
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert decode_all(data[0]) == [frame]


async def test_a_peer_that_never_reads_is_cut_off_after_the_grace(
    pair: Pair, autojump_clock: trio.testing.MockClock
) -> None:
    """hypercorn's own shielded send would wait for ever here; ours gives up and shuts the
    socket down, which ends the connection."""
    transport, _, peer = pair
    with trio.CancelScope() as scope:
        scope.deadline = trio.current_time() + 1
        await transport.send(b"z" * 500_000)
    assert scope.cancelled_caught
    assert trio.current_time() >= 1 + ws_transport.FINISH_FRAME_S
    assert transport.broken
    received = b""
    while chunk := await peer.recv(65536):  # part of the frame, then the end: no hang
        received += chunk
    assert 0 < len(received) < 500_000


async def test_nothing_is_written_after_close_or_to_a_closed_socket(pair: Pair) -> None:
    transport, fake, peer = pair
    fake.is_open = False  # hypercorn saw a close frame
    await transport.send(b"late")
    fake.is_open = True
    fake.socket.close()  # hypercorn closed the socket: its descriptor is -1 now
    await transport.send(b"later")
    assert transport.broken
    assert await peer.recv(100) == b""  # end of stream, nothing before it


async def test_a_peer_that_reset_marks_the_transport_broken(pair: Pair) -> None:
    transport, _, peer = pair
    peer.close()
    await transport.send(b"x" * 10)
    await transport.send(b"y" * 10)
    assert transport.broken


async def test_live_connections_write_raw_frames_and_share_fan_out_frames(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    used: list[type] = []
    real_open = ws_asgi.open_transport

    def spy(*args: Any) -> AsgiTransport:
        transport = real_open(*args)
        used.append(type(transport))
        return transport

    monkeypatch.setattr(ws_asgi, "open_transport", spy)
    encoded: dict[int, int] = {}
    real_encode = ws_frames.encode

    def counting(message: bytes | str) -> list[bytes]:
        encoded[id(message)] = encoded.get(id(message), 0) + 1
        return real_encode(message)

    monkeypatch.setattr("heaper_trio.web.ws_transport.encode", counting)
    async with HeaperClient(server.url) as client:
        await client.login()
        heap = await new_heap(client)
        block = ClientBlock()
        block.write("Fan out")
        address = f"{heap['id']}:{block.id}"
        async with (
            live_client(server.url) as a,
            live_client(server.url) as b,
            live_client(server.url) as c,
        ):
            for peer in (a, b, c):
                await peer.sync(address, client.access_token)
            await a.expect(m.SyncStep1)
            await a.send(m.SyncUpdate(address, block.pending()))
            assert (await a.expect(m.SyncStatus)).applied
            got_b = await b.expect(m.SyncUpdate)
            got_c = await c.expect(m.SyncUpdate)
            assert got_b == got_c
    assert used == [RawTransport] * 3
    assert 2 in encoded.values(), encoded  # one frame object went to both subscribers


async def test_the_asgi_transport_serves_when_the_socket_is_out_of_reach(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ws_asgi, "websocket_socket", lambda send: None)
    async with HeaperClient(server.url) as client:
        await client.login()
        heap = await new_heap(client)
        async with live_client(server.url) as a:
            assert await a.sync(f"{heap['id']}:{ClientBlock().id}", client.access_token)


async def test_the_socket_behind_a_hypercorn_websocket_is_found(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    found: list[quart_compat.WebSocketSocket | None] = []
    real = ws_asgi.websocket_socket

    def spy(send: Any) -> quart_compat.WebSocketSocket | None:
        found.append(real(send))
        return found[-1]

    monkeypatch.setattr(ws_asgi, "websocket_socket", spy)
    async with live_client(server.url):
        with trio.fail_after(5):
            while not found:  # the server side runs once the handshake is done
                await trio.sleep(0.01)
        [ws] = found
        assert ws is not None and ws.open()
        assert ws.socket.fileno() >= 0


async def test_an_error_in_the_connection_closes_with_1011(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Failing:
        def __init__(self, *args: Any) -> None:
            pass

        async def run(self) -> None:
            raise RuntimeError("boom")

    monkeypatch.setitem(ws_asgi.RUNNERS, "/ws", Failing)  # type: ignore[arg-type]
    async with live_client(server.url) as a:
        with pytest.raises(ConnectionClosed) as closed:
            await a.receive()
        assert closed.value.reason.code == 1011


def test_the_token_comes_from_the_header_or_the_query() -> None:
    scope = {"headers": [(b"authorization", b"Bearer abc")], "query_string": b"token=xyz"}
    assert ws_asgi.connection_token(scope) == "abc"
    assert ws_asgi.connection_token({"headers": [], "query_string": b"a=1&token=x%2By"}) == "x+y"
    assert ws_asgi.connection_token({"headers": [], "query_string": b""}) is None
    basic = {"headers": [(b"authorization", b"Basic abc")], "query_string": b""}
    assert ws_asgi.connection_token(basic) is None


async def test_take_many_hands_over_every_frame_and_admits_waiters_in_order() -> None:
    outbox = Outbox(10)
    assert outbox.waiting == 0
    assert outbox.offer(b"aaaa") and outbox.offer(b"bbbb")
    admitted: list[bytes] = []

    async def put(frame: bytes) -> None:
        await outbox.put(frame)
        admitted.append(frame)

    async with trio.open_nursery() as nursery:
        for frame in (b"cccccc", b"dd", b"eeeeeeee"):
            nursery.start_soon(put, frame)
            await trio.testing.wait_all_tasks_blocked()
        assert outbox.waiting == 3
        assert await outbox.take_many() == [b"aaaa", b"bbbb"]
        await trio.testing.wait_all_tasks_blocked()
        # both admitted at once ("eeeeeeee" does not fit behind them yet); trio may wake the
        # two putters in either order, so the outbox's order is what is checked, below
        assert sorted(admitted) == [b"cccccc", b"dd"]
        assert await outbox.take_many() == [b"cccccc", b"dd"]
        assert await outbox.take_many() == [b"eeeeeeee"]
    assert sorted(admitted[:2]) == [b"cccccc", b"dd"] and admitted[2:] == [b"eeeeeeee"]
    assert outbox.size == 0 and outbox.waiting == 0
    with trio.move_on_after(0.01):  # nothing queued: it waits
        await outbox.take_many()
        raise AssertionError("take_many returned with nothing queued")
