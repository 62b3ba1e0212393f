"""The live counters of ``GET /api/health`` (``diagnostics.realtime``) count what really crossed
the sockets: every frame the clients received, once, and its bytes exactly."""

from __future__ import annotations

import json
from typing import Any

import pytest

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.protocol import messages as m

from .live_client import UNCLOSED_SOCKETS, LiveClient, collect_closed_sockets, live_client  # noqa: F401 (autouse)
from .test_sync import ClientBlock, new_heap

# Counting is the hub's and the writer's, the same on both engines.
pytestmark = [pytest.mark.engines("sqlite"), *UNCLOSED_SOCKETS]


def tally(client: LiveClient, frames: list[int]) -> None:
    """Record the size of every frame ``client`` reads (the Hocuspocus payload, which is what
    the server counts, without the WebSocket header)."""
    get = client.ws.get_message

    async def counted() -> Any:
        data = await get()
        frames.append(len(data))
        return data

    client.ws.get_message = counted  # type: ignore[method-assign]


async def realtime(client: HeaperClient) -> dict[str, int]:
    r = await client.get("/api/health")
    return dict(r.json()["diagnostics"]["realtime"])


async def test_a_fanned_out_update_is_counted_once(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("counted once")
    address = f"{heap['id']}:{block.id}"
    before = await realtime(admin)
    frames: list[int] = []
    async with live_client(server.url) as a, live_client(server.url) as b:
        tally(a, frames)
        tally(b, frames)
        await a.sync(address, admin.access_token)
        await a.expect(m.SyncStep1)
        await b.sync(address, admin.access_token)
        await b.expect(m.SyncStep1)
        await a.send(m.SyncUpdate(address, block.pending()))
        assert (await a.expect(m.SyncStatus)).applied
        await b.expect(m.SyncUpdate)  # the one fan-out frame
        after = await realtime(admin)
    # Per client: authenticated, the server's step 1, its step 2; then a's acknowledgement
    # and b's update. Nothing else is in flight: each client read all it was sent.
    assert len(frames) == 8, frames
    assert after["messages_out"] - before["messages_out"] == len(frames)
    assert after["bytes_out"] - before["bytes_out"] == sum(frames)
    assert after["messages_in"] - before["messages_in"] == 5  # auth and step 1 each, 1 update


async def test_the_legacy_socket_counts_its_bytes_out_too(
    admin: HeaperClient, server: RunningServer
) -> None:
    """/api/ws counted its messages but not their bytes: every text frame now counts both,
    by its UTF-8 length (what crossed the socket, without the WebSocket header)."""
    heap = await new_heap(admin)
    before = await realtime(admin)
    async with live_client(server.url, "/api/ws") as legacy:
        await legacy.ws.send_message(json.dumps({"token": admin.access_token}))
        authenticated = await legacy.ws.get_message()
        scan = {"type": "scan.progress", "scan_id": "s1", "heap_id": heap["id"], "path": "/ä"}
        server.services.hub.publish_user_event(admin.user_id or "", scan)
        progress = await legacy.ws.get_message()
        assert json.loads(progress)["path"] == "/ä"
        after = await realtime(admin)
    sent = [authenticated, progress]
    assert all(isinstance(x, str) for x in sent)
    assert after["messages_out"] - before["messages_out"] == 2
    assert after["bytes_out"] - before["bytes_out"] == sum(len(x.encode()) for x in sent)
