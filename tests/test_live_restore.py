"""Issue 12 with issue 10's block restore, the live side (both engines, real server): when a
block's document is replaced and its ``sync_version`` raised, every open room drops what it
held (no merge of the two histories), takes the stored document, and tells each subscriber
what a stale step 1 hears: the whole new state, then ``sync_version_mismatch``. From then on
an address naming the old version is stale."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from heaper_trio import crdt
from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.protocol import messages as m
from heaper_trio.records import BlockChange
from heaper_trio.services.commits import Committed
from heaper_trio.services.push import projected

from .live_client import UNCLOSED_SOCKETS, LiveClient, collect_closed_sockets, live_client  # noqa: F401 (autouse)
from .test_edge_versions import raise_version
from .test_live_ws import title_of
from .test_sync import ClientBlock, new_heap, push

pytestmark = [
    pytest.mark.slow,
    *UNCLOSED_SOCKETS,
]


async def replace_document(
    server: RunningServer, heap_id: str, block_id: str, title: str
) -> Committed:
    """What a block restore does, through storage (the route is helper A's): store another
    document as the block's whole state (a log row plus a snapshot covering it, so a load
    reads only the new document), raise ``sync_version`` by one. Returns its announcement."""
    storage = server.services.storage
    stored = await storage.load_block(block_id)
    assert stored is not None
    other = ClientBlock(block_id)
    other.write(title)
    doc = crdt.BlockDocument.load(None, [other.doc.get_update()])
    state = doc.full_state()
    change = BlockChange(
        block_id,
        heap_id,
        None,
        stored.last_seq,
        (state,),
        projected(doc),
        doc.state_vector(),
        doc.size,
        (doc.snapshot(), stored.last_seq + 1),
    )
    [result] = await storage.commit_changes([change], int(time.time() * 1000))
    version = stored.sync_version + 1
    await raise_version(server, block_id, version)
    return Committed(heap_id, block_id, "changed", result.last_seq, version, result.updated_at)


async def expect_replacement(client: LiveClient, address: str, version: int) -> bytes:
    """The frames a subscriber gets: the whole new state (pieces, then a step 2), then the
    event. Returns the state."""
    step2 = await client.expect(m.SyncStep2, lambda x: x.address == address)
    event = await client.expect(m.Stateless, lambda x: x.address == address)
    body = json.loads(event.payload)
    assert body["type"] == "sync_version_mismatch" and body["sync_version"] == version, body
    return step2.update


@pytest.mark.parametrize("announced", ["here", "by_another_process"])
async def test_a_replaced_document_replaces_the_room(
    admin: HeaperClient, server: RunningServer, announced: str
) -> None:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Old title", "old body")
    await push(admin, block.push_item(heap["id"]))
    block.synced = block.doc.get_state()
    base = f"{heap['id']}:{block.id}"
    versioned, plain = base + ":v1", base
    hub = server.services.hub
    async with live_client(server.url) as a, live_client(server.url) as b:
        assert "Old title" in title_of(await a.sync(versioned, admin.access_token))
        await b.sync(plain, admin.access_token)
        committed = await replace_document(server, heap["id"], block.id, "New title")
        if announced == "here":
            server.services.documents.announce([committed])  # as the restore route does
        else:  # the pointer another process's commit sends (PostgreSQL NOTIFY)
            hub.on_remote(committed)
        for client, address in ((a, versioned), (b, plain)):
            state = await expect_replacement(client, address, 2)
            assert "New title" in title_of(state) and "Old title" not in title_of(state)
        assert not any(isinstance(x, m.SyncUpdate) for x in a.seen + b.seen)  # no merge sent
        room = hub.rooms[block.id]
        assert room.sync_version == 2 and room.last_seq == committed.seq

        # The old version's address is stale now: its edits are refused (and not relayed).
        block.meta["color"] = "red"
        await a.send(m.SyncUpdate(versioned, block.pending()))
        assert not (await a.expect(m.SyncStatus)).applied
        # A newcomer at the new version gets the new document alone.
        async with live_client(server.url) as c:
            fresh = await c.sync(base + ":v2", admin.access_token)
            assert "New title" in title_of(fresh) and "Old title" not in title_of(fresh)
            assert not any(isinstance(x, m.Stateless) for x in c.seen)
            # and its edits reach the others on the new history
            edit = ClientBlock(block.id)
            edit.doc.apply_update(fresh)
            edit.synced = edit.doc.get_state()
            edit.meta["color"] = "green"
            await c.send(m.SyncUpdate(base + ":v2", edit.pending()))
            assert (await c.expect(m.SyncStatus)).applied
            got = await b.expect(m.SyncUpdate)
            assert b"green" in got.update
        # What is stored is the new document plus that edit, nothing of the old one.
        r = await admin.post("/api/sync/pull", json={"blocks": [{"block_id": block.id}]})
        [answer] = r.json()["blocks"]
        assert answer["sync_version"] == 2


async def test_a_commit_of_the_new_version_arriving_first_still_replaces(
    admin: HeaperClient, server: RunningServer
) -> None:
    """A room that hears of a commit at a higher version with updates (an edit made right
    after the restore, its announcement overtaking the restore's) does not merge it into the
    old document: it reads the stored one."""
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Old title")
    await push(admin, block.push_item(heap["id"]))
    base = f"{heap['id']}:{block.id}"
    hub = server.services.hub
    async with live_client(server.url) as a:
        await a.sync(base + ":v1", admin.access_token)
        committed = await replace_document(server, heap["id"], block.id, "New title")
        extra = ClientBlock(block.id)
        extra.meta["color"] = "blue"  # an update of no history in particular
        hub.on_commit(
            [Committed(heap["id"], block.id, "changed", committed.seq, 2, 0, (extra.pending(),))]
        )
        state = await expect_replacement(a, base + ":v1", 2)
        assert "New title" in title_of(state) and "Old title" not in title_of(state)
        assert not any(isinstance(x, m.SyncUpdate) for x in a.seen)


@pytest.mark.engines("postgres")
async def test_a_restore_in_one_process_replaces_the_room_of_another(start_server: Any) -> None:
    """End to end over real sockets: POST /api/block_restore on server ``a``; the subscriber
    of server ``b`` (another hub, reached by the PostgreSQL announcement) gets the restored
    state and ``sync_version_mismatch``, and its old ``:v1`` is stale there from then on."""
    a: RunningServer = await start_server()
    b: RunningServer = await start_server()
    async with HeaperClient(a.url) as client:
        await client.login()
        heap = await new_heap(client)
        block = ClientBlock()
        block.write("First title")
        await push(client, block.push_item(heap["id"]))  # seq 1
        block.synced = block.doc.get_state()
        block.write("First title", "a body to lose")
        await push(client, block.push_item(heap["id"]))  # seq 2
        block.synced = block.doc.get_state()
        address = f"{heap['id']}:{block.id}:v1"
        async with live_client(b.url) as on_b:
            assert b"a body to lose" in await on_b.sync(address, client.access_token)
            r = await client.post(f"/api/block_restore/{block.id}", json={"seq": 1})
            assert r.status_code == 200 and r.json()["sync_version"] == 2, r.text
            state = await expect_replacement(on_b, address, 2)
            assert "First title" in title_of(state) and b"a body to lose" not in state
            assert b.services.hub.rooms[block.id].sync_version == 2
            block.meta["color"] = "red"
            await on_b.send(m.SyncUpdate(address, block.pending()))
            assert not (await on_b.expect(m.SyncStatus)).applied
