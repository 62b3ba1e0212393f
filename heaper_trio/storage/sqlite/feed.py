"""The SQLite change feed (``GET /api/sync/delta``): keyset pages in (change time, id)
order, run on a reader in one read transaction (``runtime.read``) so that clock, rows and
totals agree with each other."""

from __future__ import annotations

import sqlite3

from heaper_trio.records import ChangePage
from heaper_trio.storage.rows import DELTA_COLUMNS, DeltaTotals, delta_rows, page, tie_at


def changes_since(
    c: sqlite3.Connection, heap_id: str, since: int, limit: int, memo: DeltaTotals | None = None
) -> ChangePage:
    """Keyset pages in (change time, id) order, only the columns delta answers; the totals
    are counted on a walk's first page and carried to the next ones by ``memo``."""
    clock_row = c.execute("SELECT clock FROM heaps WHERE id=?", (heap_id,)).fetchone()
    clock = int(clock_row[0]) if clock_row else since
    plain = c.cursor()  # tuples, not sqlite3.Row: a page maps a thousand rows by position
    plain.row_factory = None
    rows = plain.execute(
        f"SELECT {DELTA_COLUMNS} FROM blocks WHERE heap_id=? AND updated_at > ? "
        "ORDER BY updated_at, id LIMIT ?",
        (heap_id, since, limit + 1),
    ).fetchall()
    tie = tie_at(rows, limit, 5)  # updated_at
    if tie is not None:
        rows += plain.execute(
            f"SELECT {DELTA_COLUMNS} FROM blocks WHERE heap_id=? AND updated_at=? AND id > ? "
            "ORDER BY id",
            (heap_id, tie, rows[-1][0]),
        ).fetchall()
    deleted = c.execute(
        "SELECT block_id, deleted_at FROM block_tombstones WHERE heap_id=? AND deleted_at > ? "
        "ORDER BY deleted_at, block_id LIMIT ?",
        (heap_id, since, limit + 1),
    ).fetchall()
    tie = tie_at(deleted, limit, 1)
    if tie is not None:
        deleted += c.execute(
            "SELECT block_id, deleted_at FROM block_tombstones WHERE heap_id=? AND deleted_at=? "
            "AND block_id > ? ORDER BY block_id",
            (heap_id, tie, deleted[-1][0]),
        ).fetchall()
    totals = None if memo is None else memo.get(heap_id, since, clock)
    if totals is None:
        row = c.execute(
            "SELECT (SELECT COUNT(*) FROM blocks WHERE heap_id=?1 AND updated_at > ?2), "
            "(SELECT COUNT(*) FROM block_tombstones WHERE heap_id=?1 AND deleted_at > ?2)",
            (heap_id, since),
        ).fetchone()
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
