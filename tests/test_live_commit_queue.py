"""Issue 12, ``services/live/commit_queue.py`` (both engines, real server): in a big room a
writer's live updates reach the other subscribers while an earlier commit of theirs is still
under way, are stored together in the next commit, and are each acknowledged once durable, in
order; a reply to anything else (step 1) comes after every acknowledgement owed before it; a
refusal for the document commits nothing queued behind it. A small room commits between
relays, as before the queue. "Big" is lowered to one subscriber (``pipelined``) so that two
clients make one."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.protocol import messages as m
from heaper_trio.services.live import commit_queue
from heaper_trio.services.live import connection as live_connection
from heaper_trio.web.ws_transport import RawTransport

from .live_client import UNCLOSED_SOCKETS, collect_closed_sockets, live_client  # noqa: F401 (autouse)
from .test_live_ws import pull_update, title_of
from .test_sync import ClientBlock, new_heap

pytestmark = [pytest.mark.slow, *UNCLOSED_SOCKETS]


@pytest.fixture
def pipelined(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rooms of two subscribers queue their commits (the default is rooms over 256)."""
    monkeypatch.setattr(commit_queue, "PIPELINE_ABOVE_SUBS", 1)


class CountedHeldCommits:
    """Storage's commit, held until released, counting the commits that began."""

    def __init__(self, storage: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.commit = storage.commit_changes
        self.calls = 0
        self.args: list[str] = []  # what each commit was handed, as text
        self.started = trio.Event()
        self.release = trio.Event()
        monkeypatch.setattr(storage, "commit_changes", self.held)

    async def held(self, *args: Any) -> Any:
        self.calls += 1
        self.args.append(repr(args))
        self.started.set()
        await self.release.wait()
        return await self.commit(*args)


@pytest.mark.usefixtures("pipelined")
async def test_updates_are_relayed_while_an_earlier_commit_runs_and_acked_in_order(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live_connection, "RELAY_BEFORE_COMMIT", True)
    heap = await new_heap(admin)
    block = ClientBlock()
    address = f"{heap['id']}:{block.id}"
    async with live_client(server.url) as a, live_client(server.url) as b:
        await a.sync(address, admin.access_token)
        await b.sync(address, admin.access_token)
        held = CountedHeldCommits(server.services.documents.storage, monkeypatch)
        texts = ["First edit", "Second edit", "Third edit"]
        for i, text in enumerate(texts):
            block.write(text)
            await a.send(m.SyncUpdate(address, block.pending()))
            block.synced = block.doc.get_state()
            if i == 0:
                with trio.fail_after(5):
                    await held.started.wait()
            # Every edit reaches b while the first commit is still held.
            mark = text.encode()
            got = await b.expect(m.SyncUpdate, lambda x, mark=mark: mark in x.update)
            assert got.address == address
        await a.send(m.SyncStep1(address, b"\x00"))  # answered after the three acks
        with trio.move_on_after(0.3):
            await a.expect(m.SyncStatus)
            pytest.fail("acknowledged before its commit")
        assert held.calls == 1
        held.release.set()
        statuses = [await a.expect(m.SyncStatus) for _ in texts]
        assert all(s.applied for s in statuses)
        step2 = await a.expect(m.SyncStep2)
        assert texts[-1] in title_of(step2.update)
        kinds = [type(x) for x in a.seen if isinstance(x, (m.SyncStatus, m.SyncStep2))]
        assert kinds[-4:] == [m.SyncStatus] * 3 + [m.SyncStep2]
        # The second and third arrived during the first commit: one commit for both.
        assert held.calls == 2
        assert texts[-1] in title_of(await pull_update(admin, block.id))


@pytest.mark.usefixtures("pipelined")
async def test_a_refused_document_commits_nothing_queued_behind_it(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heap is deleted while the first commit is held: that commit is refused, the
    document is closed, and the edit queued behind it is neither stored nor acknowledged."""
    monkeypatch.setattr(live_connection, "RELAY_BEFORE_COMMIT", True)
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Stored first")
    address = f"{heap['id']}:{block.id}"
    async with live_client(server.url) as a, live_client(server.url) as b:
        await a.sync(address, admin.access_token)
        await b.sync(address, admin.access_token)
        await a.send(m.SyncUpdate(address, block.pending()))
        block.synced = block.doc.get_state()
        assert (await a.expect(m.SyncStatus)).applied
        held = CountedHeldCommits(server.services.documents.storage, monkeypatch)
        block.write("Refused")
        await a.send(m.SyncUpdate(address, block.pending()))
        block.synced = block.doc.get_state()
        with trio.fail_after(5):
            await held.started.wait()
        block.write("Queued behind")
        await a.send(m.SyncUpdate(address, block.pending()))
        await b.expect(m.SyncUpdate, lambda x: b"Queued behind" in x.update)
        assert await server.services.storage.delete_heap(heap["id"])
        held.release.set()
        denied = await a.expect(m.PermissionDenied)
        assert denied.address == address
        with trio.move_on_after(0.5):
            await a.expect(m.SyncStatus)
            pytest.fail("an update of a refused document was acknowledged")
        assert not any("Queued behind" in args for args in held.args)  # never committed


@pytest.mark.usefixtures("pipelined")
async def test_presence_does_not_wait_for_a_commit(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An editor sends presence with every keystroke: it must not put its updates back
    behind their commits."""
    monkeypatch.setattr(live_connection, "RELAY_BEFORE_COMMIT", True)
    heap = await new_heap(admin)
    block = ClientBlock()
    address = f"{heap['id']}:{block.id}"
    async with live_client(server.url) as a, live_client(server.url) as b:
        await a.sync(address, admin.access_token)
        await b.sync(address, admin.access_token)
        held = CountedHeldCommits(server.services.documents.storage, monkeypatch)
        block.write("Typing")
        await a.send(m.SyncUpdate(address, block.pending()))
        block.synced = block.doc.get_state()
        with trio.fail_after(5):
            await held.started.wait()
        state = '{"user":{"name":"A"},"cursor":1}'
        await a.send(m.Awareness(address, m.encode_awareness([m.AwarenessEntry(7, 1, state)])))
        block.write("Typing on")
        await a.send(m.SyncUpdate(address, block.pending()))
        got = await b.expect(m.Awareness)  # while the first commit is still held
        assert b'"cursor":1' in got.payload
        await b.expect(m.SyncUpdate, lambda x: b"Typing on" in x.update)
        assert not any(isinstance(x, m.SyncStatus) for x in a.seen)
        held.release.set()
        assert all([(await a.expect(m.SyncStatus)).applied for _ in range(2)])


async def test_a_small_room_commits_between_relays(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the default threshold two clients are a small room: the worker waits for each
    commit before it reads on (what came meanwhile goes out, and is stored, together)."""
    monkeypatch.setattr(live_connection, "RELAY_BEFORE_COMMIT", True)
    heap = await new_heap(admin)
    block = ClientBlock()
    address = f"{heap['id']}:{block.id}"
    async with live_client(server.url) as a, live_client(server.url) as b:
        await a.sync(address, admin.access_token)
        await b.sync(address, admin.access_token)
        held = CountedHeldCommits(server.services.documents.storage, monkeypatch)
        for i, text in enumerate(["First edit", "Second edit", "Third edit"]):
            block.write(text)
            await a.send(m.SyncUpdate(address, block.pending()))
            block.synced = block.doc.get_state()
            if i == 0:
                with trio.fail_after(5):
                    await held.started.wait()
                await b.expect(m.SyncUpdate, lambda x: b"First edit" in x.update)
        with trio.move_on_after(0.3):
            await b.expect(m.SyncUpdate, lambda x: b"Second edit" in x.update)
            pytest.fail("relayed while the commit before it was held: pipelined")
        assert held.calls == 1
        held.release.set()
        got = await b.expect(m.SyncUpdate, lambda x: b"Third edit" in x.update)
        assert b"Second edit" in got.update  # the two that waited, in one frame
        assert all([(await a.expect(m.SyncStatus)).applied for _ in range(3)])
        assert held.calls == 2
        assert "Third edit" in title_of(await pull_update(admin, block.id))


async def test_a_batch_is_acknowledged_in_one_write(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two updates that waited behind a commit are stored together, and their two
    SyncStatus frames leave in one write of the transport, in order after the first's."""
    monkeypatch.setattr(live_connection, "RELAY_BEFORE_COMMIT", True)
    writes: list[list[bytes | str]] = []
    send_many = RawTransport.send_many

    async def recorded(self: RawTransport, frames: Any) -> None:
        frames = list(frames)
        writes.append(frames)
        await send_many(self, frames)

    monkeypatch.setattr(RawTransport, "send_many", recorded)
    heap = await new_heap(admin)
    block = ClientBlock()
    address = f"{heap['id']}:{block.id}"
    async with live_client(server.url) as a, live_client(server.url) as b:
        await a.sync(address, admin.access_token)
        await b.sync(address, admin.access_token)
        held = CountedHeldCommits(server.services.documents.storage, monkeypatch)
        for i, text in enumerate(["First edit", "Second edit", "Third edit"]):
            block.write(text)
            await a.send(m.SyncUpdate(address, block.pending()))
            block.synced = block.doc.get_state()
            if i == 0:
                with trio.fail_after(5):
                    await held.started.wait()
        with trio.fail_after(5):  # the two others wait in the worker's inbox
            while (
                sum(len(w.inbox) for c in server.services.hub.keepalive for w in c.workers.values())
                < 2
            ):
                await trio.sleep(0.01)
        held.release.set()
        assert all([(await a.expect(m.SyncStatus)).applied for _ in range(3)])
        assert held.calls == 2
    acks = m.encode(m.SyncStatus(address, True))
    assert [acks, acks] in writes
