"""A room's document and version as storage moves them under it (issue 12, left from session
10): a block restored, purged or its heap deleted, here or by another process.

A room learns of changes by announcement, and another process's announcement arrives some
time after its commit. Two things must not depend on that delay:

- **A client ahead of the room.** A client that read the block's new ``sync_version`` over HTTP
  (after a restore elsewhere) and opens ``:vN`` before the room heard of it would be called
  stale with the old version, served the old document and have its edits refused. Hocuspocus
  loads a document from storage when it has none; here the room has one, so it rereads
  storage first (the hub's catch-up, shared with the announcements') and answers from what it
  reads. Only a version above the room's does this, and at most once per room version per
  subscriber, so a client naming a version that does not exist costs one read, not one per
  message.
- **A block gone.** A purge, or the heap's deletion, stops the room relaying edits to the
  other subscribers before their commit (which storage refuses), whether it was done here
  (``on_commit``) or by another process (``on_remote``, which used to reread storage, find
  nothing and leave the room relaying).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from heaper_trio.records.changes import ChangeKind
from heaper_trio.services.commits import Committed
from heaper_trio.services.live.rooms import Room

if TYPE_CHECKING:
    from heaper_trio.services.live.hub import LiveHub


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


class VersionWatch:
    """What one subscriber asked of its room: the room version it last reread storage for."""

    __slots__ = ("reread_at",)

    def __init__(self) -> None:
        self.reread_at: int | None = None

    async def catch_up_to(self, hub: LiveHub, room: Room, version: int | None) -> None:
        """Reread storage before judging ``version`` against the room, if it is newer than
        the room's: the room may not have heard of a restore yet. Returns once a read begun
        after this call has been taken in (the room replaced, if storage has a newer one)."""
        if (
            version is None
            or room.doc is None
            or not room.exists
            or version <= room.sync_version
            or self.reread_at == room.sync_version
        ):
            return
        self.reread_at = room.sync_version
        hub._start_catch_up(room)  # or, if one runs, it reads once more before it ends
        done = room.caught_up
        if room.catching_up and done is not None:
            await done.wait()
