"""Planning one batch of a folder scan: what the walker and hashers found becomes new blocks,
edits of existing ones and index rows (written by ``scans/commit.BlockWriter``).

A batch is planned while the one before it is still being written, so what that one holds
(file ids it chose, the first block of each hash) is taken from memory, not from storage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from heaper_trio import crdt
from heaper_trio.records import FileRecord, ScanEntry
from heaper_trio.services.scans.commit import (
    BlockEdit,
    NewBlock,
    file_key,
    new_block_id,
    new_file_id,
)
from heaper_trio.services.scans.job import ScanJob
from heaper_trio.services.scans.probe import FileFacts, Hashed
from heaper_trio.services.scans.walk import FileSeen, FolderSeen
from heaper_trio.storage.base import Storage


@dataclass(frozen=True)
class ToHash:
    seen: FileSeen
    entry: ScanEntry | None  # what the index had for this path (changed file), if anything
    folder_id: str


@dataclass(frozen=True)
class Read:
    """A file hashed and probed, for the committer."""

    task: ToHash
    hashed: Hashed
    facts: FileFacts


@dataclass(frozen=True)
class NewFolder:
    seen: FolderSeen
    block_id: str
    parent_id: str | None


@dataclass(frozen=True)
class Back:
    """An entry marked missing whose path is there again, unchanged."""

    entry: ScanEntry


@dataclass(frozen=True)
class Unchanged:
    paths: tuple[str, ...]
    files: int
    bytes: int


@dataclass(frozen=True)
class Reads:
    """Files hashed in one thread hop travel to the committer together."""

    reads: tuple[Read, ...]


Found = Read | NewFolder | Back | Unchanged


@dataclass
class Plan:
    """A batch ready to write: blocks built, edits prepared, rows to go with them."""

    items: list[Found]
    new: list[NewBlock] = field(default_factory=list)
    edits: list[BlockEdit] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    replaced: list[tuple[str, str]] = field(default_factory=list)  # (old hash, path)
    ids: dict[str, str] = field(default_factory=dict)  # hash -> file_id used
    first: dict[str, str] = field(default_factory=dict)  # hash -> block id of its first path
    holders: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # (block, key)


def entry_fields(
    name: str, path: str, hashed: Hashed, facts: FileFacts, file_id: str, duplicate_of: str | None
) -> dict[str, Any]:
    """A scanned file's ``files_v0`` entry (None: no such field)."""
    return {
        "hash": hashed.hash,
        "name": name,
        "file_size": hashed.size,
        "file_id": file_id,
        "mtime": hashed.mtime_ns // 1_000_000,
        "source_path": path,
        **facts.fields(),
        "duplicate_of": duplicate_of,
        "missing": None,
    }


class BatchPlanner:
    def __init__(self, storage: Storage, job: ScanJob) -> None:
        self.storage = storage
        self.job = job
        self._last = Plan([])  # the batch planned last (maybe still being written)

    async def plan(self, items: list[Found]) -> Plan:
        """Look the batch up and build it; called while the batch before may be written."""
        reads = [i for i in items if isinstance(i, Read)]
        hashes = sorted({r.hashed.hash for r in reads})
        plan = Plan(
            items,
            replaced=[
                (r.task.entry.hash, r.task.seen.path)
                for r in reads
                if r.task.entry
                and r.task.entry.kind == "file"
                and r.task.entry.hash != r.hashed.hash
            ],
        )
        # The batch before this one may still be committing: what it holds is in memory.
        ids = {
            **(await self.storage.file_ids(hashes) if hashes else {}),
            **{h: i for h, i in self._last.ids.items() if h in hashes},
        }
        elsewhere = (
            await self.storage.scan_entries_by_hash(self.job.heap_id, hashes) if hashes else {}
        )
        for item in items:
            if isinstance(item, Unchanged):
                plan.seen.extend(item.paths)
            elif isinstance(item, NewFolder):
                plan.new.append(self._new_folder(item))
            elif isinstance(item, Back):
                plan.edits.append(self.back(item.entry))
            else:
                h, path = item.hashed.hash, item.task.seen.path
                others = [e.block_id for e in elsewhere.get(h, []) if e.path != path]
                dup = next(iter(others), None) or self._last.first.get(h) or plan.first.get(h)
                self.job.duplicates += dup is not None
                plan.ids[h] = file_id = ids.setdefault(h, new_file_id())
                made = self._file(item, file_id, dup)
                if isinstance(made, NewBlock):
                    plan.new.append(made)
                else:
                    plan.edits.append(made)
                plan.first.setdefault(h, made.block_id)
                plan.holders.setdefault(h, []).append(
                    (made.block_id, file_key(h, item.hashed.size))
                )
        self._last = plan
        return plan

    def _entry(
        self,
        path: str,
        kind: str,
        block_id: str,
        folder_id: str | None,
        hashed: Hashed | None = None,
    ) -> ScanEntry:
        identity = hashed.identity if hashed else None
        return ScanEntry(
            self.job.heap_id,
            path,
            kind,
            block_id,
            folder_id,
            hashed.size if hashed else 0,
            hashed.mtime_ns if hashed else 0,
            hashed.hash if hashed else "",
            False,
            self.job.scan_id,
            now_ms(),
            identity.dev if identity else None,
            identity.ino if identity else None,
            identity.ctime_ns if identity else None,
        )

    def _new_folder(self, item: NewFolder) -> NewBlock:
        return NewBlock.build(
            block_type="folder",
            title=item.seen.name,
            tags=[item.parent_id] if item.parent_id else [],
            entry=self._entry(item.seen.path, "folder", item.block_id, item.parent_id),
        )

    def _file(self, item: Read, file_id: str, duplicate_of: str | None) -> NewBlock | BlockEdit:
        seen, hashed, old = item.task.seen, item.hashed, item.task.entry
        fields = entry_fields(seen.name, seen.path, hashed, item.facts, file_id, duplicate_of)
        record = FileRecord(
            hashed.hash,
            file_id,
            hashed.size,
            item.facts.mime_type,
            seen.name,
            seen.path,
            {
                k: v
                for k, v in fields.items()
                if k in ("width", "height", "duration") and v is not None
            },
            now_ms(),
        )
        key = file_key(hashed.hash, hashed.size)

        def fresh(block_id: str | None = None) -> NewBlock:
            return NewBlock.build(
                block_type="file",
                title=seen.name,
                tags=[item.task.folder_id],
                files={key: {k: v for k, v in fields.items() if v is not None}},
                entry=self._entry(
                    seen.path, "file", block_id or new_block_id(), item.task.folder_id, hashed
                ),
                file=record,
            )

        if old is None or old.kind != "file":
            return fresh()
        remove = [file_key(old.hash, old.size)]
        entry = self._entry(seen.path, "file", old.block_id, item.task.folder_id, hashed)
        return BlockEdit(
            old.block_id,
            lambda doc: doc.patch_file_entry(key, fields, remove=remove),
            entry,
            record,
            if_gone=fresh,
        )

    def back(self, entry: ScanEntry) -> BlockEdit:
        back = replace(entry, missing=False, scan_id=self.job.scan_id)
        return BlockEdit(entry.block_id, mark(entry, None), back)


def set_file_id(key: str, file_id: str, doc: crdt.BlockDocument) -> bytes:
    return doc.patch_file_entry(key, {"file_id": file_id}, create=False)


def now_ms() -> int:
    return int(time.time() * 1000)


def mark(entry: ScanEntry, missing: bool | None) -> Callable[[crdt.BlockDocument], bytes]:
    """The edit marking an entry's block missing (True) or present again (None)."""
    if entry.kind == "folder":
        return lambda doc: doc.set_meta("missing", missing)
    key = file_key(entry.hash, entry.size)
    return lambda doc: doc.patch_file_entry(key, {"missing": missing}, create=False)
