"""``/ws`` over real sockets (trio-websocket), on both engines: sync, durable acks, fan-out,
presence, per-document auth, limits, events, shutdown."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pycrdt
import pytest
import trio
from trio_websocket import ConnectionClosed

from heaper_trio import crdt
from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.protocol import messages as m
from heaper_trio.services.live import connection as live_connection

from .live_client import UNCLOSED_SOCKETS, collect_closed_sockets, live_client  # noqa: F401 (autouse)
from .test_sync import ClientBlock, new_heap, push

# Sockets closed abruptly on purpose (protocol errors, floods, slow consumers) leave
# trio-websocket's client socket to the garbage collector, which warns; not a server leak.
pytestmark = [
    pytest.mark.slow,
    *UNCLOSED_SOCKETS,
]


def state_of(doc: pycrdt.Doc) -> dict[int, int]:
    """A document's state vector as {client: clock}: its encoding orders the clients as the
    document's hash map happens to, so equal states need not be equal bytes."""
    return crdt._parse_state_vector(doc.get_state())


def title_of(update: bytes) -> str:
    doc = pycrdt.Doc()
    doc.apply_update(update)
    return str(doc.get("title_v0", type=pycrdt.XmlFragment))


async def pull_update(client: HeaperClient, block_id: str) -> bytes:
    r = await client.post("/api/sync/pull", json={"blocks": [{"block_id": block_id}]})
    [answer] = r.json()["blocks"]
    assert answer["status"] == "ok", answer
    return base64.b64decode(answer["update"])


async def wait_for(predicate: Any, timeout: float = 2.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def test_two_clients_converge_and_acks_are_durable(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Hello live")
    address = f"{heap['id']}:{block.id}"
    async with live_client(server.url) as a, live_client(server.url) as b:
        assert await a.sync(address, admin.access_token) == b"\x00\x00"  # a new block
        await b.sync(address, admin.access_token)
        await a.expect(m.SyncStep1)
        await a.send(m.SyncUpdate(address, block.pending()))
        assert (await a.expect(m.SyncStatus)).applied
        # Acknowledged means stored: the HTTP side has it at once.
        assert "Hello live" in title_of(await pull_update(admin, block.id))
        got = await b.expect(m.SyncUpdate)
        assert "Hello live" in title_of(got.update)
        assert not any(isinstance(x, m.SyncUpdate) for x in a.seen)  # no echo to the author

        # b answers with its own edit as a step 2 (the reply to the server's step 1)
        other = ClientBlock(block.id)
        other.doc.apply_update(got.update)
        other.synced = other.doc.get_state()
        other.meta["color"] = "red"
        await b.send(m.SyncStep2(address, other.pending()))
        assert (await b.expect(m.SyncStatus)).applied
        seen = await a.expect(m.SyncUpdate)
        block.doc.apply_update(seen.update)
        assert state_of(block.doc) == state_of(other.doc)

        # A newcomer gets everything in its step 2.
        async with live_client(server.url) as c:
            full = await c.sync(address, admin.access_token)
            doc = pycrdt.Doc()
            doc.apply_update(full)
            assert state_of(doc) == state_of(block.doc)


async def test_http_push_reaches_live_clients_and_live_edits_reach_delta(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("From HTTP")
    r = await push(admin, block.push_item(heap["id"]))
    assert r.json()["blocks"][0]["status"] == "created"
    address = f"{heap['id']}:{block.id}:v1"
    async with live_client(server.url) as a:
        assert "From HTTP" in title_of(await a.sync(address, admin.access_token))
        block.write("From HTTP", "and a body")
        await push(admin, block.push_item(heap["id"]))
        got = await a.expect(m.SyncUpdate)
        block2 = ClientBlock(block.id)
        block2.doc.apply_update(await pull_update(admin, block.id))
        doc = pycrdt.Doc()
        doc.apply_update(block2.doc.get_update())
        doc.apply_update(got.update)
        assert state_of(doc) == state_of(block2.doc)

        before = (await admin.get("/api/sync/delta", params={"workspace_id": heap["id"]})).json()[
            "server_time"
        ]
        block2.synced = block2.doc.get_state()
        block2.meta["live"] = True
        await a.send(m.SyncUpdate(address, block2.pending()))
        assert (await a.expect(m.SyncStatus)).applied
        delta = (
            await admin.get("/api/sync/delta", params={"workspace_id": heap["id"], "since": before})
        ).json()
        assert [b["block_id"] for b in delta["changed_blocks"]] == [block.id]


async def test_one_socket_many_documents_and_sessions(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    blocks = [ClientBlock() for _ in range(5)]
    async with live_client(server.url) as a, live_client(server.url) as b:
        for cb in blocks:
            await a.open(f"{heap['id']}:{cb.id}", admin.access_token)
            # v4 session key; synced before a writes: with broadcast before the commit, an
            # open still in progress gets a's edit in its step 2, not as an update (CI once)
            await b.sync(f"{heap['id']}:{cb.id}\x00s2", admin.access_token)
        for i, cb in enumerate(blocks):
            cb.write(f"Block {i}")
            await a.send(m.SyncUpdate(f"{heap['id']}:{cb.id}", cb.pending()))
        acks = [await a.expect(m.SyncStatus) for _ in blocks]
        assert all(x.applied for x in acks)
        got = {}
        while len(got) < len(blocks):
            x = await b.expect(m.SyncUpdate)
            assert x.address.endswith("\x00s2")  # replies use the client's own address
            got[x.address.split(":")[1].split("\x00")[0]] = title_of(x.update)
        assert got == {cb.id: f"<paragraph>Block {i}</paragraph>" for i, cb in enumerate(blocks)}


async def test_presence_is_relayed_owned_and_removed_on_close(
    admin: HeaperClient, eve: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    address = f"{heap['id']}:{ClientBlock().id}"
    state = json.dumps({"user": {"name": "Ada"}})
    async with live_client(server.url) as a:
        await a.sync(address, admin.access_token)
        async with live_client(server.url) as b:
            await b.sync(address, admin.access_token)
            await b.send(m.Awareness(address, m.encode_awareness([m.AwarenessEntry(7, 1, state)])))
            got = await a.expect(m.Awareness)
            assert m.decode_awareness(got.payload) == [m.AwarenessEntry(7, 1, state)]
            await b.expect(m.Awareness)  # the sender hears it too (keeps its timer alive)
            await a.send(m.QueryAwareness(address))
            answer = await a.expect(m.Awareness)
            assert m.decode_awareness(answer.payload) == [m.AwarenessEntry(7, 1, state)]
            # a newcomer gets the present states right after it is authenticated
            async with live_client(server.url) as c:
                await c.open(address, admin.access_token)
                newcomer = await c.expect(m.Awareness)
                assert m.decode_awareness(newcomer.payload)[0].client_id == 7
        # b's socket is gone: its state is removed at once (not after 30 s)
        gone = await a.expect(
            m.Awareness, lambda x: m.decode_awareness(x.payload)[0].state == "null", timeout=2
        )
        assert m.decode_awareness(gone.payload)[0].client_id == 7


async def test_each_document_is_authorized_on_its_own(
    admin: HeaperClient, eve: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    mine = f"{heap['id']}:{ClientBlock().id}"
    async with live_client(server.url) as a:
        await a.open(mine, "not-a-jwt")
        denied = await a.expect(m.PermissionDenied)
        assert denied.address == mine and denied.reason == "token_invalid"
        await a.open(mine, eve.access_token)  # a real token, someone else's heap
        assert (await a.expect(m.PermissionDenied)).reason == "forbidden"
        await a.open(f"{heap['id']}", admin.access_token)  # not a document name
        assert (await a.expect(m.PermissionDenied)).reason == "invalid_document_name"
        await a.open(mine, admin.access_token)  # the same socket still works
        await a.expect(m.Authenticated, lambda x: x.address == mine)
        assert not any(isinstance(x, m.SyncStep2) and x.address != mine for x in a.seen)


async def test_token_in_the_url_authorizes_without_auth_messages(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    address = f"{heap['id']}:{ClientBlock().id}"
    async with live_client(server.url + "", path=f"/ws?token={admin.access_token}") as a:
        await a.send(m.SyncStep1(address, b"\x00"))
        await a.expect(m.Authenticated)
        assert (await a.expect(m.SyncStep2)).update == b"\x00\x00"


async def test_malformed_frames_and_floods_close_the_socket(
    admin: HeaperClient, server: RunningServer
) -> None:
    async with live_client(server.url) as a:
        await a.send_raw(b"\xff\xff\xff")
        with pytest.raises(ConnectionClosed) as closed:
            await a.receive()
        assert closed.value.reason.code == 1002
    async with live_client(server.url) as a:  # no auth: queued, then too much
        big = m.encode(m.SyncUpdate("h:b", b"\x00" * 600_000))
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(20):
                await a.send_raw(big)
            await a.receive()
        assert closed.value.reason.code == 4205
    async with live_client(server.url) as a:
        await a.send_raw("text frames are not the protocol")
        with pytest.raises(ConnectionClosed) as closed:
            await a.receive()
        assert closed.value.reason.code == 1003
    async with live_client(server.url) as a:  # Ping is answered, not an error
        await a.send(m.Ping())
        assert isinstance(await a.receive(), m.Pong)


@pytest.mark.parametrize(
    "name",
    ["{heap}:{block}:v7", "block/{block}?workspaceId={heap}&syncVersion=7"],
    ids=["contract-name", "app-name"],
)
async def test_stale_sync_version_gets_the_full_state_and_no_writes(
    admin: HeaperClient, server: RunningServer, name: str
) -> None:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Versioned")
    await push(admin, block.push_item(heap["id"]))
    address = name.format(heap=heap["id"], block=block.id)
    async with live_client(server.url) as a:
        full = await a.sync(address, admin.access_token)
        assert "Versioned" in title_of(full)
        note = await a.expect(m.Stateless)
        assert note.address == address
        assert json.loads(note.payload) == {
            "type": "sync_version_mismatch",
            "block_id": block.id,
            "sync_version": 1,
        }
        block.meta["x"] = 1
        await a.send(m.SyncUpdate(address, block.pending()))
        assert not (await a.expect(m.SyncStatus)).applied
    assert "x" not in pycrdt.Doc().get("meta_v0", type=pycrdt.Map)  # sanity
    doc = pycrdt.Doc()
    doc.apply_update(await pull_update(admin, block.id))
    assert "x" not in doc.get("meta_v0", type=pycrdt.Map)


async def test_large_documents_arrive_in_pieces(admin: HeaperClient, server: RunningServer) -> None:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Big", "x" * 10)
    for i in range(40):
        block.write("Big", f"lorem ipsum {i} " * 2000)
    r = await push(admin, block.push_item(heap["id"]))
    assert r.json()["blocks"][0]["status"] == "created"
    async with live_client(server.url) as a:
        await a.open(f"{heap['id']}:{block.id}", admin.access_token)
        await a.expect(m.Authenticated)
        doc, pieces = pycrdt.Doc(), 0
        while True:
            x = await a.expect((m.SyncUpdate, m.SyncStep2))  # type: ignore[arg-type]
            assert len(x.update) <= live_connection.SPLIT_BYTES * 2
            doc.apply_update(x.update)
            pieces += 1
            if isinstance(x, m.SyncStep2):
                break
        assert pieces > 1
        assert state_of(doc) == state_of(block.doc)


async def test_events_channel_and_legacy_scan_events(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    async with live_client(server.url) as a, live_client(server.url, "/api/ws") as legacy:
        await a.open("events", admin.access_token)
        await a.expect(m.Authenticated)
        await a.send(
            m.Stateless(
                "events", json.dumps({"type": "subscribe", "heap_ids": [heap["id"], "nope"]})
            )
        )
        answer = json.loads((await a.expect(m.Stateless)).payload)
        assert answer == {"type": "subscribed", "heap_ids": [heap["id"]]}
        block = ClientBlock()
        block.write("Evented")
        await push(admin, block.push_item(heap["id"]))
        evt = json.loads((await a.expect(m.Stateless)).payload)
        assert evt["type"] == "block.created" and evt["block_id"] == block.id
        block.meta["deleted_at"] = int(time.time() * 1000)
        await push(admin, block.push_item(heap["id"]))
        evt = json.loads((await a.expect(m.Stateless)).payload)
        assert (evt["type"], evt["block_id"]) == ("block.deleted", block.id)

        await legacy.ws.send_message(json.dumps({"token": admin.access_token}))
        assert json.loads(await legacy.ws.get_message())["type"] == "authenticated"
        scan = {
            "type": "scan.progress",
            "scan_id": "s1",
            "heap_id": heap["id"],
            "path": "/x",
            "files_seen": 3,
            "files_done": 1,
            "bytes": 10,
            "current_path": "/x/a",
            "files_per_s": 2.0,
        }
        server.services.hub.publish_user_event(admin.user_id or "", scan)
        assert json.loads(await legacy.ws.get_message()) == scan
        assert json.loads((await a.expect(m.Stateless)).payload) == scan


async def test_revoked_account_loses_its_live_documents(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live_connection, "KEEPALIVE_TICK_S", 0.05)
    monkeypatch.setattr(live_connection, "RECHECK_ACCOUNT_S", 0.1)
    heap = await new_heap(admin)
    address = f"{heap['id']}:{ClientBlock().id}"
    async with live_client(server.url) as a:
        await a.sync(address, admin.access_token)
        assert admin.user_id
        await server.services.storage.revoke_user_tokens(admin.user_id, int(time.time() * 1000))
        denied = await a.expect(m.PermissionDenied, timeout=3)
        assert denied.reason == "token_revoked"


async def test_closing_ends_everything_the_connection_owns(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    counters = server.services.realtime
    async with live_client(server.url) as a:
        for _ in range(3):
            await a.sync(f"{heap['id']}:{ClientBlock().id}", admin.access_token)
        assert counters.connections == 1 and len(server.services.hub.rooms) == 3
    await wait_for(lambda: counters.connections == 0 and not server.services.hub.rooms, 1.0)
    health = (await admin.get("/api/health")).json()["diagnostics"]["realtime"]
    assert health["connections_total"] >= 1 and health["messages_in"] >= 6


async def test_slow_consumer_is_dropped_not_buffered(start_server: Any) -> None:
    server: RunningServer = await start_server(ws_outbox_bytes=65536)
    async with HeaperClient(server.url) as client:
        await client.login()
        heap = await new_heap(client)
        block = ClientBlock()
        block.write("Flood")
        await push(client, block.push_item(heap["id"]))
        address = f"{heap['id']}:{block.id}"
        async with live_client(server.url) as slow:
            await slow.sync(address, client.access_token)
            for i in range(200):  # ~20 MB of fan-out that nobody reads
                block.meta[f"k{i}"] = "y" * 100_000
                await push(client, block.push_item(heap["id"]))
                block.synced = block.doc.get_state()
                if server.services.realtime.dropped_slow_consumers:
                    break
            assert server.services.realtime.dropped_slow_consumers == 1
            with pytest.raises(ConnectionClosed):
                with trio.fail_after(10):
                    while True:
                        await slow.ws.get_message()


async def test_shutdown_closes_sockets_with_1001(start_server: Any) -> None:
    server: RunningServer = await start_server()
    async with HeaperClient(server.url) as client:
        await client.login()
        heap = await new_heap(client)
        async with live_client(server.url) as a:
            await a.sync(f"{heap['id']}:{ClientBlock().id}", client.access_token)
            server.services.shutdown.set()
            with pytest.raises(ConnectionClosed) as closed:
                with trio.fail_after(3):
                    while True:
                        await a.receive()
            assert closed.value.reason.code == 1001


async def test_a_reconnect_storm_loads_the_document_once(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Popular")
    await push(admin, block.push_item(heap["id"]))
    storage = server.services.storage
    loads: list[str] = []
    original = storage.load_block

    async def counting(block_id: str) -> Any:
        loads.append(block_id)
        await trio.sleep(0.05)  # a slow database: everyone arrives while the load runs
        return await original(block_id)

    storage.load_block = counting  # type: ignore[method-assign]
    address = f"{heap['id']}:{block.id}"
    synced = 0

    async def client() -> None:
        nonlocal synced
        async with live_client(server.url, disconnect_timeout=30) as c:
            assert "Popular" in title_of(await c.sync(address, admin.access_token))
            synced += 1
            while synced < 50:
                await trio.sleep(0.01)

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(client)
    finally:
        storage.load_block = original  # type: ignore[method-assign]
    assert synced == 50 and loads.count(block.id) == 1, loads


async def test_a_burst_goes_out_coalesced(admin: HeaperClient, server: RunningServer) -> None:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Burst")
    await push(admin, block.push_item(heap["id"]))
    block.synced = block.doc.get_state()
    address = f"{heap['id']}:{block.id}"
    async with live_client(server.url) as writer, live_client(server.url) as reader:
        await writer.sync(address, admin.access_token)
        mirror = pycrdt.Doc()
        mirror.apply_update(await reader.sync(address, admin.access_token))
        for i in range(50):  # back to back, without waiting for acks
            block.meta[f"k{i}"] = i
            await writer.send(m.SyncUpdate(address, block.pending()))
            block.synced = block.doc.get_state()
        frames = 0
        with trio.fail_after(5):
            while mirror.get_state() != block.doc.get_state():
                mirror.apply_update((await reader.expect(m.SyncUpdate)).update)
                frames += 1
        acks = [await writer.expect(m.SyncStatus) for _ in range(50)]
        assert all(a.applied for a in acks)
        assert frames < 50, frames  # merged per commit and per turn, not one per update


async def test_a_joiner_whose_loader_left_loads_again(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Still here")
    await push(admin, block.push_item(heap["id"]))
    storage = server.services.storage
    original = storage.load_block
    first = trio.Event()

    async def slow_once(block_id: str) -> Any:
        if not first.is_set():
            first.set()
            await trio.sleep(30)  # the first loader never finishes: its socket closes
        return await original(block_id)

    storage.load_block = slow_once  # type: ignore[method-assign]
    address = f"{heap['id']}:{block.id}"
    try:
        async with live_client(server.url) as waiter:
            async with live_client(server.url) as loader:
                await loader.open(address, admin.access_token)
                await first.wait()
                await waiter.open(address, admin.access_token)
                await waiter.expect(m.Authenticated)
                # the waiter waits on the same room
                await wait_for(lambda: len(server.services.hub.rooms[block.id].subs) == 2)
            step2 = await waiter.expect(m.SyncStep2, timeout=5)
            assert "Still here" in title_of(step2.update)
    finally:
        storage.load_block = original  # type: ignore[method-assign]
    await wait_for(lambda: server.services.realtime.documents_loaded == 0)
