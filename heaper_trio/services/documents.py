"""Block documents: HTTP sync (push, pull, delta), block reads, heap creation.

The Yjs document is the source of truth; storage keeps an append-only log per block and the
projections (title, text, relations, ...) rebuilt from the document on every change. Changes
are built in memory and committed optimistically: storage refuses one whose log moved on
(another process, say) and we rebuild from the log and try again. Blocks are locked in this
process in sorted order so concurrent pushes here do not keep conflicting with each other.
"""

from __future__ import annotations

import logging
import math
import re
import time
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import trio

from heaper_trio import crdt
from heaper_trio.errors import Forbidden, NotFound, PayloadTooLarge
from heaper_trio.services.doc_cache import DocumentBase, DocumentCache
from heaper_trio.settings import Settings
from heaper_trio.storage.base import Storage
from heaper_trio.records import BlockChange, BlockProjection, CommitStatus, Heap, User

log = logging.getLogger(__name__)
COMPACT_EVERY = 100  # log rows after the snapshot before a change also writes a new snapshot
MAX_ATTEMPTS = 5
DELTA_LIMIT = 1000


def _clean(value: Any) -> Any:
    """JSON both engines store alike: no NUL in strings (PostgreSQL TEXT/JSONB refuse it),
    no NaN or infinity (JSONB refuses them). The document itself keeps whatever it holds."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {_clean(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def projection_of(doc: crdt.BlockDocument) -> BlockProjection:
    p = doc.project()
    ids = lambda xs: tuple(x for x in xs if "\x00" not in x)  # noqa: E731
    return BlockProjection(
        type=_clean(p.type), title=_clean(p.title), text=_clean(p.text),
        relations=_clean(p.relations), files=_clean(p.files), apps=_clean(p.apps),
        deleted_at=p.deleted_at, permanently_deleted_at=p.permanently_deleted_at,
        tags=ids(p.tags), mentions=ids(p.mentions), links=ids(p.links),
        file_hashes=file_hashes(p.files),
    )


_HASH = re.compile(r"[0-9a-f]{64}")


def file_hashes(files: dict[str, Any]) -> tuple[str, ...]:
    """Content hashes of a block's ``files_v0`` entries: the entry's ``hash`` field, else
    the key's ``<hash>:<size>`` prefix (lowercase hex SHA-256 only)."""
    out = set()
    for key, value in files.items():
        candidate = value.get("hash") if isinstance(value, dict) else None
        if not (isinstance(candidate, str) and _HASH.fullmatch(candidate.lower())):
            candidate = str(key).split(":", 1)[0]
        candidate = candidate.lower()
        if _HASH.fullmatch(candidate):
            out.add(candidate)
    return tuple(sorted(out))


@dataclass(frozen=True)
class Committed:
    """A durably stored change of one block: what live subscribers and other processes hear.

    ``kind`` is ``created``, ``changed``, ``deleted`` (moved to the trash), ``restored`` (out
    of it) or ``purged`` (gone for good). ``updates`` are the stored Yjs updates; empty when
    only the pointer is known (a change announced by another process, or a purge).
    ``origin`` is whoever asked for the change (a live connection), so it is not echoed back.
    """

    heap_id: str
    block_id: str
    kind: str
    seq: int = 0
    sync_version: int = 1
    updated_at: int = 0
    updates: tuple[bytes, ...] = ()
    origin: object | None = None


CommitListener = Callable[[Sequence[Committed]], None]


@dataclass
class PushItem:
    block_id: str
    heap_id: str
    updates: tuple[bytes, ...]
    state_vector: bytes | None
    sync_version: int | None
    status: str = ""
    error: str | None = None
    doc: crdt.BlockDocument | None = None
    base: DocumentBase | None = None  # None: the block does not exist yet
    changed: bool = False
    was_deleted: bool = False
    sync_version_now: int = 1
    committed: list[Committed] = field(default_factory=list)


class BlockLocks:
    """One trio.Lock per block id, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[trio.Lock, int]] = {}

    async def hold_all(self, stack: AsyncExitStack, block_ids: list[str]) -> None:
        for block_id in sorted(set(block_ids)):  # one global order: no deadlocks
            lock, users = self._locks.get(block_id, (trio.Lock(), 0))
            self._locks[block_id] = (lock, users + 1)
            stack.callback(self._release_user, block_id)
            await stack.enter_async_context(lock)

    def _release_user(self, block_id: str) -> None:
        lock, users = self._locks[block_id]
        if users <= 1:
            del self._locks[block_id]
        else:
            self._locks[block_id] = (lock, users - 1)


class DocumentService:
    def __init__(self, storage: Storage, settings: Settings,
                 clock: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self.settings = settings
        self.clock = clock
        self.locks = BlockLocks()
        self.cache = DocumentCache()
        self.listeners: list[CommitListener] = []

    def _now(self) -> int:
        return int(self.clock() * 1000)

    def announce(self, committed: Sequence[Committed]) -> None:
        """Tell the listeners (live sync) about stored changes. Runs after the commit, never
        inside it; a failing listener is logged, the change stays stored and acknowledged."""
        if not committed:
            return
        for c in committed:
            if c.kind == "purged":
                self.cache.evict(c.block_id)
            elif c.kind == "heap_deleted":
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
        first = crdt.new_block_document(block_type="index", title=_clean(name))
        doc = crdt.BlockDocument.load(None, [first])
        now = self._now()
        heap = Heap(heap_id, user.id, _clean(name), root_id, now, now)
        root = BlockChange(root_id, heap_id, user.id, None, (first,), projection_of(doc),
                           doc.state_vector(), doc.size)
        if not await self.storage.create_heap(heap, root, now):
            raise Forbidden("this heap id is already taken", code="heap_exists")
        created = await self.storage.get_heap(heap_id)
        assert created is not None
        self.announce([Committed(heap_id, root_id, "created", 1, 1, now, (first,))])
        return created

    # -- push -------------------------------------------------------------------------------
    async def push(self, user: User, raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
        items = [self._parse_push_item(r) for r in raw]
        if sum(len(u) for i in items for u in i.updates) > self.settings.max_request_bytes:
            raise PayloadTooLarge("the decoded updates exceed max_request_bytes")
        await self._push_items(user, items, origin=None)
        return [self._push_answer(i) for i in items]

    async def push_live(self, user: User, heap_id: str, block_id: str, updates: list[bytes],
                        sync_version: int | None, origin: object) -> PushItem:
        """Updates from a live connection: stored like an HTTP push (one commit for all of
        them), answered only once durable. The caller checked the heap; it is checked again
        here, as ownership may have changed since the document was opened."""
        item = PushItem(block_id, heap_id, tuple(updates), None, sync_version)
        try:
            for update in updates:
                crdt.check_update(update)
        except crdt.InvalidUpdate as e:  # the whole batch is refused, as one push item is
            item.status, item.error = "invalid", e.code
        await self._push_items(user, [item], origin=origin)
        return item

    async def _push_items(self, user: User, items: list[PushItem], origin: object) -> None:
        heaps: dict[str, bool] = {}
        for item in items:
            if item.status:
                continue
            if item.heap_id not in heaps:
                heap = await self.storage.get_heap(item.heap_id)
                heaps[item.heap_id] = heap is not None and heap.owner_id == user.id
            if not heaps[item.heap_id]:
                item.status, item.error = "forbidden", "heap_forbidden"
        pending = [i for i in items if not i.status]
        async with AsyncExitStack() as stack:
            await self.locks.hold_all(stack, [i.block_id for i in pending])
            for _ in range(MAX_ATTEMPTS):
                if not pending:
                    break
                await self._prepare(pending)
                pending = await self._commit(user, [i for i in pending if not i.status])
            for item in pending:  # still conflicting after every attempt
                item.status, item.error = "conflict", "write_conflict"
        self.announce([replace(c, origin=origin) for i in items for c in i.committed])

    def _parse_push_item(self, raw: dict[str, Any]) -> PushItem:
        item = PushItem(raw["block_id"], raw["workspace_id"], (), None, raw.get("sync_version"))
        try:
            item.updates = (crdt.decode_b64(raw["update"]),)
            crdt.check_update(item.updates[0])
            sv = raw.get("state_vector")
            if sv:
                item.state_vector = crdt.decode_b64(sv, "state_vector")
                crdt.check_state_vector(item.state_vector)
        except crdt.InvalidUpdate as e:
            item.status, item.error = "invalid", e.code
        return item

    async def _prepare(self, items: list[PushItem]) -> None:
        """Take each block's document (cached, or rebuilt from storage) and apply the pushed
        updates to it, in memory."""
        gone = await self.storage.tombstones([i.block_id for i in items])
        for item in items:
            item.changed = False
            if item.block_id in gone and gone[item.block_id][0] != item.heap_id:
                # "deleted" would tell that this id was another heap's (another user's)
                item.status, item.error = "forbidden", "block_in_other_heap"
                continue
            if item.block_id in gone:
                item.status, item.error = "deleted", "block_deleted"
                self.cache.evict(item.block_id)
                continue
            try:
                base = self.cache.take(item.block_id) or await self._load_base(item.block_id)
            except crdt.InvalidUpdate as e:  # a stored log that no longer loads
                item.status, item.error = "invalid", e.code
                continue
            if base is not None and base.heap_id != item.heap_id:
                item.status, item.error = "forbidden", "block_in_other_heap"
                continue
            if (base is not None and item.sync_version is not None
                    and item.sync_version != base.sync_version):
                item.status, item.error = "version_mismatch", "sync_version_mismatch"
                item.sync_version_now = base.sync_version
                self.cache.put(item.block_id, base)
                continue
            doc = base.doc if base is not None else crdt.BlockDocument()
            try:
                item.was_deleted = base is not None and doc.deleted_at() is not None
                item.changed = base is None
                for update in item.updates:
                    item.changed = doc.apply(update) or item.changed
            except crdt.InvalidUpdate as e:
                item.status, item.error = "invalid", e.code
                continue  # the document may hold part of the batch: not cached again
            item.doc, item.base = doc, base
            item.sync_version_now = base.sync_version if base else 1

    async def _load_base(self, block_id: str) -> DocumentBase | None:
        stored = await self.storage.load_block(block_id)
        if stored is None:
            return None
        doc = crdt.BlockDocument.load(stored.snapshot, stored.updates)
        size = len(stored.snapshot or b"") + sum(len(u) for u in stored.updates)
        return DocumentBase(doc, stored.heap_id, stored.last_seq, len(stored.updates),
                            stored.sync_version, size)

    async def _commit(self, user: User, items: list[PushItem]) -> list[PushItem]:
        """Commit every changed item in one transaction; return the ones that conflicted."""
        changes = []
        for item in items:
            if not item.changed:
                item.status = "ok"
                if item.base is not None:
                    self.cache.put(item.block_id, item.base)
                continue
            assert item.doc is not None
            base = item.base
            last_seq = base.last_seq if base else 0
            compacted = None
            if base is not None and base.log_rows + len(item.updates) >= COMPACT_EVERY \
                    and not item.doc.has_pending():
                compacted = (item.doc.snapshot(), last_seq + len(item.updates))
            changes.append(BlockChange(
                item.block_id, item.heap_id, user.id, base.last_seq if base else None,
                item.updates, projection_of(item.doc), item.doc.state_vector(),
                item.doc.size, compacted))
        if not changes:
            return []
        results = await self.storage.commit_changes(changes, self._now())
        by_id = {i.block_id: i for i in items}
        change_of = {c.block_id: c for c in changes}
        retry = []
        for result in results:
            item = by_id[result.block_id]
            if result.status is CommitStatus.conflict:
                retry.append(item)
                continue
            item.status = result.status.value
            item.sync_version_now = result.sync_version
            if result.status in (CommitStatus.ok, CommitStatus.created):
                assert item.doc is not None
                change = change_of[item.block_id]
                base, added = item.base, sum(len(u) for u in item.updates)
                self.cache.put(item.block_id, DocumentBase(
                    item.doc, item.heap_id, result.last_seq,
                    0 if change.compacted else (base.log_rows if base else 0) + len(item.updates),
                    result.sync_version, (base.approx_bytes if base else 0) + added))
                now_deleted = change.projection.deleted_at is not None
                kind = ("created" if result.status is CommitStatus.created
                        else "deleted" if now_deleted and not item.was_deleted
                        else "restored" if item.was_deleted and not now_deleted
                        else "changed")
                item.committed.append(Committed(
                    item.heap_id, item.block_id, kind, result.last_seq, result.sync_version,
                    result.updated_at, item.updates))
        return retry

    def _push_answer(self, item: PushItem) -> dict[str, Any]:
        out: dict[str, Any] = {"block_id": item.block_id, "status": item.status}
        if item.status != "forbidden":
            # a refused block may be another user's: nothing of it goes back, not its version
            out["sync_version"] = item.sync_version_now
        if item.error:
            out["error"] = item.error
        if item.doc is not None and item.status in ("ok", "created"):
            out["state_vector"] = crdt.encode_b64(item.doc.state_vector())
            out["update"] = crdt.encode_b64(item.doc.diff(item.state_vector))
        return out

    async def server_edit(self, author_id: str, heap_id: str, block_id: str,
                          edit: Callable[[crdt.BlockDocument], bytes], *,
                          create: Callable[[], bytes] | None = None) -> str:
        """A CRDT edit made by the server (restore from trash, a file recorded, ...), stored and
        projected like any pushed update. ``edit`` changes the document and returns the update
        it made. A missing block is created from ``create()`` (its first update) when given.
        Returns ``ok``, ``created``, ``unchanged``, ``not_found`` or ``conflict``."""
        async with AsyncExitStack() as stack:
            await self.locks.hold_all(stack, [block_id])
            self.cache.evict(block_id)  # its log is about to move on
            for _ in range(MAX_ATTEMPTS):
                stored = await self.storage.load_block(block_id)
                if stored is None:
                    if create is None or await self.storage.tombstones([block_id]):
                        return "not_found"
                    first: tuple[bytes, ...] = (create(),)
                elif stored.heap_id != heap_id:
                    return "not_found"
                else:
                    first = ()
                doc = crdt.BlockDocument.load(stored.snapshot if stored else None,
                                              stored.updates if stored else first)
                was_deleted = doc.deleted_at() is not None
                update = edit(doc)
                if update == crdt.EMPTY_UPDATE and stored is not None:
                    return "unchanged"
                updates = (*first, update) if update != crdt.EMPTY_UPDATE else first
                projection = projection_of(doc)
                change = BlockChange(block_id, heap_id, author_id,
                                     stored.last_seq if stored else None, updates,
                                     projection, doc.state_vector(), doc.size)
                [result] = await self.storage.commit_changes([change], self._now())
                if result.status is not CommitStatus.conflict:
                    deleted = projection.deleted_at is not None
                    kind = ("created" if stored is None
                            else "deleted" if deleted and not was_deleted
                            else "restored" if was_deleted and not deleted else "changed")
                    self.announce([Committed(heap_id, block_id, kind, result.last_seq,
                                             result.sync_version, result.updated_at, updates)])
                    return "created" if stored is None else "ok"
        return "conflict"

    # -- pull -------------------------------------------------------------------------------
    async def pull(self, user: User, raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ids = [r["block_id"] for r in raw]
        gone = await self.storage.tombstones(ids)
        owned: dict[str, bool] = {}

        async def mine(heap_id: str) -> bool:
            if heap_id not in owned:
                heap = await self.storage.get_heap(heap_id)
                owned[heap_id] = heap is not None and heap.owner_id == user.id
            return owned[heap_id]

        answers = []
        for r in raw:
            block_id = r["block_id"]
            out: dict[str, Any] = {"block_id": block_id}
            if block_id in gone and await mine(gone[block_id][0]):
                out.update(status="deleted", deleted=True, deleted_at=gone[block_id][1])
                answers.append(out)
                continue
            stored = await self.storage.load_block(block_id)
            if stored is None or not await mine(stored.heap_id):
                out.update(status="not_found", error="block_not_found")
                answers.append(out)
                continue
            out["sync_version"] = stored.sync_version
            try:
                sv = crdt.decode_b64(r.get("state_vector") or "", "state_vector") or None
                if sv is not None:
                    crdt.check_state_vector(sv)
                doc = crdt.BlockDocument.load(stored.snapshot, stored.updates)
            except crdt.InvalidUpdate as e:
                out.update(status="invalid", error=e.code)
                answers.append(out)
                continue
            client_version = r.get("sync_version")
            if client_version is not None and client_version != stored.sync_version:
                out.update(status="version_mismatch",
                           full_state=crdt.encode_b64(doc.full_state()))
            else:
                out.update(status="ok", update=crdt.encode_b64(doc.diff(sv)))
            out["state_vector"] = crdt.encode_b64(doc.state_vector())
            answers.append(out)
        return answers

    # -- delta and block reads ----------------------------------------------------------------
    async def delta(self, user: User, heap_id: str, since: int, limit: int) -> dict[str, Any]:
        await self.owned_heap(user, heap_id)
        page = await self.storage.changes_since(heap_id, since, limit)
        return {
            "success": True,
            "changed_blocks": [
                {"block_id": b.id, "updated_at": b.updated_at, "sync_version": b.sync_version,
                 "type": b.type, "title": b.title, "deleted_at": b.deleted_at}
                for b in page.changed],
            "deleted_blocks": [{"block_id": bid, "deleted_at": at} for bid, at in page.deleted],
            "server_time": page.server_time,
            "has_more": page.has_more,
            "total_changed": page.total_changed,
            "total_deleted": page.total_deleted,
        }

    async def block(self, user: User, block_id: str) -> dict[str, Any]:
        stored = await self.storage.load_block(block_id)
        heap = await self.storage.get_heap(stored.heap_id) if stored else None
        if stored is None or heap is None or heap.owner_id != user.id:
            raise NotFound("no such block in your heaps", code="block_not_found")
        record = (await self.storage.get_blocks([block_id]))[block_id]
        doc = crdt.BlockDocument.load(stored.snapshot, stored.updates)
        return {
            "success": True,
            "block": {
                "id": record.id, "block_id": record.id, "heap_id": record.heap_id,
                "workspace_id": record.heap_id, "type": record.type, "title": record.title,
                "text": record.text, "created_at": record.created_at,
                "created_by": record.created_by, "updated_at": record.updated_at,
                "deleted_at": record.deleted_at,
                "permanently_deleted_at": record.permanently_deleted_at,
                "sync_version": record.sync_version, "size": record.size,
                "is_root": heap.root_block_id == record.id,
            },
            "relations": {**(await self.storage.related(block_id)),
                          "raw": record.relations},
            "apps": record.apps,
            "files": record.files,
            "text": record.text,
            "state": crdt.encode_b64(doc.full_state()),
            "state_vector": crdt.encode_b64(doc.state_vector()),
        }
