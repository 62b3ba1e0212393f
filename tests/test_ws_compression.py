"""WebSocket compression (the ``ws_compression`` setting) over real sockets.

Off by default: a handshake offering permessage-deflate (as Node ``ws`` and browsers do) gets
no ``Sec-WebSocket-Extensions`` back, so frames go out uncompressed, as from Hocuspocus's own
server. On: the offer is accepted and the server's frames arrive deflated (RSV1). Live sync
works either way, with a client that offers deflate (wsproto with its own PerMessageDeflate).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import pycrdt
import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import Opcode, RsvBits

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.protocol import messages as m
from heaper_trio.web import quart_compat

from .conftest import StartServer
from .live_client import LiveClient
from .test_sync import ClientBlock, new_heap

pytestmark = [pytest.mark.engines("sqlite")]  # transport only: the engine plays no part

OFFER = "permessage-deflate; client_max_window_bits"


@pytest.fixture(autouse=True)
def _restore_compression() -> Iterator[None]:
    """The setting is process-wide (hypercorn's handshake): leave it as it was found."""
    before = quart_compat._DeflateIfEnabled.enabled_in_process
    yield
    quart_compat._DeflateIfEnabled.enabled_in_process = before


async def raw_handshake(url: str, extensions: str | None) -> tuple[str, dict[str, str]]:
    """Send an upgrade request by hand; answer the status line and the headers (lowercased)."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    async with stream:
        lines = [
            "GET /ws HTTP/1.1",
            f"Host: {parts.netloc}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ]
        if extensions is not None:
            lines.append(f"Sec-WebSocket-Extensions: {extensions}")
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                assert chunk, data
                data += chunk
    status, *rest = data.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    headers = {}
    for line in rest:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


class CountingDeflate(PerMessageDeflate):
    """The client's deflate, counting the server frames that arrive compressed."""

    compressed_frames = 0

    def frame_inbound_header(
        self, proto: object, opcode: Opcode, rsv: RsvBits, payload_length: int
    ) -> object:
        if rsv.rsv1:
            self.compressed_frames += 1
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)  # type: ignore[arg-type]


class DeflateOfferingSocket:
    """Just enough of trio-websocket's connection for LiveClient, on wsproto, offering
    permessage-deflate the way Node's ``ws`` does (trio-websocket cannot offer it)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = WSConnection(ConnectionType.CLIENT)
        self.deflate = CountingDeflate()
        self.accepted: list[str] = []
        self.inbox: list[bytes | str] = []
        self.closed: CloseConnection | None = None

    async def handshake(self, host: str) -> None:
        request = Request(host=host, target="/ws", extensions=[self.deflate])
        await self.stream.send_all(self.conn.send(request))
        while True:
            for event in await self._events():
                if isinstance(event, AcceptConnection):
                    self.accepted = [e.name for e in event.extensions]
                    return
                assert not isinstance(event, RejectConnection), event

    async def _events(self) -> list[object]:
        data = await self.stream.receive_some(65536)
        assert data, "server closed the connection"
        self.conn.receive_data(data)
        events = list(self.conn.events())
        for event in events:
            if isinstance(event, Ping):
                await self.stream.send_all(self.conn.send(event.response()))
        return events

    async def send_message(self, data: bytes | str) -> None:
        await self.stream.send_all(self.conn.send(Message(data=data)))

    async def get_message(self) -> bytes | str:
        pending = b""
        while not self.inbox:
            for event in await self._events():
                if isinstance(event, BytesMessage):
                    pending += event.data
                    if event.message_finished:
                        self.inbox.append(pending)
                        pending = b""
                elif isinstance(event, TextMessage):
                    self.inbox.append(event.data)
                elif isinstance(event, CloseConnection):
                    self.closed = event
                    raise AssertionError(f"server closed: {event.code} {event.reason}")
        return self.inbox.pop(0)


@asynccontextmanager
async def deflate_client(url: str) -> AsyncIterator[tuple[LiveClient, DeflateOfferingSocket]]:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    async with stream:
        ws = DeflateOfferingSocket(stream)
        with trio.fail_after(5):
            await ws.handshake(parts.netloc)
        yield LiveClient(ws), ws  # type: ignore[arg-type]


async def test_the_offer_is_declined_by_default(server: RunningServer) -> None:
    assert server.services.settings.ws_compression is False
    assert not quart_compat.ws_compression_enabled()
    status, headers = await raw_handshake(server.url, OFFER)
    assert status.split()[1] == "101", status
    assert "sec-websocket-extensions" not in headers, headers
    assert "sec-websocket-accept" in headers


async def test_the_offer_is_accepted_when_the_setting_is_on(start_server: StartServer) -> None:
    server = await start_server(ws_compression=True)
    assert quart_compat.ws_compression_enabled()
    status, headers = await raw_handshake(server.url, OFFER)
    assert status.split()[1] == "101", status
    assert headers.get("sec-websocket-extensions", "").startswith("permessage-deflate"), headers
    # No offer, no extension, whatever the setting.
    status, headers = await raw_handshake(server.url, None)
    assert status.split()[1] == "101", status
    assert "sec-websocket-extensions" not in headers, headers


@pytest.mark.parametrize("compression", [False, True], ids=["off", "on"])
async def test_live_sync_works_in_both_modes(compression: bool, start_server: StartServer) -> None:
    server = await start_server(ws_compression=compression)
    admin = HeaperClient(server.url)
    try:
        await admin.login()
        heap = await new_heap(admin)
        block = ClientBlock()
        block.write("Hello " + "compressible " * 40)
        address = f"{heap['id']}:{block.id}"
        async with deflate_client(server.url) as (a, a_ws), deflate_client(server.url) as (b, b_ws):
            assert a_ws.accepted == (["permessage-deflate"] if compression else [])
            assert await a.sync(address, admin.access_token) == b"\x00\x00"
            await b.sync(address, admin.access_token)
            await a.expect(m.SyncStep1)
            await a.send(m.SyncUpdate(address, block.pending()))
            assert (await a.expect(m.SyncStatus)).applied
            got = await b.expect(m.SyncUpdate)
            other = ClientBlock(block.id)
            other.doc.apply_update(got.update)
            title = other.doc.get("title_v0", type=pycrdt.XmlFragment)
            assert "compressible" in str(title)
            # On, the server's frames came deflated; off, none could (wsproto refuses RSV1).
            compressed = a_ws.deflate.compressed_frames + b_ws.deflate.compressed_frames
            assert (compressed > 0) is compression, compressed
    finally:
        await admin.aclose()
