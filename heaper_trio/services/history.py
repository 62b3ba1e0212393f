"""Block history: list it, read the document as of a point in it, restore that point, compact now.

The history is kept apart from the load path: compaction (every ``COMPACT_EVERY`` log rows, or
``POST /api/ydoc/compact``) moves the log rows it folds into the snapshot to ``block_history``
in the same transaction, so loading a block reads the snapshot and at most a hundred rows
whatever its age, and a push pays nothing for history until it compacts. The history is those
rows plus the live log rows after the snapshot, one sequence of ``seq``. Thinning
(``services.history_thinning``) merges old rows, so versions exist only at the boundaries of
the rows kept: the document "as of seq S" is the one at the latest kept boundary at or before S,
and the answer says which seq that is.

A restore is not a CRDT continuation: the block's document is replaced by the old state, its
``sync_version`` goes up by one, and clients on the old version are told so (full state on
pull, ``version_mismatch`` on push, ``sync_version_mismatch`` on a live connection). The
block keeps its current trash state: restoring a version of a trashed block leaves it in the
trash, and restoring a version from before a block was trashed does not take it out.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from heaper_trio import crdt
from heaper_trio.errors import BadRequest, Conflict, HeaperError, NotFound, Unprocessable
from heaper_trio.records import BlockChange, CommitStatus, StoredBlock, User
from heaper_trio.records.changes import ChangeKind
from heaper_trio.records.history import HistoryRow
from heaper_trio.services import history_thinning as thinning
from heaper_trio.services.commits import Committed
from heaper_trio.services.push import projected

if TYPE_CHECKING:
    from heaper_trio.services.documents import DocumentService

log = logging.getLogger(__name__)
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_ATTEMPTS = 5
MAINTAIN_EVERY_S = 3600
MAINTAIN_BATCH = 100


class VersionGone(HeaperError):
    """The history that version was made of is no longer kept (thinned or past retention)."""

    status = 410
    code = "version_gone"


@dataclass(frozen=True)
class HistoryPage:
    block_id: str
    sync_version: int
    last_seq: int
    compacted_through: int  # the snapshot covers the rows up to here (they are in the history)
    rows: list[HistoryRow]  # newest first
    next_before_seq: int | None  # ask with this before_seq for the next (older) page
    state: bytes
    state_vector: bytes


@dataclass(frozen=True)
class Version:
    block_id: str
    seq: int  # the kept point used: at or before the one asked for
    sync_version: int
    created_at: int
    state: bytes
    title: str
    text: str


class HistoryService:
    """Lives on ``DocumentService.history``; shares its storage, block locks and cache."""

    def __init__(self, documents: DocumentService) -> None:
        self.documents = documents
        self.storage = documents.storage

    async def _owned(self, user: User, block_id: str) -> StoredBlock:
        stored = await self.storage.load_block(block_id)
        heap = await self.storage.get_heap(stored.heap_id) if stored else None
        if stored is None or heap is None or heap.owner_id != user.id:
            raise NotFound("no such block in your heaps", code="block_not_found")
        return stored

    # -- reading ------------------------------------------------------------------------------
    async def page(
        self,
        user: User,
        block_id: str,
        before_seq: int | None = None,
        limit: int | None = None,
        with_data: bool = False,
    ) -> HistoryPage:
        stored = await self._owned(user, block_id)
        limit = DEFAULT_LIMIT if limit is None else limit
        if not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(f"limit must be 1 to {MAX_LIMIT}", code="invalid_value")
        if before_seq is not None and before_seq < 1:
            raise BadRequest("before_seq must be at least 1", code="invalid_value")
        before = stored.last_seq + 1 if before_seq is None else min(before_seq, stored.last_seq + 1)
        rows = await self.storage.history_page(block_id, before, limit + 1, with_data)
        more = len(rows) > limit
        rows = rows[:limit]
        doc = crdt.BlockDocument.load(stored.snapshot, stored.updates)
        return HistoryPage(
            block_id,
            stored.sync_version,
            stored.last_seq,
            stored.snapshot_seq,
            rows,
            rows[-1].seq if more and rows else None,
            doc.full_state(),
            doc.state_vector(),
        )

    async def version(self, user: User, block_id: str, seq: int) -> Version:
        stored = await self._owned(user, block_id)
        return await self._version(stored, seq)

    async def _version(self, stored: StoredBlock, seq: int) -> Version:
        if not 1 <= seq <= stored.last_seq:
            raise Unprocessable(
                f"seq must be 1 to {stored.last_seq}, the block's last change",
                code="seq_out_of_range",
            )
        rows = await self.storage.version_rows(stored.id, seq)
        if not rows or not (rows[0].base or rows[0].first_seq == 1):
            raise VersionGone(
                "this version is no longer kept: history is thinned with age and dropped after "
                "history_retention_days"
            )
        doc = crdt.BlockDocument.load(None, [r.data or b"" for r in rows])
        projection = projected(doc)
        last = rows[-1]
        return Version(
            stored.id,
            last.seq,
            last.sync_version,
            last.created_at,
            doc.full_state(),
            projection.title,
            projection.text,
        )

    # -- writing ------------------------------------------------------------------------------
    async def restore(self, user: User, block_id: str, seq: int) -> int:
        """Replace the document with its version as of ``seq``; the new sync_version."""
        documents = self.documents
        await self._owned(user, block_id)
        async with AsyncExitStack() as stack:
            await documents.locks.hold_all(stack, [block_id])
            documents.cache.evict(block_id)  # its document is about to be replaced
            for _ in range(MAX_ATTEMPTS):
                stored = await self._owned(user, block_id)
                version = await self._version(stored, seq)
                current = crdt.BlockDocument.load(stored.snapshot, stored.updates)
                doc = crdt.BlockDocument.load(None, [version.state])
                if doc.deleted_at() != current.deleted_at():  # the trash state stays as it is
                    doc.set_meta("deleted_at", current.deleted_at())
                state = doc.full_state()
                change = BlockChange(
                    block_id,
                    stored.heap_id,
                    user.id,
                    stored.last_seq,
                    (state,),
                    projected(doc),
                    doc.state_vector(),
                    doc.size,
                    (doc.snapshot(), stored.last_seq + 1),
                )
                result = await self.storage.restore_block(change, documents._now())
                if result.status is CommitStatus.conflict:
                    continue
                documents.cache.evict(block_id)
                documents.announce(
                    [
                        Committed(
                            stored.heap_id,
                            block_id,
                            ChangeKind.changed,
                            result.last_seq,
                            result.sync_version,
                            result.updated_at,
                        )
                    ]
                )
                return result.sync_version
        raise Conflict("the block kept changing; try again", code="write_conflict")

    async def compact(self, user: User, block_id: str) -> int:
        """Snapshot the block now and move its log to the history; how many rows moved."""
        documents = self.documents
        await self._owned(user, block_id)
        async with AsyncExitStack() as stack:
            await documents.locks.hold_all(stack, [block_id])
            for _ in range(MAX_ATTEMPTS):
                stored = await self._owned(user, block_id)
                if not stored.updates:
                    return 0
                doc = crdt.BlockDocument.load(stored.snapshot, stored.updates)
                if doc.has_pending():  # the snapshot would lose the pending parts
                    return 0
                moved = await self.storage.compact_block(block_id, stored.last_seq, doc.snapshot())
                if moved is None:
                    continue
                documents.cache.evict(block_id)  # its count of log rows is stale
                break
            else:
                raise Conflict("the block kept changing; try again", code="write_conflict")
        try:  # what just moved may be old enough to thin; the compaction stands regardless
            await self.thin_block(block_id, documents._now())
        except Exception:
            log.exception("thinning the history of %s failed", block_id)
        return moved

    # -- thinning ------------------------------------------------------------------------------
    async def thin_block(self, block_id: str, now_ms: int) -> bool:
        """Thin one block's history as of ``now_ms``; whether anything changed."""
        cuts = thinning.Cuts.at(now_ms, self.documents.settings.history_retention_days)
        plan = thinning.plan(await self.storage.old_history(block_id, cuts.day), cuts)
        if not plan.spans:
            return False
        return await self.storage.replace_history(block_id, plan.spans, plan.rows)

    async def maintain(self, now_ms: int | None = None) -> int:
        """One thinning pass over every block whose history needs it; how many changed."""
        now_ms = self.documents._now() if now_ms is None else now_ms
        cuts = thinning.Cuts.at(now_ms, self.documents.settings.history_retention_days)
        done, seen = 0, set()
        while True:
            ids = await self.storage.thin_candidates(cuts.day, cuts.week, cuts.gone, MAINTAIN_BATCH)
            todo = [b for b in ids if b not in seen]
            if not todo:
                return done
            for block_id in todo:
                seen.add(block_id)
                try:
                    done += await self.thin_block(block_id, now_ms)
                except Exception:  # one bad block must not stop the others
                    log.exception("thinning the history of %s failed", block_id)

    async def maintain_forever(self) -> None:
        """Housekeeping task: a thinning pass every hour (``open_services`` starts it)."""
        while True:
            try:
                thinned = await self.maintain()
                if thinned:
                    log.debug("thinned the history of %d blocks", thinned)
            except Exception:
                log.exception("history maintenance failed")
            await trio.sleep(MAINTAIN_EVERY_S)
