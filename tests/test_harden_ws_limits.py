"""Live connections per account are capped (issue 9: bounded memory for any input).

Why a cap per account bounds memory: a connection buffers at most ``ws_outbox_bytes`` of
unsent frames (a client further behind is dropped with 1013), and only a connection with an
authorized document is sent anything it did not ask for (fan-out, events). Before the cap, one
account could open any number of sockets on a document, stop reading, and push: measured
~9.6 MB of RSS per socket, linear in the number of sockets (40 sockets: 548 MB -> 933 MB).
With ``ws_max_connections_per_user`` = N, what one account can make the server hold is at most
N x ``ws_outbox_bytes`` (the legacy ``/api/ws`` counts in the same N with its 1 MB outbox).
A socket that never gets a document authorized holds no slot, but only its pending-auth queue
(bounded by the session) and is closed after 60 s (4408).

Real servers over real sockets (trio-websocket), SQLite: the count is per process, in memory.
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.protocol import messages as m
from heaper_trio.protocol.close_codes import CLOSE_TOO_MANY_CONNECTIONS

from .live_client import UNCLOSED_SOCKETS, LiveClient, collect_closed_sockets, live_client  # noqa: F401 (autouse)
from .test_sync import ClientBlock, new_heap

pytestmark = [
    pytest.mark.slow,
    pytest.mark.engines("sqlite"),
    *UNCLOSED_SOCKETS,
]
CAP = 3


@pytest.fixture
async def server(start_server: Any) -> RunningServer:
    """The server ``admin`` and ``eve`` log in to: at most CAP connections per account."""
    return await start_server(ws_max_connections_per_user=CAP)


async def closed_with(client: LiveClient, timeout: float = 5) -> int:
    """The close code the server ends ``client`` with (reading whatever comes first)."""
    with pytest.raises(ConnectionClosed) as closed:
        with trio.fail_after(timeout):
            while True:
                await client.ws.get_message()
    code: int = closed.value.reason.code
    return code


async def wait_for(predicate: Any, timeout: float = 3.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def test_the_connection_over_the_cap_is_closed_and_a_slot_frees_on_close(
    admin: HeaperClient, eve: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    hub, counters = server.services.hub, server.services.realtime
    async with (
        live_client(server.url) as a,
        live_client(server.url) as b,
        live_client(server.url) as c,
    ):
        for client in (a, b, c):
            await client.open("events", admin.access_token)
            await client.expect(m.Authenticated)
        # More documents on a connection that holds a slot cost no other slot.
        address = f"{heap['id']}:{ClientBlock().id}"
        await a.sync(address, admin.access_token)
        assert hub.account_connections[admin.user_id or ""] == CAP

        async with live_client(server.url) as fourth:  # auth message, as the provider does
            await fourth.open(address, admin.access_token)
            assert await closed_with(fourth) == CLOSE_TOO_MANY_CONNECTIONS
        async with live_client(server.url, path=f"/ws?token={admin.access_token}") as fifth:
            await fifth.send(m.SyncStep1(address, b"\x00"))
            assert await closed_with(fifth) == CLOSE_TOO_MANY_CONNECTIONS
        async with live_client(server.url, "/api/ws") as legacy:
            await legacy.ws.send_message(json.dumps({"token": admin.access_token}))
            assert await closed_with(legacy) == CLOSE_TOO_MANY_CONNECTIONS
        assert counters.refused_connection_limit == 3
        assert hub.account_connections[admin.user_id or ""] == CAP

        async with live_client(server.url) as other:  # another account is not affected
            await other.open("events", eve.access_token)
            await other.expect(m.Authenticated)
            await a.send(m.SyncStep1("events", b"\x00"))  # the full sockets still work
            await a.expect(m.SyncStep2, lambda x: x.address == "events")

        await b.ws.aclose()
        await wait_for(lambda: hub.account_connections.get(admin.user_id or "") == CAP - 1)
        async with live_client(server.url) as again:
            await again.open("events", admin.access_token)
            await again.expect(m.Authenticated)
            assert hub.account_connections[admin.user_id or ""] == CAP
    await wait_for(lambda: not hub.account_connections)
    health = (await admin.get("/api/health")).json()["diagnostics"]["realtime"]
    assert health["refused_connection_limit"] == 3


async def test_sockets_without_an_authorized_document_hold_no_slot(
    admin: HeaperClient, server: RunningServer
) -> None:
    """A refused document (someone else's heap, a bad token) claims nothing: the slots stay
    for the account's real connections."""
    async with live_client(server.url) as bad:
        for _ in range(CAP + 1):
            await bad.open("events", "not-a-jwt")
            assert (await bad.expect(m.PermissionDenied)).reason == "token_invalid"
        assert not server.services.hub.account_connections
        async with AsyncExitStack() as stack:
            for _ in range(CAP):
                c = await stack.enter_async_context(live_client(server.url))
                await c.open("events", admin.access_token)
                await c.expect(m.Authenticated)


def test_the_close_code_is_documented() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    assert f"| {CLOSE_TOO_MANY_CONNECTIONS} |" in doc
    assert "ws_max_connections_per_user" in doc
