"""A push into a document this process holds, committed with no read ahead of the commit.

The checked way (``DocumentService._push_items``) first reads the heap's owner and the blocks'
tombstones (``Storage.push_reads``): on SQLite a reader thread's round trip, whose hop and
wake-ups cost the event loop more than the reads themselves. For a block in the document
cache, the commit checks both in its own transaction instead (``BlockChange.heap_owner``; a
purged block has no row, so its log position no longer matches). Anything the commit refuses,
and anything but a plain change (not cached, another heap, a stale sync version, an update
that does not apply, no change at all), goes the checked way, which reads afresh and answers
as before: a non-owner, a deleted heap or a purged block is refused all the same, with the
same code. A non-owner's update applied here in memory is never kept: a refused commit leaves
the document out of the cache, and the checked way rebuilds it from storage.

Used by live edits (``live_push``) and by HTTP pushes of one block (``DocumentService.push``).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from heaper_trio import crdt
from heaper_trio.records import User
from heaper_trio.services.commits import Committed
from heaper_trio.services.push import Prepared, PushBatch, Settled

if TYPE_CHECKING:
    from heaper_trio.services.documents import DocumentService


async def push_unchecked(
    docs: DocumentService, user: User, batch: PushBatch, origin: object
) -> Settled | None:
    """Commit a cached document's change with no read ahead; None: take the checked way
    (nothing was stored). ``batch.heap_owner`` must be ``user.id``: the commit checks it."""
    assert batch.heap_owner == user.id
    async with AsyncExitStack() as stack:
        await docs.locks.hold_all(stack, [batch.block_id])
        base = docs.cache.take(batch.block_id)
        if base is None:
            return None
        if base.heap_id != batch.heap_id or (
            batch.sync_version is not None and batch.sync_version != base.sync_version
        ):
            docs.cache.put(batch.block_id, base)
            return None
        doc = base.doc
        was_deleted = base.was_deleted()
        changed = False
        try:
            for update in batch.updates:
                changed = doc.apply(update) or changed
        except crdt.InvalidUpdate:  # the document may hold part of it: not cached again
            return None
        if not changed:
            docs.cache.put(batch.block_id, base)
            return None
        done: dict[int, Settled] = {}
        committed: dict[int, Committed] = {}
        prepared = Prepared(batch, doc, base, True, was_deleted)
        if await docs._commit(user, [prepared], done, committed):
            return None  # refused (log moved, heap gone or not the user's): not cached
        await docs.settle(committed, done, origin)
        return done[batch.index]
