"""A live batch relayed to the others before its commit, whose commit then fails (raises, or
is refused): the room must not go on claiming what storage lacks (``room_resets``). Over real
sockets, both engines: the room goes back to storage (a client joining then gets what storage
holds), every subscriber is asked for the rest with a ``SyncStep1`` of the stored state
vector, and a peer's answer stores the update. A refusal that repeats asks a bounded number
of times. Before the fix the room kept the update, no one was asked, and it was never stored.
"""

from __future__ import annotations

from typing import Any

import pycrdt
import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.errors import Unavailable
from heaper_trio.protocol import messages as m
from heaper_trio.records import CommitResult, CommitStatus
from heaper_trio.services.live import connection as live_connection
from heaper_trio.services.live.room_resets import MAX_RESYNCS

from .live_client import UNCLOSED_SOCKETS, LiveClient, collect_closed_sockets, live_client  # noqa: F401 (autouse)
from .test_live_ws import pull_update, title_of
from .test_sync import ClientBlock, new_heap, push

pytestmark = [pytest.mark.slow, *UNCLOSED_SOCKETS]


class FailingCommits:
    """Storage's commit, failing while ``failing`` is set: ``raises`` as a lost database does
    (once, then it works again), ``conflict`` answers every change as a log that moved."""

    def __init__(self, storage: Any, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
        self.commit = storage.commit_changes
        self.how = how
        self.failing = True
        self.failed = 0
        monkeypatch.setattr(storage, "commit_changes", self.maybe_fail)

    async def maybe_fail(self, changes: Any, *rest: Any) -> Any:
        if not self.failing:
            return await self.commit(changes, *rest)
        self.failed += 1
        if self.how == "raises":
            self.failing = False
            raise Unavailable("the database went away")
        return [CommitResult(c.block_id, CommitStatus.conflict) for c in changes]


class Peer:
    """A Yjs peer on a live client: keeps what it receives, answers the server's step 1."""

    def __init__(self, client: LiveClient, address: str) -> None:
        self.client, self.address, self.doc = client, address, pycrdt.Doc()

    async def join(self, token: str) -> None:
        self.doc.apply_update(await self.client.sync(self.address, token))

    async def receive_update(self) -> bytes:
        got = await self.client.expect(m.SyncUpdate, lambda x: x.address == self.address)
        self.doc.apply_update(got.update)
        return got.update

    @property
    def title(self) -> str:
        return str(self.doc.get("title_v0", type=pycrdt.XmlFragment))

    async def answer(self, step1: m.SyncStep1) -> None:
        diff = self.doc.get_update(step1.state_vector)
        await self.client.send(m.SyncStep2(self.address, diff, reply=True))


async def stored_block(server: RunningServer, admin: HeaperClient) -> tuple[str, ClientBlock]:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Stored")
    assert (await push(admin, block.push_item(heap["id"]))).status_code == 200
    block.synced = block.doc.get_state()
    return f"{heap['id']}:{block.id}", block


@pytest.mark.parametrize("how", ["raises", "conflict"])
async def test_a_relayed_batch_not_stored_is_asked_for_again_and_stored(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setattr(live_connection, "RELAY_BEFORE_COMMIT", True)
    address, block = await stored_block(server, admin)
    token = admin.access_token
    async with (
        live_client(server.url) as a,
        live_client(server.url) as b_client,
        live_client(server.url) as c_client,
    ):
        await a.sync(address, token)
        b = Peer(b_client, address)
        await b.join(token)
        failing = FailingCommits(server.services.documents.storage, monkeypatch, how)
        block.write("Unstored edit")
        await a.send(m.SyncUpdate(address, block.pending()))
        await b.receive_update()
        assert "Unstored edit" in b.title  # relayed first
        if how == "conflict":  # a refusal: the writer is told, as before
            assert not (await a.expect(m.SyncStatus)).applied
        # The room asks b for what storage lacks (b is a Yjs peer: it answers step 1).
        step1 = await b.client.expect(m.SyncStep1, lambda x: x.address == address)
        assert failing.failed >= 1
        failing.failing = False
        stored = title_of(await pull_update(admin, block.id))
        assert "Unstored edit" not in stored
        # A client joining now gets what storage holds, not the unstored edit.
        c = Peer(c_client, address)
        await c.join(token)
        assert c.title == stored
        await b.answer(step1)
        assert (await b.client.expect(m.SyncStatus)).applied
        assert "Unstored edit" in title_of(await pull_update(admin, block.id))
        await c.receive_update()
        assert c.title == title_of(await pull_update(admin, block.id))


async def test_a_batch_refused_every_time_is_asked_for_a_bounded_number_of_times(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live_connection, "RELAY_BEFORE_COMMIT", True)
    address, block = await stored_block(server, admin)
    token = admin.access_token
    async with live_client(server.url) as a, live_client(server.url) as b_client:
        await a.sync(address, token)
        b = Peer(b_client, address)
        await b.join(token)
        FailingCommits(server.services.documents.storage, monkeypatch, "conflict")
        block.write("Never stored")
        await a.send(m.SyncUpdate(address, block.pending()))
        await b.receive_update()
        assert "Never stored" in b.title
        assert not (await a.expect(m.SyncStatus)).applied
        for _ in range(MAX_RESYNCS):  # each answer is refused too, and asked for again
            step1 = await b.client.expect(m.SyncStep1, lambda x: x.address == address)
            await b.answer(step1)
            assert not (await b.client.expect(m.SyncStatus)).applied
        room = server.services.hub.rooms[block.id]
        with trio.fail_after(5):
            while room.resetting or room.unstored <= MAX_RESYNCS:
                await trio.sleep(0.01)
        # Then no more: a round trip on b shows no step 1 was sent to it before the answer.
        seen = len(b.client.seen)
        await b.client.send(m.SyncStep1(address, b"\x00"))
        state = await b.client.expect(m.SyncStep2, lambda x: x.address == address)
        assert not any(isinstance(x, m.SyncStep1) for x in b.client.seen[seen:])
        assert "Never stored" not in title_of(state.update)  # the room holds what storage does
        assert "Never stored" not in title_of(await pull_update(admin, block.id))
