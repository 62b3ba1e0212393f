"""PostgreSQL units of work for heaps and blocks, the counterpart of ``sqlite.documents``.

Each function takes an asyncpg connection and is run by one runner of ``runtime`` (or
``snapshot`` below), so a call crosses the trio/asyncio bridge once. What a commit may do and
which rows it writes is decided by ``storage.rules``, as for SQLite.

Transactions run at READ COMMITTED; locks stand in for the SQLite engine's single writer.
Every transaction that writes blocks takes its locks in this order, so none can deadlock
another:

1. a transaction-scoped advisory lock per block id written (``BLOCK_LOCK``, keys sorted):
   writers of one block, including the creators of a new one, take turns, and a creator
   sees the block a concurrent creator just committed instead of running into it;
2. the heap rows (``FOR NO KEY UPDATE``, ids sorted; ``heaper_push_batch``, 0025: ``FOR KEY
   SHARE``, its tick after 3). A change takes its heap's next time under this lock, held to
   COMMIT: times are unique and commit-ordered per heap (a reader seeing one sees all before);
3. the existing block rows (``FOR UPDATE``, ids sorted); the optimistic ``expected_last_seq``
   check reads the locked row.

Reads that need several statements to agree (``feed.changes_since``) run in one REPEATABLE READ
snapshot; ``load_block`` is a single statement.

PostgreSQL stores less than SQLite: no NUL character in TEXT or JSONB, no NaN or infinity in
JSONB. Callers hand in projections already cleaned of those (``BlockProjection``), so both
engines store the same values. JSONB keeps object keys in its own order, not the order written.
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from heaper_trio.protocol import announce
from heaper_trio.records import (
    BlockChange,
    BlockQuery,
    BlockRecord,
    CommitResult,
    CommitStatus,
    Heap,
    StoredBlock,
    UpdateInfo,
)
from heaper_trio.records.changes import change_kind
from heaper_trio.storage import block_query, history_rows, rules, text_pieces
from heaper_trio.storage.errors import HeapNotFound
from heaper_trio.storage.postgres import commit_batch, text_parts
from heaper_trio.storage.postgres.files import write_block_files
from heaper_trio.storage.postgres.notify import block_pointer, notify
from heaper_trio.storage.postgres.push_reads import LOAD_BLOCKS, stored_block
from heaper_trio.storage.postgres.runtime import Conn, Pool, T, _connection
from heaper_trio.storage.postgres.search import index_block
from heaper_trio.storage.postgres.text_parts import PG_RECORD_COLUMNS
from heaper_trio.storage.rows import heap_row

# First key of the two-key advisory locks on block ids (a key space apart from the one-key
# locks in engine.py); the second key is a 32-bit hash of the block id.
BLOCK_LOCK = 0x68656170  # "heap"
# Parameter types of the block columns a commit writes (``rules.block_columns`` and
# ``rules.created_columns``): asyncpg infers none for a NULL.
COLUMN_TYPES = {
    "type": "text",
    "title": "text",
    "text": "text",
    "relations": "jsonb",
    "files": "jsonb",
    "apps": "jsonb",
    "updated_at": "bigint",
    "deleted_at": "bigint",
    "permanently_deleted_at": "bigint",
    "state_vector": "bytea",
    "size": "bigint",
    "last_seq": "bigint",
    "text_parts": "bigint",
    "id": "text",
    "heap_id": "text",
    "created_at": "bigint",
    "created_by": "text",
    "sync_version": "int4",
}


async def snapshot(pool: Pool, work: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Runner: read-only ``work`` in one REPEATABLE READ snapshot; cancellable at any point."""
    async with _connection(pool) as c, c.transaction(isolation="repeatable_read", readonly=True):
        return await work(c, *args)


def block_key(block_id: str) -> int:
    """A stable signed 32-bit key for ``block_id`` (collisions only make writers take turns)."""
    h = zlib.crc32(block_id.encode())
    return h - (1 << 32) if h >= 1 << 31 else h


async def _lock_blocks(c: Conn, block_ids: list[str]) -> None:
    keys = sorted({block_key(b) for b in block_ids})
    # unnest yields the keys in array order and the aggregate takes the locks in that order.
    await c.fetchval(
        "SELECT count(pg_advisory_xact_lock($1, k)) FROM unnest($2::int4[]) AS k", BLOCK_LOCK, keys
    )


async def get_heap(c: Conn, heap_id: str) -> Heap | None:
    return heap_row(await c.fetchrow("SELECT * FROM heaps WHERE id=$1", heap_id))


async def list_heaps(c: Conn, owner_id: str) -> list[Heap]:
    # COLLATE "C": the byte order SQLite uses, whatever the database's locale.
    rows = await c.fetch(
        'SELECT * FROM heaps WHERE owner_id=$1 ORDER BY created_at, id COLLATE "C"', owner_id
    )
    return [h for h in map(heap_row, rows) if h is not None]


class _RootRefused(Exception):
    """The root change did not create its block: roll the heap back too."""


async def create_heap(
    c: Conn, heap: Heap, root: BlockChange, now: int, announce_as: str | None = None
) -> bool:
    await _lock_blocks(c, [root.block_id])
    taken = await c.fetchval(
        "SELECT EXISTS (SELECT 1 FROM heaps WHERE id=$1) "
        "OR EXISTS (SELECT 1 FROM blocks WHERE id=$2) "
        "OR EXISTS (SELECT 1 FROM block_tombstones WHERE block_id=$2)",
        heap.id,
        root.block_id,
    )
    if taken:
        return False
    try:
        async with c.transaction():  # a savepoint: a lost race leaves a usable transaction
            await c.execute(
                "INSERT INTO heaps (id, owner_id, name, root_block_id, created_at, clock) "
                "VALUES ($1, $2, $3, $4, $5, $6)",
                heap.id,
                heap.owner_id,
                heap.name,
                heap.root_block_id,
                heap.created_at,
                now - 1,
            )
            result = await commit_change(c, root, now)
            if result.status is not CommitStatus.created:
                raise _RootRefused
    except (asyncpg.UniqueViolationError, _RootRefused):  # a concurrent creation won
        return False
    if announce_as is not None:
        await notify(
            c,
            [
                block_pointer(
                    announce_as,
                    "created",
                    heap.id,
                    root.block_id,
                    result.last_seq,
                    result.sync_version,
                    result.updated_at,
                )
            ],
        )
    return True


async def load_block(c: Conn, block_id: str) -> StoredBlock | None:
    # One statement, one snapshot: a compaction committing meanwhile cannot split the row
    # from its log.
    row = await c.fetchrow(f"{LOAD_BLOCKS} WHERE id=$1", block_id)
    return None if row is None else stored_block(row)


async def get_blocks(c: Conn, block_ids: list[str]) -> dict[str, BlockRecord]:
    rows = await c.fetch(
        f"SELECT {PG_RECORD_COLUMNS} FROM blocks WHERE id = ANY($1::text[])", list(block_ids)
    )
    return {r.id: r for r in await text_parts.records(c, rows)}


async def tombstones(c: Conn, block_ids: list[str]) -> dict[str, tuple[str, int]]:
    rows = await c.fetch(
        "SELECT block_id, heap_id, deleted_at FROM block_tombstones "
        "WHERE block_id = ANY($1::text[])",
        list(block_ids),
    )
    return {r[0]: (r[1], r[2]) for r in rows}


async def _tick(c: Conn, heap_id: str, now: int) -> int:
    """The heap's next change time; the row lock, held until COMMIT, orders the callers."""
    clock = await c.fetchval(
        "UPDATE heaps SET clock = GREATEST($1::bigint, clock + 1) WHERE id=$2 RETURNING clock",
        now,
        heap_id,
    )
    if clock is None:
        raise HeapNotFound(heap_id)
    return int(clock)


async def commit_change(c: Conn, ch: BlockChange, now: int) -> CommitResult:
    current = await c.fetchrow(
        "SELECT heap_id, last_seq, sync_version, title, text, text_parts FROM blocks WHERE id=$1 "
        "FOR UPDATE",
        ch.block_id,
    )
    tombstoned = (
        rules.creates(ch)
        and await c.fetchval("SELECT 1 FROM block_tombstones WHERE block_id=$1", ch.block_id)
        is not None
    )
    if rules.commit_conflict(ch, current, tombstoned):
        return rules.conflict(ch)
    updated_at = await _tick(c, ch.heap_id, now)
    base = 0 if current is None else current["last_seq"]
    last_seq = base + len(ch.updates)
    columns = rules.block_columns(ch, updated_at, last_seq)
    if current is None:
        columns.update(rules.created_columns(ch, updated_at))
        big = text_pieces.in_pieces(ch.projection.text, False)
        columns["text"] = "" if big else ch.projection.text
        names = ", ".join(columns)
        marks = ", ".join(f"${i}::{COLUMN_TYPES[k]}" for i, k in enumerate(columns, 1))
        await c.execute(f"INSERT INTO blocks ({names}) VALUES ({marks})", *columns.values())
        if big:
            await text_parts.created(c, ch.block_id, ch.projection.text)
        await index_block(c, ch.block_id, None, ch.projection.title, ch.projection.text)
    else:
        was, old_text = await text_parts.current_text(c, ch.block_id, current)
        stored = await text_parts.store(c, ch.block_id, was, ch.projection.text)
        columns["text"], columns["text_parts"] = stored
        sets = ", ".join(f"{k}=${i}::{COLUMN_TYPES[k]}" for i, k in enumerate(columns, 1))
        await c.execute(
            f"UPDATE blocks SET {sets} WHERE id=${len(columns) + 1}", *columns.values(), ch.block_id
        )
        old = (current["title"], old_text)
        await index_block(c, ch.block_id, old, ch.projection.title, ch.projection.text)
    log = rules.log_rows(ch, base, now)
    if log:
        await c.execute(
            "INSERT INTO block_updates (block_id, seq, data, created_at, author_id) "
            "SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[], $4::bigint[], "
            "$5::text[])",
            *rules.columns(log, 5),
        )
    if ch.compacted is not None:
        snap, covers = ch.compacted
        await c.execute(
            "UPDATE blocks SET snapshot=$1, snapshot_seq=$2 WHERE id=$3 AND snapshot_seq < $2",
            bytes(snap),
            covers,
            ch.block_id,
        )
        await c.execute(history_rows.move_sql(b="$1", s="$2::bigint"), ch.block_id, covers)
        await c.execute(
            "DELETE FROM block_updates WHERE block_id=$1 AND seq <= $2", ch.block_id, covers
        )
    await c.execute("DELETE FROM block_relations WHERE block_id=$1", ch.block_id)
    relations = rules.relation_rows(ch.block_id, ch.heap_id, ch.projection)
    if relations:
        await c.execute(
            "INSERT INTO block_relations (block_id, kind, target_id, heap_id) SELECT * FROM "
            "unnest($1::text[], $2::text[], $3::text[], $4::text[]) ON CONFLICT DO NOTHING",
            *rules.columns(relations, 4),
        )
    await write_block_files(c, ch.block_id, ch.heap_id, ch.projection.file_hashes)
    await c.execute(
        "UPDATE heaps SET name=$1 WHERE id=$2 AND root_block_id=$3",
        ch.projection.title,
        ch.heap_id,
        ch.block_id,
    )
    return rules.commit_result(ch, current, updated_at, last_seq)


async def _commit_owned(
    c: Conn,
    changes: list[BlockChange],
    now: int,
    refused: list[bool],
    heaps: list[Any],
    locked: list[Any],
    mode: str,
) -> list[CommitResult]:
    """The changes not ``refused`` (a conflict each: ``rules.not_owner``), under the locks
    ``commit_changes`` took: in one go if they can be (``mode``), else one by one."""
    kept = [ch for ch, no in zip(changes, refused, strict=True) if not no]
    results: list[CommitResult] | None = None
    rows = {r["id"]: r for r in locked}
    roots = {r["id"]: r["root_block_id"] for r in heaps}
    if kept and mode == commit_batch.BARE and commit_batch.batchable(kept):
        try:  # no savepoint: on a surprise the caller rolls back and goes one by one
            results = await commit_batch.commit_all(c, kept, now, roots, rows)
        except (HeapNotFound, asyncpg.UniqueViolationError) as e:
            raise commit_batch.OneByOne from e
    elif kept and mode == commit_batch.SAVEPOINT and commit_batch.batchable(kept):
        try:
            async with c.transaction():  # a savepoint: on a surprise, one by one below
                results = await commit_batch.commit_all(c, kept, now, roots, rows)
        except (HeapNotFound, asyncpg.UniqueViolationError):
            results = None
    if results is None:
        results = []
        for ch in kept:
            try:
                async with c.transaction():  # a savepoint: a refused change rolls back alone
                    result = await commit_change(c, ch, now)
            except (HeapNotFound, asyncpg.UniqueViolationError):  # heap gone, or block made
                result = rules.conflict(ch)
            results.append(result)
    done = iter(results)
    return [rules.conflict(ch) if no else next(done) for ch, no in zip(changes, refused)]


async def commit_changes(
    c: Conn,
    changes: list[BlockChange],
    now: int,
    announce_as: str | None = None,
    mode: str = commit_batch.SAVEPOINT,
) -> list[CommitResult]:
    """With ``announce_as`` (this process's live id), every stored change is also announced to
    the other processes by a NOTIFY in this transaction, delivered at COMMIT (``notify``).
    ``mode``: how the changes are written (``commit_batch.SAVEPOINT``, ``BARE``, ``ONE_BY_ONE``)."""
    # Every lock up front, in the global order of the module docstring; then the changes run
    # in the caller's order (their change times follow it, as with SQLite).
    block_ids = sorted({ch.block_id for ch in changes})
    await _lock_blocks(c, block_ids)
    heaps = await c.fetch(
        "SELECT id, root_block_id, owner_id FROM heaps WHERE id = ANY($1::text[]) "
        'ORDER BY id COLLATE "C" FOR NO KEY UPDATE',
        sorted({ch.heap_id for ch in changes}),
    )
    locked = await c.fetch(commit_batch.LOCK_ROWS, block_ids)
    trashed = {r["id"]: r["trashed"] for r in locked}
    owners = {r["id"]: r["owner_id"] for r in heaps}
    refused = [rules.not_owner(ch, owners.get(ch.heap_id)) for ch in changes]
    results = await _commit_owned(c, changes, now, refused, heaps, locked, mode)
    pointers = []
    for ch, result in zip(changes, results, strict=True):
        if result.status is CommitStatus.conflict:
            continue
        was, now_trashed = trashed.get(ch.block_id, False), ch.projection.deleted_at is not None
        trashed[ch.block_id] = now_trashed
        if announce_as is not None:
            # The kind DocumentService gives the same change, by the same rule.
            kind = change_kind(
                created=result.status is CommitStatus.created,
                was_deleted=was,
                now_deleted=now_trashed,
            )
            inline = announce.inline_updates(
                announce_as, ch.block_id, result.last_seq, result.sync_version, ch.updates
            )
            if inline is not None:  # first: a receiver then needs no reread for the pointer
                pointers.append(inline)
            pointers.append(
                block_pointer(
                    announce_as,
                    kind,
                    ch.heap_id,
                    ch.block_id,
                    result.last_seq,
                    result.sync_version,
                    result.updated_at,
                )
            )
    if pointers:
        await notify(c, pointers)
    return results


async def related(c: Conn, block_id: str) -> dict[str, list[str]]:
    """Outgoing lists are the block's own document; incoming ones (children, backlinks) come
    only from blocks in heaps of the block's owner (see the SQLite twin)."""
    outgoing = await c.fetch(
        "SELECT kind, target_id FROM block_relations WHERE block_id=$1 "
        'ORDER BY target_id COLLATE "C"',
        block_id,
    )
    incoming = await c.fetch(
        "SELECT r.kind, r.block_id FROM block_relations r JOIN blocks b ON b.id = r.block_id "
        "JOIN heaps h ON h.id = b.heap_id "
        "WHERE r.target_id=$1 AND b.deleted_at IS NULL AND h.owner_id = ("
        "SELECT o.owner_id FROM blocks t JOIN heaps o ON o.id = t.heap_id WHERE t.id=$1) "
        'ORDER BY r.block_id COLLATE "C"',
        block_id,
    )
    return rules.related_lists(outgoing, incoming)


async def block_history(c: Conn, block_id: str) -> tuple[int, list[UpdateInfo]]:
    snapshot_seq = await c.fetchval("SELECT snapshot_seq FROM blocks WHERE id=$1", block_id)
    if snapshot_seq is None:
        return 0, []
    rows = await c.fetch(
        "SELECT seq, created_at, author_id, octet_length(data) AS size FROM block_updates "
        "WHERE block_id=$1 AND seq > $2 ORDER BY seq",
        block_id,
        snapshot_seq,
    )
    return int(snapshot_seq), [
        UpdateInfo(r["seq"], r["created_at"], r["author_id"], r["size"]) for r in rows
    ]


async def marked_gone(c: Conn) -> dict[str, list[str]]:
    rows = await c.fetch(
        "SELECT heap_id, id FROM blocks WHERE permanently_deleted_at IS NOT NULL "
        'AND deleted_at IS NOT NULL ORDER BY heap_id, id COLLATE "C"'
    )
    return rules.by_heap([(r[0], r[1]) for r in rows])


async def trashed(c: Conn, heap_id: str) -> list[BlockRecord]:
    rows = await c.fetch(
        f"SELECT {PG_RECORD_COLUMNS} FROM blocks WHERE heap_id=$1 AND deleted_at IS NOT NULL "
        'ORDER BY deleted_at DESC, id COLLATE "C"',
        heap_id,
    )
    return await text_parts.records(c, rows)


async def purge_blocks(
    c: Conn, heap_id: str, block_ids: list[str], now: int, announce_as: str | None = None
) -> list[str]:
    # The same lock order as commit_changes: block keys, heap row, block rows.
    await _lock_blocks(c, block_ids)
    await c.execute("SELECT 1 FROM heaps WHERE id=$1 FOR NO KEY UPDATE", heap_id)
    rows = await c.fetch(
        "SELECT id FROM blocks WHERE id = ANY($1::text[]) AND heap_id=$2 "
        'AND deleted_at IS NOT NULL ORDER BY id COLLATE "C" FOR UPDATE',
        block_ids,
        heap_id,
    )
    present = {r["id"] for r in rows}
    purged = [b for b in block_ids if b in present]
    for block_id in dict.fromkeys(purged):
        at = await _tick(c, heap_id, now)
        await c.execute("DELETE FROM block_updates WHERE block_id=$1", block_id)
        await c.execute("DELETE FROM block_relations WHERE block_id=$1", block_id)
        await c.execute("DELETE FROM block_files WHERE block_id=$1", block_id)
        await c.execute("DELETE FROM blocks WHERE id=$1", block_id)
        await c.execute(
            "INSERT INTO block_tombstones (block_id, heap_id, deleted_at) VALUES ($1, $2, $3)",
            block_id,
            heap_id,
            at,
        )
    gone = list(dict.fromkeys(purged))
    if announce_as is not None and gone:  # the time HeapService announces, as it does locally
        await notify(
            c, [block_pointer(announce_as, "purged", heap_id, b, updated_at=now) for b in gone]
        )
    return gone


async def delete_heap(c: Conn, heap_id: str, announce_as: str | None = None) -> bool:
    await c.execute("SELECT 1 FROM heaps WHERE id=$1 FOR UPDATE", heap_id)
    await c.execute(
        "DELETE FROM block_updates WHERE block_id IN (SELECT id FROM blocks WHERE heap_id=$1)",
        heap_id,
    )
    await c.execute("DELETE FROM block_relations WHERE heap_id=$1", heap_id)
    await c.execute("DELETE FROM block_files WHERE heap_id=$1", heap_id)
    await c.execute("DELETE FROM blocks WHERE heap_id=$1", heap_id)
    await c.execute("DELETE FROM block_tombstones WHERE heap_id=$1", heap_id)
    deleted = await c.fetchval("DELETE FROM heaps WHERE id=$1 RETURNING 1", heap_id) is not None
    if deleted and announce_as is not None:
        await notify(c, [block_pointer(announce_as, "heap_deleted", heap_id)])
    return deleted


async def heap_stats(c: Conn, heap_id: str) -> dict[str, Any]:
    by_type = await c.fetch(
        "SELECT type, COUNT(*) FROM blocks WHERE heap_id=$1 AND deleted_at IS NULL GROUP BY type",
        heap_id,
    )
    trash = await c.fetchval(
        "SELECT COUNT(*) FROM blocks WHERE heap_id=$1 AND deleted_at IS NOT NULL", heap_id
    )
    files = await c.fetch(
        "SELECT files FROM blocks WHERE heap_id=$1 AND files <> '{}'::jsonb", heap_id
    )
    clock = await c.fetchval("SELECT clock FROM heaps WHERE id=$1", heap_id)
    return rules.heap_stats(by_type, trash, files, clock)


async def query_blocks(c: Conn, heap_id: str, q: BlockQuery, limit: int) -> list[BlockRecord]:
    sql, params = block_query.select_sql(block_query.POSTGRES, heap_id, q, PG_RECORD_COLUMNS, limit)
    return await text_parts.records(c, await c.fetch(sql, *params))


async def count_blocks(c: Conn, heap_id: str, q: BlockQuery) -> dict[str, int]:
    sql, params = block_query.count_sql(block_query.POSTGRES, heap_id, q)
    return {(r[0] or "unknown"): r[1] for r in await c.fetch(sql, *params)}
