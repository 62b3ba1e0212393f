"""Issue 12, the fan-out half of the live path (both engines, real server): each frame is
encoded once for every subscriber of an address; with ``RELAY_BEFORE_COMMIT`` a live edit
reaches the other subscribers before its commit and only the writer's ``SyncStatus`` waits for
it (the default, chosen by measurement); a refused batch is never relayed."""

from __future__ import annotations

from typing import Any

import pycrdt
import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.protocol import frames
from heaper_trio.protocol import messages as m
from heaper_trio.protocol.names import parse_document_name
from heaper_trio.services.live import connection as live_connection
from heaper_trio.services.live import hub as live_hub
from heaper_trio.services.live.hub import Subscription

from .live_client import UNCLOSED_SOCKETS, collect_closed_sockets, live_client  # noqa: F401 (autouse)
from .test_live_ws import title_of
from .test_sync import ClientBlock, new_heap, push

pytestmark = [
    pytest.mark.slow,
    *UNCLOSED_SOCKETS,
]


class RecordingSink:
    """A connection as the hub sees it, keeping every frame object it was handed."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.arrived = trio.Event()

    def send_frame(self, frame: bytes) -> bool:
        self.frames.append(frame)
        self.arrived.set()
        return True


def test_sync_step2_and_stateless_bodies_are_the_encoded_messages() -> None:
    prefix = frames.address_prefix("h:b:v2")
    assert prefix + frames.sync_step2_body(b"\x01\x02") == m.encode(
        m.SyncStep2("h:b:v2", b"\x01\x02")
    )
    assert prefix + frames.stateless_body('{"type":"é"}') == m.encode(
        m.Stateless("h:b:v2", '{"type":"é"}')
    )


async def test_one_frame_object_per_address_for_every_subscriber(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Shared")
    assert (await push(admin, block.push_item(heap["id"]))).json()["blocks"][0]["status"] == (
        "created"
    )
    block.synced = block.doc.get_state()
    hub = server.services.hub
    plain, session = f"{heap['id']}:{block.id}", f"{heap['id']}:{block.id}\x00s2"
    sinks = [RecordingSink() for _ in range(4)]
    subs = []
    for sink, address in zip(sinks, [plain, plain, plain, session], strict=True):
        name = parse_document_name(address)
        assert name is not None
        sub = Subscription(sink, address, name, "presence-owner")
        await hub.join(sub)
        subs.append(sub)
    try:
        block.write("Shared", "more")
        await push(admin, block.push_item(heap["id"]))
        with trio.fail_after(5):
            for sink in sinks:
                await sink.arrived.wait()
        first = [sink.frames[0] for sink in sinks]
        assert first[0] is first[1] is first[2]  # one object for one address
        assert first[3] is not first[0]
        assert m.decode_server_frame(first[3]) == m.SyncUpdate(
            session,
            m.decode_server_frame(first[0]).update,  # type: ignore[union-attr]
        )
        assert b"more" in first[0]  # the edit (Yjs keeps inserted strings verbatim)
    finally:
        for sub in subs:
            hub.leave(sub)


class HeldCommits:
    """Storage's commit, held until released: what happens before a live batch is durable."""

    def __init__(self, storage: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.storage = storage
        self.commit = storage.commit_changes
        self.started = trio.Event()
        self.release = trio.Event()
        monkeypatch.setattr(storage, "commit_changes", self.held)

    async def held(self, *args: Any) -> Any:
        self.started.set()
        await self.release.wait()
        return await self.commit(*args)


async def test_a_live_edit_reaches_the_others_before_its_commit_and_once(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live_connection, "RELAY_BEFORE_COMMIT", True)
    heap = await new_heap(admin)
    block = ClientBlock()
    address = f"{heap['id']}:{block.id}"
    async with live_client(server.url) as a, live_client(server.url) as b:
        await a.sync(address, admin.access_token)
        await b.sync(address, admin.access_token)
        held = HeldCommits(server.services.documents.storage, monkeypatch)
        block.write("Before the commit")
        await a.send(m.SyncUpdate(address, block.pending()))
        block.synced = block.doc.get_state()
        with trio.fail_after(5):
            await held.started.wait()
        got = await b.expect(m.SyncUpdate)  # while the commit is still held
        assert "Before the commit" in title_of(got.update)
        assert not any(isinstance(x, m.SyncStatus) for x in a.seen)  # not acknowledged yet
        held.release.set()
        assert (await a.expect(m.SyncStatus)).applied
        # The commit did not send it again: b's next update is the next edit.
        block.meta["next"] = "second"
        await a.send(m.SyncUpdate(address, block.pending()))
        assert (await a.expect(m.SyncStatus)).applied
        nxt = await b.expect(m.SyncUpdate)
        assert b"second" in nxt.update and b"Before the commit" not in nxt.update


@pytest.mark.parametrize("relay", [True, False])
async def test_refused_batches_are_not_relayed(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch, relay: bool
) -> None:
    monkeypatch.setattr(live_connection, "RELAY_BEFORE_COMMIT", relay)
    from .test_edge_versions import raise_version

    heap = await new_heap(admin)
    block, old = ClientBlock(), ClientBlock()
    block.write("Stored")
    old.write("Old")
    await push(admin, block.push_item(heap["id"]), old.push_item(heap["id"]))
    block.synced, old.synced = block.doc.get_state(), old.doc.get_state()
    await raise_version(server, old.id, 2)  # as a restore does (no room is open yet)
    address = f"{heap['id']}:{block.id}"
    async with live_client(server.url) as a, live_client(server.url) as b:
        await a.sync(address, admin.access_token)
        await b.sync(address, admin.access_token)
        # not one Yjs update (trailing bytes), or no update at all: refused, never sent to b
        block.write("Stored", "bad")
        await a.send(m.SyncUpdate(address, block.pending() + b"\x00"))
        assert not (await a.expect(m.SyncStatus)).applied
        await a.send(m.SyncUpdate(address, b"\xff\xff\xff"))
        assert not (await a.expect(m.SyncStatus)).applied
        edit = ClientBlock(block.id)
        edit.doc.apply_update(block.doc.get_update(b"\x00"))  # the refused edit too
        edit.synced = edit.doc.get_state()
        edit.meta["color"] = "blue"  # what is sent: this alone
        await a.send(m.SyncUpdate(address, edit.pending()))
        assert (await a.expect(m.SyncStatus)).applied
        # b's first update carries nothing of the refused batches
        first = await b.expect(m.SyncUpdate)
        doc = pycrdt.Doc()
        doc.apply_update(first.update)
        assert "bad" not in str(doc.get("content_v0", type=pycrdt.XmlFragment))
        assert doc.get("meta_v0", type=pycrdt.Map).get("color") == "blue"

        # an address naming an old version: refused before anything is relayed
        stale, current = f"{heap['id']}:{old.id}:v1", f"{heap['id']}:{old.id}:v2"
        await a.sync(stale, admin.access_token)
        await a.expect(m.Stateless, lambda x: x.address == stale)  # sync_version_mismatch
        await b.sync(current, admin.access_token)
        old.meta["color"] = "red"
        await a.send(m.SyncUpdate(stale, old.pending()))
        assert not (await a.expect(m.SyncStatus, lambda x: x.address == stale)).applied
        # b hears the presence sent after it, and no update before it
        entry = m.AwarenessEntry(3, 1, "{}")
        await a.send(m.Awareness(stale, m.encode_awareness([entry])))
        await b.expect(m.Awareness, lambda x: x.address == current)
        assert not any(isinstance(x, m.SyncUpdate) and x.address == current for x in b.seen)


async def test_a_relayed_batch_goes_out_at_once_and_writers_together_are_coalesced(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relayed from the worker's task, without waiting for the flusher's turn; a second
    writer relaying within ``DIRECT_EVERY_S`` goes through the flusher (merged with what
    else waits), never lost."""
    monkeypatch.setattr(live_hub, "DIRECT_EVERY_S", 60.0)  # "at the same moment", however slow
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Shared")
    await push(admin, block.push_item(heap["id"]))
    block.synced = block.doc.get_state()
    hub = server.services.hub
    address = f"{heap['id']}:{block.id}"
    name = parse_document_name(address)
    assert name is not None
    sinks = [RecordingSink() for _ in range(3)]
    subs = [Subscription(sink, address, name, "u") for sink in sinks]
    for sub in subs:
        await hub.join(sub)
    try:
        block.write("Shared", "first")
        first = block.pending()
        block.synced = block.doc.get_state()
        block.meta["second"] = "yes"
        second = block.pending()
        assert hub.relay(subs[0], [first]) is not None
        assert len(sinks[1].frames) == 1 and not sinks[0].frames  # no checkpoint in between
        assert hub.relay(subs[1], [second]) is not None
        assert len(sinks[2].frames) == 1  # within DIRECT_EVERY_S: the flusher's
        with trio.fail_after(5):
            while len(sinks[2].frames) < 2:
                await trio.sleep(0.001)
        assert b"second" in sinks[2].frames[1] and sinks[0].frames and len(sinks[1].frames) == 1
    finally:
        for sub in subs:
            hub.leave(sub)
