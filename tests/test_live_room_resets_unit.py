"""``room_resets`` driven without sockets: the hub with a storage whose reads the test holds
back, under trio's fake clock. The races here are too narrow to force over a socket."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pycrdt
import trio
import trio.testing

from heaper_trio import crdt
from heaper_trio.records import StoredBlock
from heaper_trio.services.commits import Committed
from heaper_trio.services.live import room_resets
from heaper_trio.services.live.hub import LiveHub
from heaper_trio.services.live.rooms import Room, Subscription


def _update(text: str, base: bytes | None = None) -> bytes:
    d = pycrdt.Doc()
    if base:
        d.apply_update(base)
    d["t"] = t = pycrdt.Text()
    t += text
    return d.get_update()


def _text(doc: crdt.BlockDocument) -> str:
    d = pycrdt.Doc()
    d.apply_update(doc.full_state())
    return str(d.get("t", type=pycrdt.Text))


OLD = _update("old-history")
NEW = _update("restored")
V1 = StoredBlock("b", "h", 1, None, 0, (OLD,), 5, 0, 0)
V2 = StoredBlock("b", "h", 2, None, 0, (NEW,), 6, 0, 0)


class _Storage:
    """The first read (the reset's) waits for ``release`` and answers the old version; the
    later ones (a catch-up's, after a restore) answer the restored one."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = trio.Event()

    async def load_block(self, block_id: str) -> StoredBlock:
        self.calls += 1
        if self.calls == 1:
            await self.release.wait()
            return V1
        return V2


class _Counters:
    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


class _Sink:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send_frame(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True


async def _room(hub: LiveHub) -> tuple[Room, Subscription]:
    room = hub.rooms["b"] = Room("b", "h")
    room.doc = crdt.BlockDocument.load(None, [OLD])
    room.exists, room.last_seq = True, 5
    name = SimpleNamespace(block_id="b", heap_id="h", sync_version=None)
    sub = Subscription(_Sink(), "h:b", name, "u")  # type: ignore[arg-type]
    room.subs.add(sub)
    return room, sub


async def test_a_reset_does_not_swap_back_a_history_a_restore_replaced(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The reset read version 1; a restore (version 2) came in and its catch-up replaced the
    room meanwhile: the reset put the old history back under version 2, which joining clients
    would then have written back to storage over the restore (found by review)."""
    storage = _Storage()
    hub = LiveHub(SimpleNamespace(storage=storage), _Counters())  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        room, sub = await _room(hub)
        relayed = hub.relay(sub, [_update(" unstored", OLD)])
        assert relayed is not None
        room_resets.unstored(hub, relayed)
        await trio.testing.wait_all_tasks_blocked()
        hub.on_commit([Committed("h", "b", "changed", 6, 2, 0, ())])  # the restore
        await trio.testing.wait_all_tasks_blocked()
        assert (room.sync_version, _text(room.doc)) == (2, "restored")  # type: ignore[arg-type]
        storage.release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert (room.sync_version, _text(room.doc)) == (2, "restored")  # type: ignore[arg-type]
        assert not room.resetting
        nursery.cancel_scope.cancel()


class _PlainStorage:
    def __init__(self) -> None:
        self.reads: list[float] = []

    async def load_block(self, block_id: str) -> StoredBlock:
        self.reads.append(trio.current_time())
        return V1


async def test_resets_of_one_room_start_at_most_once_per_interval(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The count of requests starts again at every commit, so a refusal alternated with good
    edits would otherwise make each refusal a document read and a request to every peer."""
    storage = _PlainStorage()
    hub = LiveHub(SimpleNamespace(storage=storage), _Counters())  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        room, sub = await _room(hub)
        for i in range(4):
            relayed = hub.relay(sub, [_update(f" x{i}", OLD)])
            assert relayed is not None
            room_resets.unstored(hub, relayed)
            await trio.testing.wait_all_tasks_blocked()
            while room.resetting:
                await trio.sleep(0.01)
            room.unstored = 0  # as a commit of the room between refusals leaves it
        gaps = [b - a for a, b in zip(storage.reads, storage.reads[1:], strict=False)]
        assert len(storage.reads) == 4
        assert all(g >= room_resets.RESET_EVERY_S for g in gaps), gaps
        nursery.cancel_scope.cancel()
