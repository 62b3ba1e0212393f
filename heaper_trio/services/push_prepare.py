"""A push's blocks taken from the cache or storage and the pushed updates applied, in memory.

Moved out of ``documents`` (which other work edits too) when the first read of a push became
one: the heap owners and the tombstones come from ``Storage.push_reads`` in one round trip
(one statement for all concurrent pushes on PostgreSQL, one reader job on SQLite), and the
first attempt prepares against those tombstones. They are read before the blocks' locks are
held, where they used to be read after: a block purged in between is then still refused, as
storage refuses to create a tombstoned block (a write conflict), and the retry reads the
tombstones again and answers ``deleted``.
"""

from __future__ import annotations

from typing import NamedTuple

from heaper_trio import crdt
from heaper_trio.records import StoredBlock
from heaper_trio.services.doc_cache import DocumentBase, DocumentCache
from heaper_trio.services.push import Prepared, PushBatch
from heaper_trio.services.sync_types import PushOutcome, PushStatus
from heaper_trio.storage.base import Storage

Gone = dict[str, tuple[str, int]]


class First(NamedTuple):
    """What a push reads before it takes the blocks' locks."""

    owners: dict[str, str]  # owner id by heap id
    gone: Gone | None  # the blocks' tombstones (None: not read)
    loaded: dict[str, StoredBlock | None] | None  # the blocks the cache lacked (None: none)


async def first_reads(cache: DocumentCache, storage: Storage, batches: list[PushBatch]) -> First:
    """The owners of the batches' heaps, the blocks' tombstones and the blocks the cache lacks,
    in one read (gathered with concurrent pushes on PostgreSQL). A block loaded here may be
    stale by the time its lock is held: a commit of this process since is in the cache, taken
    first; one of another process makes the commit conflict, and the retry reads again."""
    if not batches:
        return First({}, None, None)
    lacking = sorted({b.block_id for b in batches if not cache.holds(b.block_id)})
    owners, gone, loaded = await storage.push_reads(
        sorted({b.heap_id for b in batches}), [b.block_id for b in batches], lacking
    )
    return First(owners, gone, {i: loaded.get(i) for i in lacking} if lacking else None)


async def prepare(
    cache: DocumentCache, storage: Storage, batches: list[PushBatch], first: First | None
) -> list[Prepared | PushOutcome]:
    """Take each block's document (cached, or rebuilt from storage) and apply the pushed
    updates to it, in memory; or refuse the batch. ``first``: what the push read already
    (its first attempt); None reads again."""
    gone = first.gone if first is not None else None
    if gone is None:
        gone = await storage.tombstones([b.block_id for b in batches])
    taken = [None if b.block_id in gone else cache.take(b.block_id) for b in batches]
    missing = [b.block_id for b, t in zip(batches, taken, strict=True) if t is None]
    missing = [i for i in missing if i not in gone]
    loaded: dict[str, StoredBlock | None] | None = first.loaded if first is not None else None
    if loaded is not None and not set(missing) <= set(loaded):
        loaded = None  # a block cached then is not now (evicted meanwhile): read them again
    if loaded is None and len(missing) > 1:
        # Several blocks the cache lacks (a push of many, after a restart): one read for all
        loaded = dict.fromkeys(missing)
        loaded.update(await storage.load_blocks(missing))
    return [
        await prepare_one(cache, storage, b, gone, t, loaded)
        for b, t in zip(batches, taken, strict=True)
    ]


async def prepare_one(
    cache: DocumentCache,
    storage: Storage,
    batch: PushBatch,
    gone: Gone,
    cached: DocumentBase | None,
    loaded: dict[str, StoredBlock | None] | None,
) -> Prepared | PushOutcome:
    """``cached``: the block's base taken from the cache; ``loaded``: the blocks read for the
    whole push (None: read this one now)."""
    if batch.block_id in gone:
        if gone[batch.block_id][0] != batch.heap_id:
            # "deleted" would tell that this id was another heap's (another user's)
            return batch.refused(PushStatus.forbidden, "block_in_other_heap")
        cache.evict(batch.block_id)
        return batch.refused(PushStatus.deleted, "block_deleted")
    try:
        base = cached or await load_base(storage, batch.block_id, loaded)
        if (
            cached is not None
            and batch.sync_version is not None
            and batch.sync_version != cached.sync_version
        ):  # another process may have restored the block: its version is the one to judge
            base = await load_base(storage, batch.block_id)
    except crdt.InvalidUpdate as e:  # a stored log that no longer loads
        return batch.refused(PushStatus.invalid, e.code)
    if base is not None and base.heap_id != batch.heap_id:
        return batch.refused(PushStatus.forbidden, "block_in_other_heap")
    if (
        base is not None
        and batch.sync_version is not None
        and batch.sync_version != base.sync_version
    ):
        cache.put(batch.block_id, base)
        return PushOutcome(
            batch.block_id,
            PushStatus.version_mismatch,
            base.sync_version,
            "sync_version_mismatch",
        )
    doc = base.doc if base is not None else crdt.BlockDocument()
    try:
        was_deleted = base is not None and base.was_deleted()
        changed = base is None
        for update in batch.updates:
            changed = doc.apply(update) or changed
    except crdt.InvalidUpdate as e:
        # the document may hold part of the batch: not cached again
        return batch.refused(PushStatus.invalid, e.code)
    return Prepared(batch, doc, base, changed, was_deleted)


async def load_base(
    storage: Storage, block_id: str, loaded: dict[str, StoredBlock | None] | None = None
) -> DocumentBase | None:
    stored = loaded.get(block_id) if loaded is not None else await storage.load_block(block_id)
    if stored is None:
        return None
    doc = crdt.BlockDocument.load(stored.snapshot, stored.updates)
    size = len(stored.snapshot or b"") + sum(len(u) for u in stored.updates)
    return DocumentBase(
        doc, stored.heap_id, stored.last_seq, len(stored.updates), stored.sync_version, size
    )
