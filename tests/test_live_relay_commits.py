"""Issue 12, ``services/live/relay_commits.py`` (both engines, real server, real sockets): in a
big room a writer's live updates reach the other subscribers while an earlier commit of theirs
is still under way, and each is acknowledged once durable, in order. Each test is one hole the
review of the first try (branch h/live) found: (a) a writer leaving dropped its queued commits
after the others had received them; (b) the queue had no bound (empty updates counted 0);
(c) acks could leave out of order with compression on; (d) a stale version could be relayed.
"Big" is lowered to one subscriber (``pipelined``) so that two clients make one."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from heaper_trio import crdt
from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.crdt import EMPTY_UPDATE
from heaper_trio.protocol import messages as m
from heaper_trio.services.live import connection as live_connection
from heaper_trio.services.live import relay_commits

from .conftest import StartServer
from .live_client import UNCLOSED_SOCKETS, collect_closed_sockets, live_client  # noqa: F401 (autouse)
from .test_live_restore import expect_replacement, replace_document
from .test_live_ws import pull_update, title_of
from .test_sync import ClientBlock, new_heap, push
from .test_ws_compression import _restore_compression, deflate_client  # noqa: F401 (autouse)

pytestmark = [pytest.mark.slow, *UNCLOSED_SOCKETS]


@pytest.fixture
def pipelined(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rooms of two subscribers queue their commits (the default is rooms over 256)."""
    monkeypatch.setattr(relay_commits, "PIPELINE_ABOVE_SUBS", 1)
    monkeypatch.setattr(live_connection, "RELAY_BEFORE_COMMIT", True)


class HeldCommits:
    """Storage's commit, held until released, counting the commits that began."""

    def __init__(self, storage: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.commit = storage.commit_changes
        self.calls = 0
        self.started = trio.Event()
        self.release = trio.Event()
        monkeypatch.setattr(storage, "commit_changes", self.held)

    async def held(self, *args: Any) -> Any:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        return await self.commit(*args)


async def until(predicate: Any) -> None:
    with trio.fail_after(5):
        while not predicate():
            await trio.sleep(0.01)


@pytest.mark.usefixtures("pipelined")
async def test_updates_are_relayed_while_an_earlier_commit_runs_and_acked_in_order(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    heap = await new_heap(admin)
    block = ClientBlock()
    address = f"{heap['id']}:{block.id}"
    async with live_client(server.url) as a, live_client(server.url) as b:
        await a.sync(address, admin.access_token)
        await b.sync(address, admin.access_token)
        held = HeldCommits(server.services.documents.storage, monkeypatch)
        texts = ["First edit", "Second edit", "Third edit"]
        for i, text in enumerate(texts):
            block.write(text)
            await a.send(m.SyncUpdate(address, block.pending()))
            block.synced = block.doc.get_state()
            if i == 0:
                with trio.fail_after(5):
                    await held.started.wait()
            # Every edit reaches b while the first commit is still held.
            await b.expect(m.SyncUpdate, lambda x, mark=text: mark.encode() in x.update)
        await a.send(m.SyncStep1(address, b"\x00"))  # answered after the three acks
        with trio.move_on_after(0.3):
            await a.expect(m.SyncStatus)
            pytest.fail("acknowledged before its commit")
        assert held.calls == 1
        held.release.set()
        assert all([(await a.expect(m.SyncStatus)).applied for _ in texts])
        step2 = await a.expect(m.SyncStep2)
        assert texts[-1] in title_of(step2.update)
        kinds = [type(x) for x in a.seen if isinstance(x, (m.SyncStatus, m.SyncStep2))]
        assert kinds[-4:] == [m.SyncStatus] * 3 + [m.SyncStep2]
        assert held.calls == 2  # the second and third waited together: one commit
        assert texts[-1] in title_of(await pull_update(admin, block.id))


@pytest.mark.usefixtures("pipelined")
async def test_a_writer_leaving_still_has_its_relayed_updates_stored(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(a) The others received the edits and the room's state vector holds them, so no
    resync would bring them back: their commits must outlive the writer's connection."""
    heap = await new_heap(admin)
    block = ClientBlock()
    address = f"{heap['id']}:{block.id}"
    async with live_client(server.url) as b:
        await b.sync(address, admin.access_token)
        async with live_client(server.url) as a:
            await a.sync(address, admin.access_token)
            held = HeldCommits(server.services.documents.storage, monkeypatch)
            for i, text in enumerate(["First edit", "Second edit", "Third edit"]):
                block.write(text)
                await a.send(m.SyncUpdate(address, block.pending()))
                block.synced = block.doc.get_state()
                if i == 0:
                    with trio.fail_after(5):
                        await held.started.wait()
                await b.expect(m.SyncUpdate, lambda x, mark=text: mark.encode() in x.update)
        # The writer is gone (its socket closed) while the first commit is held.
        hub = server.services.hub
        await until(lambda: len(hub.rooms[block.id].subs) == 1)
        held.release.set()
        commits = hub.rooms[block.id].commits
        assert commits is not None
        await until(lambda: commits.idle)
        assert held.calls == 2
        stored = title_of(await pull_update(admin, block.id))
        assert "Third edit" in stored and "Second edit" in stored


@pytest.mark.parametrize("first", ["edits", "empty_updates"])
@pytest.mark.usefixtures("pipelined")
async def test_what_waits_behind_a_held_commit_is_bounded(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    """(b) Behind a held commit, a writer sending without end must not grow the server's
    queues: the room's queue stays within its bound in updates, and empty updates (nothing to
    store, so nothing queued) count in the SyncStatus a worker may owe. The worker stops
    reading instead (its inbox, then TCP), and everything is acknowledged once released."""
    monkeypatch.setattr(relay_commits, "MAX_QUEUED_UPDATES", 4)
    monkeypatch.setattr(live_connection, "MAX_OWED_ACKS", 16)
    monkeypatch.setattr(live_connection, "MAX_BATCH", 8)
    heap = await new_heap(admin)
    block = ClientBlock()
    address = f"{heap['id']}:{block.id}"
    hub = server.services.hub
    async with live_client(server.url) as a, live_client(server.url) as b:
        await a.sync(address, admin.access_token)
        await b.sync(address, admin.access_token)
        held = HeldCommits(server.services.documents.storage, monkeypatch)
        block.write("Held edit")
        await a.send(m.SyncUpdate(address, block.pending()))
        block.synced = block.doc.get_state()
        with trio.fail_after(5):
            await held.started.wait()
        sent = 1

        async def edits() -> None:
            nonlocal sent
            for i in range(12):
                block.write(f"Edit {i}")
                await a.send(m.SyncUpdate(address, block.pending()))
                block.synced = block.doc.get_state()
                sent += 1

        async def empties() -> None:
            nonlocal sent
            for _ in range(200):
                await a.send(m.SyncUpdate(address, EMPTY_UPDATE))
                sent += 1

        for part in (edits, empties) if first == "edits" else (empties, edits):
            await part()
        room = hub.rooms[block.id]
        workers = [c.workers[address] for c in hub.keepalive if address in c.workers]
        # The worker reads until a bound holds it, then waits.
        if first == "edits":
            await until(lambda: room.commits is not None and room.commits.queued_updates >= 4)
        else:
            await until(lambda: max(w._owed for w in workers) >= 16 - 8)
        await trio.sleep(0.2)
        assert room.commits is not None
        assert room.commits.queued_updates <= 4
        assert max(w._owed for w in workers) <= 16
        held.release.set()
        acks = [await a.expect(m.SyncStatus) for _ in range(sent)]
        assert all(s.applied for s in acks)
        assert "Edit 11" in title_of(await pull_update(admin, block.id))


@pytest.mark.usefixtures("pipelined")
@pytest.mark.engines("sqlite")  # the transport's part: the engine plays none
async def test_acks_stay_in_order_behind_a_commit_with_compression(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(c) With compression every frame goes through the outbox (no direct write): an empty
    update's SyncStatus, owed behind a real one still committing, must wait for it."""
    server = await start_server(ws_compression=True)
    admin = HeaperClient(server.url)
    try:
        await admin.login()
        heap = await new_heap(admin)
        block = ClientBlock()
        address = f"{heap['id']}:{block.id}"
        async with deflate_client(server.url) as (a, a_ws), deflate_client(server.url) as (b, _):
            assert a_ws.accepted == ["permessage-deflate"]
            await a.sync(address, admin.access_token)
            await b.sync(address, admin.access_token)
            held = HeldCommits(server.services.documents.storage, monkeypatch)
            block.write("Held edit")
            await a.send(m.SyncUpdate(address, block.pending()))
            block.synced = block.doc.get_state()
            with trio.fail_after(5):
                await held.started.wait()
            await a.send(m.SyncUpdate(address, EMPTY_UPDATE))
            await b.expect(m.SyncUpdate, lambda x: b"Held edit" in x.update)
            with trio.move_on_after(0.3):
                await a.expect(m.SyncStatus)
                pytest.fail("an acknowledgement overtook a commit still held")
            held.release.set()
            assert [(await a.expect(m.SyncStatus)).applied for _ in range(2)] == [True, True]
            assert "Held edit" in title_of(await pull_update(admin, block.id))
    finally:
        await admin.aclose()


@pytest.mark.usefixtures("pipelined")
async def test_an_edit_of_a_stale_version_is_neither_relayed_nor_stored(
    admin: HeaperClient, server: RunningServer
) -> None:
    """(d) Once the document was replaced (a restore), an address naming the old version is
    stale: its edits are refused, reach nobody, and are not stored."""
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Old title", "old body")
    await push(admin, block.push_item(heap["id"]))
    block.synced = block.doc.get_state()
    base = f"{heap['id']}:{block.id}"
    versioned = base + ":v1"
    async with live_client(server.url) as a, live_client(server.url) as b:
        await a.sync(versioned, admin.access_token)
        await b.sync(base, admin.access_token)
        committed = await replace_document(server, heap["id"], block.id, "New title")
        server.services.documents.announce([committed])
        await expect_replacement(a, versioned, 2)
        await expect_replacement(b, base, 2)
        block.meta["color"] = "red"
        await a.send(m.SyncUpdate(versioned, block.pending()))
        assert not (await a.expect(m.SyncStatus)).applied
        with trio.move_on_after(0.3):
            await b.expect(m.SyncUpdate)
            pytest.fail("an edit of a stale version was relayed")
        r = await admin.post("/api/sync/pull", json={"blocks": [{"block_id": block.id}]})
        [answer] = r.json()["blocks"]
        assert answer["sync_version"] == 2
        stored = await server.services.storage.load_block(block.id)
        assert stored is not None
        state = crdt.BlockDocument.load(stored.snapshot, stored.updates).full_state()
        assert b"New title" in state and b"red" not in state
