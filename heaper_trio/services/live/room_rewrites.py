"""A room's document and version as storage moves them under it (issue 12, left from session
10): a block restored, purged or its heap deleted, here or by another process.

A room learns of changes by announcement, and another process's announcement arrives some
time after its commit. Two things must not depend on that delay:

- **A client ahead of the room.** A client that read the block's new ``sync_version`` over HTTP
  (after a restore elsewhere) and opens ``:vN`` before the room heard of it would be called
  stale with the old version, served the old document and have its edits refused. Hocuspocus
  loads a document from storage when it has none; here the room has one, so it checks
  storage first (the block's row) and, if storage holds the newer version, has the hub's
  catch-up read it in before it answers. Only a version above the room's does this, and at
  most once per room version per subscriber, so a client naming a version that does not
  exist costs one row read, not one per message, and no reread of the document.
- **A block gone.** A purge, or the heap's deletion, stops the room relaying edits to the
  other subscribers before their commit (which storage refuses), whether it was done here
  (``on_commit``) or by another process (``on_remote``, which used to reread storage, find
  nothing and leave the room relaying).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import trio

from heaper_trio.records.changes import ChangeKind
from heaper_trio.services.commits import Committed
from heaper_trio.services.live.rooms import Room

if TYPE_CHECKING:
    from heaper_trio.services.live.hub import LiveHub

WAIT_S = 10.0  # for the room to take in a newer version storage holds (one document read)


def removed(rooms: Mapping[str, Room], c: Committed) -> bool:
    """Mark the rooms a purge or heap deletion removed; whether ``c`` was one (then nothing
    more is done with it: it carries no update, and storage holds nothing to reread)."""
    if c.kind == ChangeKind.purged:
        room = rooms.get(c.block_id)
        if room is not None:
            room.exists, room.purged = False, True
        return True
    if c.kind == ChangeKind.heap_deleted:
        for room in list(rooms.values()):
            if room.heap_id == c.heap_id:
                room.exists, room.purged = False, True
        return True
    return False


def read_taken_in(room: Room) -> None:
    """The catch-up's latest read of storage is in the room (or the catch-up ended): wake
    whoever waits for it (``VersionWatch``)."""
    room.reads_done = room.reads_begun
    if room.read_done is not None:
        room.read_done.set()
        room.read_done = None


class VersionWatch:
    """What one subscriber asked of its room: the room version it last checked storage for."""

    __slots__ = ("reread_at",)

    def __init__(self) -> None:
        self.reread_at: int | None = None

    async def catch_up_to(self, hub: LiveHub, room: Room, version: int | None) -> None:
        """Check storage before judging ``version`` against the room, if it is newer than the
        room's: the room may not have heard of a restore yet. Callers test ``version >
        room.sync_version`` first (the check costs each message nothing else).

        The check reads the block's row, not its document: a version storage does not hold
        (made up, or not yet) costs that one read per room version per subscriber, and
        starts no catch-up (which, under a stream of another process's commits, rereads the
        whole document per commit). A newer version stored starts one, and this returns once
        a read of it begun after the check has been taken in (the room replaced), or after
        ``WAIT_S`` (then the room answers with what it holds, as before this watch)."""
        if (
            version is None
            or room.doc is None
            or not room.exists
            or version <= room.sync_version
            or self.reread_at == room.sync_version
        ):
            return
        self.reread_at = room.sync_version
        with trio.move_on_after(WAIT_S):
            found = await hub.storage.get_blocks([room.block_id])
            record = found.get(room.block_id)
            if record is None or record.sync_version <= room.sync_version:
                return
            hub.start_catch_up(room)  # or, if one runs, it reads once more before it ends
            wanted = room.reads_begun + 1
            while room.catching_up and room.reads_done < wanted:
                if room.read_done is None:
                    room.read_done = trio.Event()
                await room.read_done.wait()
