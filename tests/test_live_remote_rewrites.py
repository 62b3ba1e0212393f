"""A live room is a cache of storage; another process may rewrite or remove what it holds
(issue 12, left from session 10). The room must then not judge by what it holds:

- a subscriber naming a newer ``sync_version`` than the room's (it learned it from storage,
  the room has not heard of the restore yet) makes the room read storage before it answers,
  rather than calling the client stale with the old version and serving the old document;
- a block purged, or a heap deleted, through another process stops the room relaying edits
  to the other subscribers, as the same change made here does: nothing that storage refuses
  is sent to anyone.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.protocol import messages as m

from .live_client import UNCLOSED_SOCKETS, LiveClient, collect_closed_sockets, live_client  # noqa: F401 (autouse)
from .test_live_restore import expect_replacement, replace_document
from .test_live_ws import title_of
from .test_sync import ClientBlock, new_heap, push

pytestmark = [pytest.mark.slow, *UNCLOSED_SOCKETS]


async def test_a_newer_version_than_the_rooms_rereads_storage_first(
    admin: HeaperClient, server: RunningServer
) -> None:
    """The restore is stored, its notice not yet heard (another process's, still on its way):
    a client that read the new version over HTTP opens ``:v2`` and edits there."""
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Old title", "old body")
    await push(admin, block.push_item(heap["id"]))
    base = f"{heap['id']}:{block.id}"
    assert admin.access_token is not None
    async with live_client(server.url) as x, live_client(server.url) as y:
        assert "Old title" in title_of(await x.sync(base, admin.access_token))
        await replace_document(server, heap["id"], block.id, "New title")  # not announced
        r = await admin.post("/api/sync/pull", json={"blocks": [{"block_id": block.id}]})
        assert r.json()["blocks"][0]["sync_version"] == 2, r.text

        state = await y.sync(base + ":v2", admin.access_token)
        assert "New title" in title_of(state) and "Old title" not in title_of(state)
        edit = ClientBlock(block.id)
        edit.doc.apply_update(state)
        edit.synced = edit.doc.get_state()
        edit.meta["color"] = "green"
        await y.send(m.SyncUpdate(base + ":v2", edit.pending()))
        assert (await y.expect(m.SyncStatus)).applied
        mismatches = [
            json.loads(s.payload) for s in y.seen if isinstance(s, m.Stateless)
        ]  # nothing called :v2 stale
        assert mismatches == [], mismatches
        # the older subscriber is moved to the new document, as on a heard restore
        replaced = await expect_replacement(x, base, 2)
        assert "New title" in title_of(replaced)
        assert server.services.hub.rooms[block.id].sync_version == 2
    stored = await server.services.storage.load_block(block.id)
    assert stored is not None and stored.sync_version == 2


async def _relayed_to(watcher: LiveClient, address: str) -> list[bytes]:
    """What ``watcher`` got for ``address`` up to now: a step 1 is answered behind every frame
    its connection queued before it, so whatever was relayed arrives first."""
    await watcher.send(m.SyncStep1(address, b"\x00"))
    await watcher.expect(m.SyncStep2, lambda s: s.address == address)
    return [s.update for s in watcher.seen if isinstance(s, m.SyncUpdate)]


@pytest.mark.parametrize("where", ["here", "elsewhere"])
@pytest.mark.parametrize("gone", ["block_purged", "heap_deleted"])
async def test_a_removal_stops_the_relay(
    start_server: Any, engine: str, gone: str, where: str
) -> None:
    """Done through server ``a``; the subscribers are on ``b``: the same server (``here``),
    or another process (``elsewhere``, PostgreSQL: two servers on one database)."""
    if where == "elsewhere" and engine != "postgres":
        pytest.skip("one process per SQLite database")
    a: RunningServer = await start_server()
    b: RunningServer = a if where == "here" else await start_server()
    async with HeaperClient(a.url) as client:
        await client.login()
        token = client.access_token
        assert token is not None
        heap = await new_heap(client)
        block = ClientBlock()
        block.write("Soon gone", "body")
        await push(client, block.push_item(heap["id"]))
        block.synced = block.doc.get_state()
        address = f"{heap['id']}:{block.id}"
        async with live_client(b.url) as x, live_client(b.url) as y, live_client(b.url) as ev:
            await x.sync(address, token)
            await y.sync(address, token)
            await ev.open("events", token)
            await ev.send(
                m.Stateless("events", json.dumps({"type": "subscribe", "heap_ids": [heap["id"]]}))
            )
            await ev.expect(m.Stateless, lambda s: '"subscribed"' in s.payload)
            if gone == "block_purged":
                block.meta["permanently_deleted_at"] = 1_700_000_000_000
                r = await push(client, block.push_item(heap["id"]))
                assert r.json()["blocks"][0]["status"] == "ok", r.text
                block.synced = block.doc.get_state()
                kind = "block.purged"
            else:
                r = await client.delete(f"/api/heap/{heap['id']}")
                assert r.status_code == 200, r.text
                kind = "heap.deleted"
            await ev.expect(
                m.Stateless, lambda s: json.loads(s.payload)["type"] == kind, timeout=5
            )  # b has heard it
            before = len(await _relayed_to(x, address))
            block.meta["color"] = "relayed-after-removal"
            await y.send(m.SyncUpdate(address, block.pending()))
            answer = await y.expect((m.SyncStatus, m.PermissionDenied))  # type: ignore[arg-type]
            assert isinstance(answer, m.PermissionDenied) or not answer.applied, answer
            got = (await _relayed_to(x, address))[before:]
            assert not any(b"relayed-after-removal" in u for u in got), "relayed, never stored"
