"""Block documents: HTTP sync (push, pull, delta), block reads, heap creation.

The Yjs document is the source of truth; storage keeps an append-only log per block and the
projections (title, text, relations, ...) rebuilt from the document on every change. Changes
are built in memory and committed optimistically: storage refuses one whose log moved on
(another process, say) and we rebuild from the log and try again. Blocks are locked in this
process in sorted order so concurrent pushes here do not keep conflicting with each other.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import replace

from heaper_trio import crdt
from heaper_trio.errors import Forbidden, NotFound, PayloadTooLarge
from heaper_trio.records import BlockChange, ChangePage, CommitStatus, Heap, User
from heaper_trio.records.changes import ChangeKind, change_kind
from heaper_trio.services import live_push, push_prepare
from heaper_trio.services import push as pipeline
from heaper_trio.services.commits import BlockLocks, CommitListener, Committed, Purger
from heaper_trio.services.doc_cache import DocumentBase, DocumentCache
from heaper_trio.services.history import HistoryService
from heaper_trio.services.projection import projection_of, storable
from heaper_trio.services.push import Prepared, PushBatch, Settled, checked, with_diff
from heaper_trio.services.push_unchecked import push_unchecked
from heaper_trio.services.sync_types import (
    BlockView,
    EditStatus,
    PullItemRequest,
    PullOutcome,
    PullStatus,
    PushItemRequest,
    PushOutcome,
    PushStatus,
    Undecodable,
)
from heaper_trio.settings import Settings
from heaper_trio.storage.base import Storage

log = logging.getLogger(__name__)
COMPACT_EVERY = 100  # log rows after the snapshot before a change also writes a new snapshot
MAX_ATTEMPTS = 5
DELTA_LIMIT = 1000


def _deleted(change: BlockChange) -> bool | None:
    """``DocumentBase.deleted`` after ``change``: its projection's trash state, unless it was
    made from ``permanently_deleted_at`` (``push.projected``), which the document lacks."""
    p = change.projection
    return None if p.permanently_deleted_at is not None else p.deleted_at is not None


def _continues(client_version: int | None, version: int) -> bool:
    """Whether a pulled block's diff is a continuation of what the client holds. Without a
    version, only while the document was never replaced (still at 1); otherwise only at the
    block's own version. 0 (the client never saw the block) and any other get the full state."""
    if client_version is None:
        return version == 1
    return client_version == version


class DocumentService:
    def __init__(
        self, storage: Storage, settings: Settings, clock: Callable[[], float] = time.time
    ) -> None:
        self.storage = storage
        self.settings = settings
        self.clock = clock
        self.locks = BlockLocks()
        self.cache = DocumentCache()
        self.listeners: list[CommitListener] = []
        self.purger: Purger | None = None  # HeapService.purge, wired by the container
        self.history = HistoryService(self)  # list, read, restore, compact, thin

    def _now(self) -> int:
        return int(self.clock() * 1000)

    def announce(self, committed: Sequence[Committed]) -> None:
        """Tell the listeners (live sync) about stored changes. Runs after the commit, never
        inside it; a failing listener is logged, the change stays stored and acknowledged."""
        if not committed:
            return
        for c in committed:
            if c.kind == ChangeKind.purged:
                self.cache.evict(c.block_id)
            elif c.kind == ChangeKind.heap_deleted:
                self.cache.evict_heap(c.heap_id)
        for listener in list(self.listeners):
            try:
                listener(committed)
            except Exception:
                log.exception("a commit listener failed")

    # -- heaps ------------------------------------------------------------------------------
    async def owned_heap(self, user: User, heap_id: str) -> Heap:
        """The heap, if ``user`` owns it. Unknown and foreign heaps answer alike (no leak)."""
        heap = await self.storage.get_heap(heap_id)
        if heap is None or heap.owner_id != user.id:
            raise Forbidden("this heap does not exist or is not yours", code="heap_forbidden")
        return heap

    async def create_heap(self, user: User, name: str, heap_id: str | None) -> Heap:
        heap_id = heap_id or str(uuid.uuid4())
        root_id = str(uuid.uuid4())
        first = crdt.new_block_document(block_type="index", title=storable(name))
        doc = crdt.BlockDocument.load(None, [first])
        now = self._now()
        heap = Heap(heap_id, user.id, storable(name), root_id, now, now)
        root = BlockChange(
            root_id,
            heap_id,
            user.id,
            None,
            (first,),
            projection_of(doc),
            doc.state_vector(),
            doc.size,
        )
        if not await self.storage.create_heap(heap, root, now):
            raise Forbidden("this heap id is already taken", code="heap_exists")
        created = await self.storage.get_heap(heap_id)
        assert created is not None
        self.announce([Committed(heap_id, root_id, ChangeKind.created, 1, 1, now, (first,))])
        return created

    # -- push -------------------------------------------------------------------------------
    async def push(self, user: User, items: Sequence[PushItemRequest]) -> list[PushOutcome]:
        """Each block is applied on its own; the answers keep the request's order."""
        if (
            sum(len(i.update) for i in items if isinstance(i.update, bytes))
            > self.settings.max_request_bytes
        ):
            raise PayloadTooLarge("the decoded updates exceed max_request_bytes")
        work = [checked(item, index) for index, item in enumerate(items)]
        fast = None  # one cached block: no read ahead of its commit (push_unchecked)
        if len(work) == 1 and isinstance(one := work[0], PushBatch):
            fast = await push_unchecked(self, user, replace(one, heap_owner=user.id), None)
        settled = [fast] if fast else await self._push_items(user, work, origin=None)
        # No await from here on: the documents are read as the push left them.
        return [with_diff(s, item.state_vector) for s, item in zip(settled, items, strict=True)]

    async def push_live(
        self,
        user: User,
        heap_id: str,
        block_id: str,
        updates: list[bytes],
        sync_version: int | None,
        origin: object,
        unchecked: bool = True,
    ) -> PushOutcome:
        """Updates from a live connection (``live_push``), answered only once durable."""
        return await live_push.push_live(
            self, user, heap_id, block_id, updates, sync_version, origin, unchecked
        )

    async def _push_items(
        self, user: User, work: Sequence[PushBatch | PushOutcome], origin: object
    ) -> list[Settled]:
        """Store the batches (outcomes in ``work`` are refusals made while checking); one
        ``Settled`` per entry of ``work``, in its order."""
        done = {i: Settled(w) for i, w in enumerate(work) if isinstance(w, PushOutcome)}
        pending = [w for w in work if isinstance(w, PushBatch)]
        first: push_prepare.First | None
        first = await push_prepare.first_reads(self.cache, self.storage, pending)
        owners = first.owners
        for batch in pending:
            if owners.get(batch.heap_id) != user.id:
                done[batch.index] = Settled(batch.refused(PushStatus.forbidden, "heap_forbidden"))
        pending = [b for b in pending if owners.get(b.heap_id) == user.id]
        committed: dict[int, Committed] = {}
        async with AsyncExitStack() as stack:
            await self.locks.hold_all(stack, [b.block_id for b in pending])
            for _ in range(MAX_ATTEMPTS):
                if not pending:
                    break
                prepared = []
                readied = await push_prepare.prepare(self.cache, self.storage, pending, first)
                for batch, ready in zip(pending, readied, strict=True):
                    if isinstance(ready, Prepared):
                        prepared.append(ready)
                    else:
                        done[batch.index] = Settled(ready)
                first = None  # a retry reads again
                pending = await self._commit(user, prepared, done, committed)
            for batch in pending:  # still conflicting after every attempt
                done[batch.index] = Settled(batch.refused(PushStatus.conflict, "write_conflict"))
            await self.settle(committed, done, origin)
        return [done[i] for i in range(len(work))]

    async def settle(
        self, committed: dict[int, Committed], done: dict[int, Settled], origin: object
    ) -> None:
        """After a commit: announce it, then purge the blocks it marked gone for good."""
        self.announce([replace(committed[i], origin=origin) for i in sorted(committed)])
        try:  # the edit stays stored and answered; a failed purge leaves it in the trash
            for heap_id, block_ids in pipeline.gone_for_good(committed, done).items():
                await self.purger(heap_id, block_ids) if self.purger else None
        except Exception:
            log.exception("purging blocks marked permanently_deleted_at failed")

    async def _commit(
        self,
        user: User,
        prepared: list[Prepared],
        done: dict[int, Settled],
        committed: dict[int, Committed],
    ) -> list[PushBatch]:
        """Commit every changed batch in one transaction, settling it in ``done`` (and what it
        stored in ``committed``); return the ones that conflicted, to try again."""
        changes: list[tuple[Prepared, BlockChange]] = []
        for p in prepared:
            batch, base = p.batch, p.base
            if not p.changed:
                if base is not None:
                    self.cache.put(batch.block_id, base)
                done[batch.index] = Settled(
                    PushOutcome(batch.block_id, PushStatus.ok, p.version), p.doc
                )
                continue
            last_seq = base.last_seq if base else 0
            compacted = None
            if (
                base is not None
                and base.log_rows + len(batch.updates) >= COMPACT_EVERY
                and not p.doc.has_pending()
            ):
                compacted = (p.doc.snapshot(), last_seq + len(batch.updates))
            with p.doc.reading():  # one pycrdt transaction for the three reads
                projection, sv, size = pipeline.projected(p.doc), p.doc.state_vector(), p.doc.size
            change = BlockChange(
                batch.block_id,
                batch.heap_id,
                user.id,
                base.last_seq if base else None,
                batch.updates,
                projection,
                sv,
                size,
                compacted,
                batch.search_later,
                batch.heap_owner,
            )
            changes.append((p, change))
        if not changes:
            return []
        results = await self.storage.commit_changes([c for _, c in changes], self._now())
        retry = []
        for (p, change), result in zip(changes, results, strict=True):
            batch, base = p.batch, p.base
            if result.status is CommitStatus.conflict:
                retry.append(replace(batch, seen_version=p.version))
                continue
            self.cache.put(
                batch.block_id,
                DocumentBase(
                    p.doc,
                    batch.heap_id,
                    result.last_seq,
                    0 if change.compacted else (base.log_rows if base else 0) + len(batch.updates),
                    result.sync_version,
                    (base.approx_bytes if base else 0) + sum(len(u) for u in batch.updates),
                    _deleted(change),
                ),
            )
            kind = change_kind(
                created=result.status is CommitStatus.created,
                was_deleted=p.was_deleted,
                now_deleted=change.projection.deleted_at is not None,
            )
            committed[batch.index] = Committed(
                batch.heap_id,
                batch.block_id,
                kind,
                result.last_seq,
                result.sync_version,
                result.updated_at,
                batch.updates,
            )
            done[batch.index] = Settled(
                PushOutcome(batch.block_id, PushStatus(result.status.value), result.sync_version),
                p.doc,
                change.projection.permanently_deleted_at is not None,
            )
        return retry

    async def server_edit(
        self,
        author_id: str,
        heap_id: str,
        block_id: str,
        edit: Callable[[crdt.BlockDocument], bytes],
        *,
        create: Callable[[], bytes] | None = None,
    ) -> EditStatus:
        """A CRDT edit made by the server (restore from trash, a file recorded, ...), stored and
        projected like any pushed update. ``edit`` changes the document and returns the update
        it made. A missing block is created from ``create()`` (its first update) when given."""
        async with AsyncExitStack() as stack:
            await self.locks.hold_all(stack, [block_id])
            self.cache.evict(block_id)  # its log is about to move on
            for _ in range(MAX_ATTEMPTS):
                stored = await self.storage.load_block(block_id)
                if stored is None:
                    if create is None or await self.storage.tombstones([block_id]):
                        return EditStatus.not_found
                    first: tuple[bytes, ...] = (create(),)
                elif stored.heap_id != heap_id:
                    return EditStatus.not_found
                else:
                    first = ()
                doc = crdt.BlockDocument.load(
                    stored.snapshot if stored else None, stored.updates if stored else first
                )
                was_deleted = doc.deleted_at() is not None
                update = edit(doc)
                if update == crdt.EMPTY_UPDATE and stored is not None:
                    return EditStatus.unchanged
                updates = (*first, update) if update != crdt.EMPTY_UPDATE else first
                projection = pipeline.projected(doc)
                change = BlockChange(
                    block_id,
                    heap_id,
                    author_id,
                    stored.last_seq if stored else None,
                    updates,
                    projection,
                    doc.state_vector(),
                    doc.size,
                )
                [result] = await self.storage.commit_changes([change], self._now())
                if result.status is not CommitStatus.conflict:
                    kind = change_kind(
                        created=stored is None,
                        was_deleted=was_deleted,
                        now_deleted=projection.deleted_at is not None,
                    )
                    self.announce(
                        [
                            Committed(
                                heap_id,
                                block_id,
                                kind,
                                result.last_seq,
                                result.sync_version,
                                result.updated_at,
                                updates,
                            )
                        ]
                    )
                    return EditStatus.created if stored is None else EditStatus.ok
        return EditStatus.conflict

    # -- pull -------------------------------------------------------------------------------
    async def pull(self, user: User, items: Sequence[PullItemRequest]) -> list[PullOutcome]:
        gone = await self.storage.tombstones([i.block_id for i in items])
        owned: dict[str, bool] = {}

        async def mine(heap_id: str) -> bool:
            if heap_id not in owned:
                heap = await self.storage.get_heap(heap_id)
                owned[heap_id] = heap is not None and heap.owner_id == user.id
            return owned[heap_id]

        answers = []
        for item in items:
            block_id = item.block_id
            if block_id in gone and await mine(gone[block_id][0]):
                answers.append(
                    PullOutcome(block_id, PullStatus.deleted, deleted_at=gone[block_id][1])
                )
                continue
            stored = await self.storage.load_block(block_id)
            if stored is None or not await mine(stored.heap_id):
                answers.append(PullOutcome(block_id, PullStatus.not_found, error="block_not_found"))
                continue
            version, sv = stored.sync_version, item.state_vector
            if isinstance(sv, Undecodable):
                answers.append(PullOutcome(block_id, PullStatus.invalid, version, sv.code))
                continue
            try:
                if sv is not None:
                    crdt.check_state_vector(sv)
                doc = crdt.BlockDocument.load(stored.snapshot, stored.updates)
            except crdt.InvalidUpdate as e:
                answers.append(PullOutcome(block_id, PullStatus.invalid, version, e.code))
                continue
            if not _continues(item.sync_version, version):
                answers.append(
                    PullOutcome(
                        block_id,
                        PullStatus.version_mismatch,
                        version,
                        full_state=doc.full_state(),
                        state_vector=doc.state_vector(),
                    )
                )
            else:
                answers.append(
                    PullOutcome(
                        block_id,
                        PullStatus.ok,
                        version,
                        update=doc.diff(sv),
                        state_vector=doc.state_vector(),
                    )
                )
        return answers

    # -- delta and block reads ----------------------------------------------------------------
    async def delta(self, user: User, heap_id: str, since: int, limit: int) -> ChangePage:
        await self.owned_heap(user, heap_id)
        return await self.storage.changes_since(heap_id, since, limit)

    async def block(self, user: User, block_id: str) -> BlockView:
        stored = await self.storage.load_block(block_id)
        heap = await self.storage.get_heap(stored.heap_id) if stored else None
        if stored is None or heap is None or heap.owner_id != user.id:
            raise NotFound("no such block in your heaps", code="block_not_found")
        record = (await self.storage.get_blocks([block_id]))[block_id]
        doc = crdt.BlockDocument.load(stored.snapshot, stored.updates)
        return BlockView(
            record,
            heap.root_block_id == record.id,
            await self._visible_related(user, block_id),
            doc.full_state(),
            doc.state_vector(),
        )

    async def _visible_related(self, user: User, block_id: str) -> dict[str, list[str]]:
        """The block's relations without blocks of the user's heaps that are in the trash or
        gone for good (the contract: hidden while trashed, kept in the document and in
        ``relations.raw``). Ids of other users' blocks are judged as unknown ones, kept as the
        document names them: their trash must not show through."""
        related = await self.storage.related(block_id)
        ids = sorted({i for listed in related.values() for i in listed})
        if not ids:
            return related
        mine = {h.id for h in await self.storage.list_heaps(user.id)}
        hidden = {
            i
            for i, r in (await self.storage.get_blocks(ids)).items()
            if r.heap_id in mine
            and (r.deleted_at is not None or r.permanently_deleted_at is not None)
        }
        hidden |= {
            i for i, (heap_id, _) in (await self.storage.tombstones(ids)).items() if heap_id in mine
        }
        return {kind: [i for i in listed if i not in hidden] for kind, listed in related.items()}
