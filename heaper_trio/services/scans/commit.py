"""Writing what a scan found: file and folder blocks, and the index rows pointing at them,
committed together in one transaction per batch.

New blocks are built in one Yjs update each (``crdt.new_server_block``, no read-back) and
committed with expected position "none"; existing blocks are edited like
``DocumentService.server_edit`` does it (the block locked in this process, its cached document
dropped, the edit applied to the stored log and committed at that log position, rebuilt and
retried if someone else wrote first), but many at a time. An index row is written only with
its block's change (storage refuses the row with the change), so the two always agree, and a
cancelled batch either committed whole or not at all. Committed changes are announced to
live subscribers like any other (on PostgreSQL the batch's transaction already told the other
processes, so the bridge does not repeat it).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from typing import Any

from heaper_trio import crdt
from heaper_trio.errors import Conflict
from heaper_trio.records import (
    BlockChange,
    BlockProjection,
    CommitStatus,
    FileRecord,
    ScanBatch,
    ScanEntry,
)
from heaper_trio.services.commits import Committed
from heaper_trio.services.documents import MAX_ATTEMPTS, DocumentService
from heaper_trio.services.projection import file_hashes, projection_of
from heaper_trio.storage.base import Storage

log = logging.getLogger(__name__)


_random = bytearray()


def _random_bytes(n: int) -> bytes:
    """os.urandom in 4 KiB helpings: one call per id costs ~35 µs on our VMs, a scan makes
    thousands of ids."""
    global _random
    if len(_random) < n:
        _random = bytearray(os.urandom(4096))
    out, _random = bytes(_random[:n]), _random[n:]
    return out


def new_block_id() -> str:
    """A random (version 4) UUID, as clients make block ids."""
    return str(uuid.UUID(bytes=_random_bytes(16), version=4))


def new_file_id() -> str:
    return _random_bytes(8).hex()


def file_key(hash: str, size: int) -> str:
    return f"{hash}:{size}"


def block_projection(p: crdt.Projection) -> BlockProjection:
    """The storage columns of a block the server built (its strings come from UTF-8 file
    names and probes, so none holds the NUL that ``projection.storable`` guards against)."""
    return BlockProjection(
        type=p.type,
        title=p.title,
        text=p.text,
        relations=p.relations,
        files=p.files,
        apps=p.apps,
        deleted_at=p.deleted_at,
        permanently_deleted_at=p.permanently_deleted_at,
        tags=p.tags,
        mentions=p.mentions,
        links=p.links,
        file_hashes=file_hashes(p.files),
    )


@dataclass(frozen=True)
class NewBlock:
    block_id: str
    update: bytes
    state_vector: bytes
    projection: crdt.Projection
    entry: ScanEntry | None = None
    file: FileRecord | None = None

    @classmethod
    def build(
        cls,
        *,
        block_type: str,
        title: str,
        files: dict[str, dict[str, Any]] | None = None,
        tags: Sequence[str] = (),
        entry: ScanEntry | None = None,
        file: FileRecord | None = None,
        block_id: str | None = None,
    ) -> NewBlock:
        block_id = block_id or (entry.block_id if entry is not None else new_block_id())
        update, sv, projection = crdt.new_server_block(
            block_type=block_type, title=title, files=files, tags=tags
        )
        if entry is not None and entry.block_id != block_id:
            entry = replace(entry, block_id=block_id)
        return cls(block_id, update, sv, projection, entry, file)


@dataclass(frozen=True)
class BlockEdit:
    """A server edit of an existing block, with the index row and file row that go with it.
    ``if_gone``: the block was removed for good (or never committed): build this new block
    instead; without it only the row is written."""

    block_id: str
    edit: Callable[[crdt.BlockDocument], bytes]
    entry: ScanEntry | None = None
    file: FileRecord | None = None
    if_gone: Callable[[], NewBlock] | None = None


@dataclass
class WriteResult:
    blocks: int = 0  # blocks created or changed
    gave_up: int = 0  # edits still conflicting after every attempt (their rows unchanged)
    file_ids: dict[str, str] = field(default_factory=dict)  # hash -> stored file_id


class BlockWriter:
    """Commits batches of one scan (or reindex) into one heap, as one author."""

    def __init__(
        self,
        storage: Storage,
        documents: DocumentService,
        author_id: str,
        heap_id: str,
        scan_id: str,
    ) -> None:
        self.storage = storage
        self.documents = documents
        self.author_id = author_id
        self.heap_id = heap_id
        self.scan_id = scan_id

    def _change(self, new: NewBlock) -> BlockChange:
        return BlockChange(
            new.block_id,
            self.heap_id,
            self.author_id,
            None,
            (new.update,),
            block_projection(new.projection),
            new.state_vector,
            len(new.update),
        )

    async def write(
        self,
        new: Sequence[NewBlock] = (),
        edits: Sequence[BlockEdit] = (),
        seen: Sequence[str] = (),
        hashes: Sequence[str] = (),
        replaced: Sequence[tuple[str, str]] = (),
    ) -> WriteResult:
        result = WriteResult()
        async with AsyncExitStack() as stack:
            if edits:
                await self.documents.locks.hold_all(stack, [e.block_id for e in edits])
                for e in edits:
                    self.documents.cache.evict(e.block_id)
            pending = list(edits)
            for attempt in range(MAX_ATTEMPTS):
                created = list(new) if attempt == 0 else []
                changes, entries, files, stand_ins = await self._prepare(pending)
                created += stand_ins
                batch = ScanBatch(
                    self.heap_id,
                    self.scan_id,
                    changes=tuple([self._change(n) for n in created] + changes),
                    files=tuple([n.file for n in created if n.file] + files),
                    entries=tuple([n.entry for n in created if n.entry] + entries),
                    seen=tuple(seen) if attempt == 0 else (),
                    hashes=tuple(hashes) if attempt == 0 else (),
                    replaced=tuple(replaced) if attempt == 0 else (),
                )
                if not (
                    batch.changes or batch.entries or batch.seen or batch.hashes or batch.replaced
                ):
                    break
                results, file_ids = await self.storage.commit_scan_batch(batch, _now())
                result.file_ids.update(file_ids)
                by_id = {r.block_id: r for r in results}
                made = {n.block_id for n in created}
                if any(by_id[b].status is CommitStatus.conflict for b in made):
                    # a new block refused: its heap went away (its id is fresh)
                    raise Conflict("the heap is gone", code="heap_gone")
                self._announce(batch.changes, by_id, made)
                result.blocks += sum(1 for r in results if r.status is not CommitStatus.conflict)
                refused = {r.block_id for r in results if r.status is CommitStatus.conflict}
                pending = [e for e in pending if e.block_id in refused]
                if not pending:
                    break
                log.info(
                    "scan %s: %d blocks changed meanwhile; trying again", self.scan_id, len(pending)
                )
            result.gave_up = len(pending)
        return result

    async def _prepare(
        self, edits: list[BlockEdit]
    ) -> tuple[list[BlockChange], list[ScanEntry], list[FileRecord], list[NewBlock]]:
        """Load each block, apply its edit: the changes, the rows to write with them, and new
        blocks standing in for removed ones."""
        changes: list[BlockChange] = []
        entries: list[ScanEntry] = []
        files: list[FileRecord] = []
        stand_ins: list[NewBlock] = []
        for e in edits:
            stored = await self.storage.load_block(e.block_id)
            if stored is None or stored.heap_id != self.heap_id:
                if e.if_gone is not None:
                    stand_ins.append(e.if_gone())
                elif e.entry is not None:
                    entries.append(e.entry)
                continue
            doc = crdt.BlockDocument.load(stored.snapshot, stored.updates)
            update = e.edit(doc)
            if e.entry is not None:
                entries.append(e.entry)
            if e.file is not None:
                files.append(e.file)
            if update == crdt.EMPTY_UPDATE:
                continue
            changes.append(
                BlockChange(
                    e.block_id,
                    self.heap_id,
                    self.author_id,
                    stored.last_seq,
                    (update,),
                    projection_of(doc),
                    doc.state_vector(),
                    doc.size,
                )
            )
        return changes, entries, files, stand_ins

    def _announce(
        self, changes: Sequence[BlockChange], by_id: dict[str, Any], made: set[str]
    ) -> None:
        committed = []
        for change in changes:
            r = by_id[change.block_id]
            if r.status is CommitStatus.conflict:
                continue
            kind = (
                "created"
                if change.block_id in made or r.status is CommitStatus.created
                else "changed"
            )
            committed.append(
                Committed(
                    self.heap_id,
                    change.block_id,
                    kind,
                    r.last_seq,
                    r.sync_version,
                    r.updated_at,
                    change.updates,
                )
            )
        self.documents.announce(committed)


def _now() -> int:
    return int(time.time() * 1000)
