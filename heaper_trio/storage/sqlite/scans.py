"""SQLite: the folder-scan index (what each scanned path became) and its batch commits."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from heaper_trio.records import BlockChange, CommitResult, ScanBatch, ScanEntry
from heaper_trio.storage import rules
from heaper_trio.storage.rows import ENTRY_COLUMNS, entry_row
from heaper_trio.storage.sqlite import documents as docs
from heaper_trio.storage.sqlite.runtime import SqliteRuntime
from heaper_trio.storage.sqlite.search import index_new_blocks

CHUNK = 500  # host parameters per IN (...)


def _insert(c: sqlite3.Connection, head: str, rows: list[tuple[Any, ...]], tail: str = "") -> None:
    """``head VALUES (...), (...), ... tail``: one statement for many rows, so the GIL is
    released once per statement rather than once per row (executemany steps each row on its
    own, and under load every re-acquisition of the GIL can wait for the switch interval)."""
    if not rows:
        return
    width = len(rows[0])
    per = max(1, 30_000 // width)  # below SQLITE_MAX_VARIABLE_NUMBER (32766)
    mark = "(" + ",".join("?" * width) + ")"
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        c.execute(
            f"{head} VALUES {','.join([mark] * len(chunk))} {tail}",
            [v for row in chunk for v in row],
        )


def _chunks(values: list[str]) -> list[list[str]]:
    return [values[i : i + CHUNK] for i in range(0, len(values), CHUNK)]


def _marks(values: list[str]) -> str:
    return ",".join("?" * len(values))


def _entries(c: sqlite3.Connection, heap_id: str, paths: list[str]) -> dict[str, ScanEntry]:
    out: dict[str, ScanEntry] = {}
    for chunk in _chunks(paths):
        rows = c.execute(
            f"SELECT {ENTRY_COLUMNS} FROM scan_entries WHERE heap_id=? AND path IN "
            f"({_marks(chunk)})",
            (heap_id, *chunk),
        )
        out.update((r["path"], entry_row(r)) for r in rows)
    return out


def _at(c: sqlite3.Connection, path: str) -> list[ScanEntry]:
    rows = c.execute(
        f"SELECT {ENTRY_COLUMNS} FROM scan_entries WHERE path=? AND kind='file' ORDER BY heap_id",
        (path,),
    )
    return [entry_row(r) for r in rows]


def _by_hash(c: sqlite3.Connection, heap_id: str, hashes: list[str]) -> dict[str, list[ScanEntry]]:
    out: dict[str, list[ScanEntry]] = {}
    for chunk in _chunks(hashes):
        rows = c.execute(
            f"SELECT {ENTRY_COLUMNS} FROM scan_entries WHERE hash IN "
            f"({_marks(chunk)}) AND heap_id=? AND kind='file' AND missing=0 "
            "ORDER BY path",
            (*chunk, heap_id),
        )
        for r in rows:
            out.setdefault(r["hash"], []).append(entry_row(r))
    return out


def _unseen(
    c: sqlite3.Connection, heap_id: str, folder: str, scan_id: str, after: str, limit: int
) -> list[ScanEntry]:
    low, high = rules.unseen_range(folder, after)
    rows = c.execute(
        f"SELECT {ENTRY_COLUMNS} FROM scan_entries WHERE heap_id=? AND path > ? AND path < ? "
        "AND scan_id <> ? AND missing=0 ORDER BY path LIMIT ?",
        (heap_id, low, high, scan_id, limit),
    )
    return [entry_row(r) for r in rows]


def _file_ids(c: sqlite3.Connection, hashes: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for chunk in _chunks(hashes):
        rows = c.execute(f"SELECT hash, id FROM files WHERE hash IN ({_marks(chunk)})", chunk)
        out.update((r[0], r[1]) for r in rows)
    return out


PRESENT = (
    "SELECT e.path FROM scan_entries e WHERE e.hash = files.hash AND e.kind = 'file' "
    "AND e.missing = 0 ORDER BY e.path LIMIT 1"
)
REPOINT = (
    f"UPDATE files SET source_path = ({PRESENT}) "
    "WHERE hash IN ({}) AND source_path IS NOT NULL AND NOT EXISTS (SELECT 1 FROM scan_entries e "
    "WHERE e.hash = files.hash AND e.path = files.source_path AND e.missing = 0) "
    "AND EXISTS (SELECT 1 FROM scan_entries e WHERE e.hash = files.hash AND e.kind = 'file' "
    "AND e.missing = 0)"
)


def _create_blocks(
    c: sqlite3.Connection, changes: list[BlockChange], now: int
) -> list[CommitResult]:
    """``docs.commit_changes`` for blocks that do not exist yet (a scan makes thousands), a
    statement per table instead of a dozen per block; same rows, same change times (the heap's
    clock ticks once per block, in order), same conflicts (the id is taken or tombstoned).
    A test holds the rows equal to those of ``commit_changes``."""
    taken: set[str] = set()
    for chunk in _chunks([ch.block_id for ch in changes]):
        rows = c.execute(
            f"SELECT id FROM blocks WHERE id IN ({_marks(chunk)}) UNION "
            f"SELECT block_id FROM block_tombstones WHERE block_id IN "
            f"({_marks(chunk)})",
            (*chunk, *chunk),
        )
        taken.update(r[0] for r in rows)
    plan = rules.plan_creations(changes, taken)
    for heap_id, mine in plan.by_heap():
        n = len(mine)
        row = c.execute(
            "UPDATE heaps SET clock = MAX(? + ? - 1, clock + ?) WHERE id=? RETURNING clock",
            (now, n, n, heap_id),
        ).fetchone()
        rules.add_creations(plan, heap_id, mine, None if row is None else row[0], now)
    _insert(c, f"INSERT INTO blocks ({rules.CREATED_BLOCK_COLUMNS})", plan.blocks)
    index_new_blocks(c, [(b[0], b[3], b[4]) for b in plan.blocks])
    _insert(
        c, "INSERT INTO block_updates (block_id, seq, data, created_at, author_id)", plan.updates
    )
    _insert(
        c,
        "INSERT OR IGNORE INTO block_relations (block_id, kind, target_id, heap_id)",
        plan.relations,
    )
    _insert(c, "INSERT OR IGNORE INTO block_files (block_id, hash, heap_id)", plan.files)
    return plan.ordered(len(changes))


def _commit_changes(
    c: sqlite3.Connection, changes: list[BlockChange], now: int
) -> list[CommitResult]:
    """Edits of existing blocks first (``docs.commit_changes``), then new blocks in bulk."""
    new = [ch for ch in changes if rules.bulk_creatable(ch)]
    old = [ch for ch in changes if not rules.bulk_creatable(ch)]
    return rules.merge_results(
        changes, docs.commit_changes(c, old, now) + _create_blocks(c, new, now)
    )


def _commit_batch(
    c: sqlite3.Connection, batch: ScanBatch, now: int
) -> tuple[list[CommitResult], dict[str, str]]:
    results = _commit_changes(c, list(batch.changes), now)
    entries, written, files = rules.batch_rows(batch, results)
    _insert(
        c,
        "INSERT OR IGNORE INTO files (hash, id, size, mime_type, name, source_path, "
        "meta, created_at)",
        [
            (
                f.hash,
                f.id,
                f.size,
                f.mime_type,
                f.name,
                f.source_path,
                json.dumps(f.meta),
                f.created_at,
            )
            for f in files
        ],
    )
    _insert(
        c,
        f"INSERT INTO scan_entries ({ENTRY_COLUMNS})",
        [
            (
                e.heap_id,
                e.path,
                e.kind,
                e.block_id,
                e.folder_id,
                e.size,
                e.mtime_ns,
                e.hash,
                int(e.missing),
                e.scan_id,
                e.updated_at,
                e.dev,
                e.ino,
                e.ctime_ns,
            )
            for e in entries
        ],
        "ON CONFLICT (heap_id, path) DO UPDATE SET kind=excluded.kind, "
        "block_id=excluded.block_id, folder_id=excluded.folder_id, size=excluded.size, "
        "mtime_ns=excluded.mtime_ns, hash=excluded.hash, missing=excluded.missing, "
        "scan_id=excluded.scan_id, updated_at=excluded.updated_at, dev=excluded.dev, "
        "ino=excluded.ino, ctime_ns=excluded.ctime_ns",
    )
    for chunk in _chunks(list(batch.seen)):
        c.execute(
            f"UPDATE scan_entries SET scan_id=? WHERE heap_id=? AND path IN ({_marks(chunk)})",
            (batch.scan_id, batch.heap_id, *chunk),
        )
    for chunk in _chunks(sorted(set(batch.hashes) | written)):
        c.execute(REPOINT.format(_marks(chunk)), chunk)
    for h, path in batch.replaced:
        c.execute(
            f"UPDATE files SET source_path = ({PRESENT}) WHERE hash=? AND source_path=?", (h, path)
        )
    return results, _file_ids(c, [f.hash for f in batch.files])


def _holding(c: sqlite3.Connection, hash: str, owner_id: str) -> list[tuple[str, str]]:
    rows = c.execute(
        "SELECT f.heap_id, f.block_id FROM block_files f JOIN heaps h ON "
        "h.id = f.heap_id WHERE f.hash=? AND h.owner_id=? ORDER BY f.block_id",
        (hash, owner_id),
    )
    return [(r[0], r[1]) for r in rows]


class SqliteScans:
    """The folder-scan methods of SqliteStorage (mixed in; ``self.rt`` is its runtime)."""

    rt: SqliteRuntime

    async def scan_entries(self, heap_id: str, paths: list[str]) -> dict[str, ScanEntry]:
        return await self.rt.read(_entries, heap_id, paths)

    async def scan_entries_by_hash(
        self, heap_id: str, hashes: list[str]
    ) -> dict[str, list[ScanEntry]]:
        return await self.rt.read(_by_hash, heap_id, hashes)

    async def scan_entries_at(self, path: str) -> list[ScanEntry]:
        return await self.rt.read(_at, path)

    async def unseen_scan_entries(
        self, heap_id: str, folder: str, scan_id: str, after: str, limit: int
    ) -> list[ScanEntry]:
        return await self.rt.read(_unseen, heap_id, folder, scan_id, after, limit)

    async def file_ids(self, hashes: list[str]) -> dict[str, str]:
        return await self.rt.read(_file_ids, hashes)

    async def commit_scan_batch(
        self, batch: ScanBatch, now: int
    ) -> tuple[list[CommitResult], dict[str, str]]:
        return await self.rt.write(_commit_batch, batch, now)

    async def blocks_holding_file(self, hash: str, owner_id: str) -> list[tuple[str, str]]:
        return await self.rt.read(_holding, hash, owner_id)
