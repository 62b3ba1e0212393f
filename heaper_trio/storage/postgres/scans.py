"""PostgreSQL: the folder-scan index (what each scanned path became) and its batch commits.

A batch's block changes are announced to the other server processes inside its transaction, as
block commits are (``notify``, issue 9, item 11): a process killed right after the
commit cannot leave them unannounced.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from heaper_trio.records import BlockChange, CommitResult, CommitStatus, ScanBatch, ScanEntry
from heaper_trio.storage import rules
from heaper_trio.storage.postgres import documents as docs
from heaper_trio.storage.postgres.notify import block_pointer, notify
from heaper_trio.storage.postgres.runtime import Conn, PostgresBridge, read, tx
from heaper_trio.storage.postgres.search import index_new_blocks
from heaper_trio.storage.rows import ENTRY_COLUMNS, entry_row


async def _entries(c: Conn, heap_id: str, paths: list[str]) -> dict[str, ScanEntry]:
    rows = await c.fetch(
        f"SELECT {ENTRY_COLUMNS} FROM scan_entries WHERE heap_id=$1 AND path = ANY($2::text[])",
        heap_id,
        paths,
    )
    return {r["path"]: entry_row(r) for r in rows}


async def _at(c: Conn, path: str) -> list[ScanEntry]:
    rows = await c.fetch(
        f"SELECT {ENTRY_COLUMNS} FROM scan_entries WHERE path=$1 AND kind='file' ORDER BY heap_id",
        path,
    )
    return [entry_row(r) for r in rows]


async def _by_hash(c: Conn, heap_id: str, hashes: list[str]) -> dict[str, list[ScanEntry]]:
    rows = await c.fetch(
        f"SELECT {ENTRY_COLUMNS} FROM scan_entries WHERE hash = ANY($1::text[])"
        " AND heap_id=$2 AND kind='file' AND NOT missing ORDER BY path",
        hashes,
        heap_id,
    )
    out: dict[str, list[ScanEntry]] = {}
    for r in rows:
        out.setdefault(r["hash"], []).append(entry_row(r))
    return out


async def _unseen(
    c: Conn, heap_id: str, folder: str, scan_id: str, after: str, limit: int
) -> list[ScanEntry]:
    low, high = rules.unseen_range(folder, after)
    rows = await c.fetch(
        f"SELECT {ENTRY_COLUMNS} FROM scan_entries WHERE heap_id=$1 AND path > $2 AND path < $3 "
        "AND scan_id <> $4 AND NOT missing ORDER BY path LIMIT $5",
        heap_id,
        low,
        high,
        scan_id,
        limit,
    )
    return [entry_row(r) for r in rows]


async def _file_ids(c: Conn, hashes: list[str]) -> dict[str, str]:
    rows = await c.fetch("SELECT hash, id FROM files WHERE hash = ANY($1::text[])", hashes)
    return {r[0]: r[1] for r in rows}


PRESENT = (
    "SELECT e.path FROM scan_entries e WHERE e.hash = files.hash AND e.kind = 'file' "
    "AND NOT e.missing ORDER BY e.path LIMIT 1"
)
REPOINT = (
    f"UPDATE files SET source_path = ({PRESENT}) "
    "WHERE hash = ANY($1::text[]) AND source_path IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "
    "scan_entries e WHERE e.hash = files.hash AND e.path = files.source_path AND NOT e.missing) "
    "AND EXISTS (SELECT 1 FROM scan_entries e WHERE e.hash = files.hash AND e.kind = 'file' "
    "AND NOT e.missing)"
)


async def _create_blocks(c: Conn, changes: list[BlockChange], now: int) -> list[CommitResult]:
    """``docs.commit_changes`` for blocks that do not exist yet (a scan makes thousands), a
    statement per table instead of a dozen round trips per block; same rows, same change times
    (the heap's clock ticks once per block, in order), same conflicts (the id is taken or
    tombstoned). The caller holds the blocks' advisory locks. A test holds the rows equal to
    those of ``commit_changes``."""
    ids = [ch.block_id for ch in changes]
    taken = {
        r[0]
        for r in await c.fetch(
            "SELECT id FROM blocks WHERE id = ANY($1::text[]) UNION "
            "SELECT block_id FROM block_tombstones WHERE block_id = ANY($1::text[])",
            ids,
        )
    }
    plan = rules.plan_creations(changes, taken)
    for heap_id, mine in plan.by_heap():
        n = len(mine)
        clock = await c.fetchval(
            "UPDATE heaps SET clock = GREATEST($1::bigint + $2 - 1, clock + $2) WHERE id=$3 "
            "RETURNING clock",
            now,
            n,
            heap_id,
        )
        rules.add_creations(plan, heap_id, mine, clock, now)
    if plan.blocks:
        await c.execute(
            f"INSERT INTO blocks ({rules.CREATED_BLOCK_COLUMNS}) SELECT * FROM unnest("
            "$1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[], "
            "$7::jsonb[], $8::jsonb[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bytea[], "
            "$13::bigint[], $14::bigint[], $15::bigint[], $16::text[], $17::int4[])",
            *rules.columns(plan.blocks, 17),
        )
        await index_new_blocks(c, [(b[0], b[3], b[4]) for b in plan.blocks])
    if plan.updates:
        await c.execute(
            "INSERT INTO block_updates (block_id, seq, data, created_at, author_id) "
            "SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[], $4::bigint[], "
            "$5::text[])",
            *rules.columns(plan.updates, 5),
        )
    if plan.relations:
        await c.execute(
            "INSERT INTO block_relations (block_id, kind, target_id, heap_id) SELECT * FROM "
            "unnest($1::text[], $2::text[], $3::text[], $4::text[]) ON CONFLICT DO NOTHING",
            *rules.columns(plan.relations, 4),
        )
    if plan.files:
        await c.execute(
            "INSERT INTO block_files (block_id, hash, heap_id) SELECT * FROM "
            "unnest($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING",
            *rules.columns(plan.files, 3),
        )
    return plan.ordered(len(changes))


async def _commit_changes(c: Conn, changes: list[BlockChange], now: int) -> list[CommitResult]:
    """Edits of existing blocks first (``docs.commit_changes``), then new blocks in bulk.
    Every block's advisory lock is taken first, so the lock order of ``documents``
    holds (block locks, then heap rows, then block rows)."""
    if not changes:
        return []
    await docs._lock_blocks(c, [ch.block_id for ch in changes])
    new = [ch for ch in changes if rules.bulk_creatable(ch)]
    old = [ch for ch in changes if not rules.bulk_creatable(ch)]
    done = (await docs.commit_changes(c, old, now) if old else []) + (
        await _create_blocks(c, new, now) if new else []
    )
    return rules.merge_results(changes, done)


async def _commit_batch(
    c: Conn, batch: ScanBatch, now: int, announce_as: str | None = None
) -> tuple[list[CommitResult], dict[str, str]]:
    results = await _commit_changes(c, list(batch.changes), now)
    if announce_as is not None:  # the kinds scans_commit.BlockWriter gives them locally
        heaps = {ch.block_id: ch.heap_id for ch in batch.changes}
        pointers = [
            block_pointer(
                announce_as,
                "created" if r.status is CommitStatus.created else "changed",
                heaps[r.block_id],
                r.block_id,
                r.last_seq,
                r.sync_version,
                r.updated_at,
            )
            for r in results
            if r.status is not CommitStatus.conflict
        ]
        if pointers:
            await notify(c, pointers)
    entries, written, files = rules.batch_rows(batch, results)
    if files:
        await c.execute(
            "INSERT INTO files (hash, id, size, mime_type, name, source_path, meta, created_at) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], "
            "$6::text[], $7::jsonb[], $8::bigint[]) ON CONFLICT DO NOTHING",
            [f.hash for f in files],
            [f.id for f in files],
            [f.size for f in files],
            [f.mime_type for f in files],
            [f.name for f in files],
            [f.source_path for f in files],
            [json.dumps(f.meta) for f in files],
            [f.created_at for f in files],
        )
    if entries:
        columns = list(
            zip(
                *[
                    (
                        e.heap_id,
                        e.path,
                        e.kind,
                        e.block_id,
                        e.folder_id,
                        e.size,
                        e.mtime_ns,
                        e.hash,
                        e.missing,
                        e.scan_id,
                        e.updated_at,
                        e.dev,
                        e.ino,
                        e.ctime_ns,
                    )
                    for e in entries
                ]
            )
        )
        await c.execute(
            f"INSERT INTO scan_entries ({ENTRY_COLUMNS}) SELECT * FROM unnest($1::text[], "
            "$2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[], "
            "$8::text[], $9::bool[], $10::text[], $11::bigint[], $12::bigint[], $13::bigint[], "
            "$14::bigint[]) "
            "ON CONFLICT (heap_id, path) DO UPDATE SET kind=excluded.kind, "
            "block_id=excluded.block_id, folder_id=excluded.folder_id, size=excluded.size, "
            "mtime_ns=excluded.mtime_ns, hash=excluded.hash, missing=excluded.missing, "
            "scan_id=excluded.scan_id, updated_at=excluded.updated_at, dev=excluded.dev, "
            "ino=excluded.ino, ctime_ns=excluded.ctime_ns",
            *[list(col) for col in columns],
        )
    if batch.seen:
        await c.execute(
            "UPDATE scan_entries SET scan_id=$1 WHERE heap_id=$2 AND path = ANY($3::text[])",
            batch.scan_id,
            batch.heap_id,
            list(batch.seen),
        )
    hashes = sorted(set(batch.hashes) | written)
    if hashes:
        await c.execute(REPOINT, hashes)
    if batch.replaced:
        await c.execute(
            f"UPDATE files SET source_path = ({PRESENT}) FROM unnest($1::text[], $2::text[]) "
            "AS r(h, p) WHERE files.hash = r.h AND files.source_path = r.p",
            [h for h, _ in batch.replaced],
            [p for _, p in batch.replaced],
        )
    return results, await _file_ids(c, [f.hash for f in batch.files])


async def _holding(c: Conn, hash: str, owner_id: str) -> list[tuple[str, str]]:
    rows = await c.fetch(
        "SELECT f.heap_id, f.block_id FROM block_files f JOIN heaps h ON "
        "h.id = f.heap_id WHERE f.hash=$1 AND h.owner_id=$2 ORDER BY f.block_id",
        hash,
        owner_id,
    )
    return [(r[0], r[1]) for r in rows]


class PostgresScans(PostgresBridge):
    """The folder-scan methods of PostgresStorage (mixed in; ``self._run`` crosses to asyncio)."""

    announce_as: str | None  # PostgresStorage.announce_commits_as
    _mark_blocks_announced: Callable[[list[CommitResult]], None]

    async def scan_entries(self, heap_id: str, paths: list[str]) -> dict[str, ScanEntry]:
        return await self._run(read, _entries, heap_id, paths)

    async def scan_entries_by_hash(
        self, heap_id: str, hashes: list[str]
    ) -> dict[str, list[ScanEntry]]:
        return await self._run(read, _by_hash, heap_id, hashes)

    async def scan_entries_at(self, path: str) -> list[ScanEntry]:
        return await self._run(read, _at, path)

    async def unseen_scan_entries(
        self, heap_id: str, folder: str, scan_id: str, after: str, limit: int
    ) -> list[ScanEntry]:
        return await self._run(read, _unseen, heap_id, folder, scan_id, after, limit)

    async def file_ids(self, hashes: list[str]) -> dict[str, str]:
        return await self._run(read, _file_ids, hashes)

    async def commit_scan_batch(
        self, batch: ScanBatch, now: int
    ) -> tuple[list[CommitResult], dict[str, str]]:
        origin = self.announce_as
        done: tuple[list[CommitResult], dict[str, str]] = await self._run(
            tx, _commit_batch, batch, now, origin
        )
        if origin is not None:
            self._mark_blocks_announced(done[0])
        return done

    async def blocks_holding_file(self, hash: str, owner_id: str) -> list[tuple[str, str]]:
        return await self._run(read, _holding, hash, owner_id)
