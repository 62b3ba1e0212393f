"""A subscriber naming a newer ``sync_version`` than its room's (``room_rewrites.VersionWatch``)
is answered once storage has been checked, however busy the room: it waits for one read begun
after it asked, not for the hub's catch-up to end (which, while another process commits more
often than one read takes, never does), and never longer than ``WAIT_S``. A version storage
does not hold costs one row read and starts no reread of the document. A hub with a fake
storage, on trio's autojump clock; ``test_live_remote_rewrites`` has it over a real socket."""

from __future__ import annotations

import types
from typing import Any

import trio
import trio.testing

from heaper_trio import crdt
from heaper_trio.services.commits import Committed
from heaper_trio.services.diagnostics import RealtimeCounters
from heaper_trio.services.live.hub import LiveHub
from heaper_trio.services.live.room_rewrites import WAIT_S, VersionWatch
from heaper_trio.services.live.rooms import Room

READ_S = 0.05  # one read of a big block
COMMIT_EVERY_S = 0.02  # another process's commits: more often than one read


class Storage:
    def __init__(self, version: int) -> None:
        self.version = version  # the block's sync_version in storage
        self.seq = 0
        self.loads = 0
        self.rows = 0
        self.stuck = False

    async def load_block(self, block_id: str) -> Any:
        self.loads += 1
        await trio.sleep(READ_S)
        if self.stuck:
            await trio.sleep_forever()
        return types.SimpleNamespace(
            sync_version=self.version, last_seq=self.seq, snapshot=None, updates=(), heap_id="h"
        )

    async def get_blocks(self, block_ids: list[str]) -> dict[str, Any]:
        self.rows += 1
        await trio.sleep(0.001)
        return {b: types.SimpleNamespace(id=b, sync_version=self.version) for b in block_ids}


async def _scene(storage: Storage, *, busy: bool, check: Any) -> None:
    hub = LiveHub(types.SimpleNamespace(storage=storage), RealtimeCounters())  # type: ignore[arg-type]
    async with trio.open_nursery() as n:
        await n.start(hub.run)
        room = Room("b", "h")
        room.doc, room.exists = crdt.BlockDocument.load(None, ()), True
        hub.rooms["b"] = room

        async def writer() -> None:  # another process, at version 1 until its restore
            while True:
                storage.seq += 1
                hub.on_remote(Committed("h", "b", "changed", seq=storage.seq, sync_version=1))
                await trio.sleep(COMMIT_EVERY_S)

        if busy:
            n.start_soon(writer)
            await trio.sleep(0.1)
            assert room.catching_up  # the room rereads per commit already
        with trio.fail_after(WAIT_S * 2):  # a starved watch fails, rather than hangs
            await check(hub, room)
        n.cancel_scope.cancel()


async def test_a_stored_newer_version_is_taken_in_however_busy_the_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = Storage(version=1)

    async def check(hub: LiveHub, room: Room) -> None:
        storage.version = 2  # restored elsewhere just now, the room has not heard of it
        t0 = trio.current_time()
        await VersionWatch().catch_up_to(hub, room, 2)
        # one read under way when asked, one more begun after: never the whole loop
        assert trio.current_time() - t0 <= 2 * READ_S + 0.01
        assert room.sync_version == 2 and room.catching_up  # the loop itself goes on

    await _scene(storage, busy=True, check=check)


async def test_a_version_storage_lacks_costs_one_row_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = Storage(version=1)

    async def check(hub: LiveHub, room: Room) -> None:
        watch = VersionWatch()
        for _ in range(3):  # every message of the subscriber
            await watch.catch_up_to(hub, room, 7)
        assert (storage.rows, storage.loads) == (1, 0)
        assert not room.catching_up and room.sync_version == 1

    await _scene(storage, busy=False, check=check)

    storage = Storage(version=1)

    async def check_busy(hub: LiveHub, room: Room) -> None:
        t0 = trio.current_time()
        await VersionWatch().catch_up_to(hub, room, 7)
        assert trio.current_time() - t0 < READ_S  # not even the read under way

    await _scene(storage, busy=True, check=check_busy)


async def test_the_wait_is_bounded(autojump_clock: trio.testing.MockClock) -> None:
    storage = Storage(version=2)
    storage.stuck = True  # the document's read never ends

    async def check(hub: LiveHub, room: Room) -> None:
        t0 = trio.current_time()
        await VersionWatch().catch_up_to(hub, room, 2)
        assert trio.current_time() - t0 == WAIT_S
        assert room.sync_version == 1  # answered with what the room holds

    await _scene(storage, busy=False, check=check)
