"""The PostgreSQL change feed (``GET /api/sync/delta``), the counterpart of
``sqlite.feed``: keyset pages in (change time, id) order, run in one REPEATABLE READ snapshot
(``documents.snapshot``) so that clock, rows and totals agree with each other."""

from __future__ import annotations

from heaper_trio.records import ChangePage
from heaper_trio.storage.postgres.runtime import Conn
from heaper_trio.storage.rows import DELTA_COLUMNS, DeltaTotals, delta_rows, page, tie_at


async def changes_since(
    c: Conn, heap_id: str, since: int, limit: int, memo: DeltaTotals | None = None
) -> ChangePage:
    """Run in one snapshot (``snapshot``): clock, rows and totals agree with each other.
    Keyset pages in (change time, id) order, only the columns delta answers; the totals are
    counted on a walk's first page and carried to the next ones by ``memo``."""
    clock_row = await c.fetchval("SELECT clock FROM heaps WHERE id=$1", heap_id)
    clock = int(clock_row) if clock_row is not None else since
    rows = await c.fetch(
        f"SELECT {DELTA_COLUMNS} FROM blocks WHERE heap_id=$1 AND updated_at > $2 "
        'ORDER BY updated_at, id COLLATE "C" LIMIT $3',
        heap_id,
        since,
        limit + 1,
    )
    tie = tie_at(rows, limit, 5)  # updated_at
    if tie is not None:
        rows += await c.fetch(
            f"SELECT {DELTA_COLUMNS} FROM blocks WHERE heap_id=$1 AND updated_at=$2 "
            'AND id COLLATE "C" > $3 ORDER BY id COLLATE "C"',
            heap_id,
            tie,
            rows[-1][0],
        )
    deleted = await c.fetch(
        "SELECT block_id, deleted_at FROM block_tombstones WHERE heap_id=$1 AND deleted_at > $2 "
        'ORDER BY deleted_at, block_id COLLATE "C" LIMIT $3',
        heap_id,
        since,
        limit + 1,
    )
    tie = tie_at(deleted, limit, 1)
    if tie is not None:
        deleted += await c.fetch(
            "SELECT block_id, deleted_at FROM block_tombstones WHERE heap_id=$1 "
            'AND deleted_at=$2 AND block_id COLLATE "C" > $3 ORDER BY block_id COLLATE "C"',
            heap_id,
            tie,
            deleted[-1][0],
        )
    totals = None if memo is None else memo.get(heap_id, since, clock)
    if totals is None:
        row = await c.fetchrow(
            "SELECT (SELECT COUNT(*) FROM blocks WHERE heap_id=$1 AND updated_at > $2), "
            "(SELECT COUNT(*) FROM block_tombstones WHERE heap_id=$1 AND deleted_at > $2)",
            heap_id,
            since,
        )
        assert row is not None  # a SELECT without FROM gives one row
        totals = (int(row[0]), int(row[1]))
    answer = page(
        delta_rows(rows),
        [(r[0], r[1]) for r in deleted],
        clock,
        limit,
        totals[0],
        totals[1],
    )
    if memo is not None:
        memo.carry(heap_id, answer, clock)
    return answer
