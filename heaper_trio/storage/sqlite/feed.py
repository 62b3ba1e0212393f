"""The SQLite change feed (``GET /api/sync/delta``): keyset pages in (change time, id)
order, run on a reader in one read transaction (``runtime.read``) so that clock, rows and
totals agree with each other."""

from __future__ import annotations

import sqlite3

import orjson

from heaper_trio.records import ChangePage, EncodedChangePage
from heaper_trio.storage.rows import (
    DELTA_COLUMNS,
    DeltaTotals,
    delta_rows,
    finish_encoded_page,
    page,
    page_end,
    tie_at,
)

# A changed and a removed block as the answer writes them (``web/json_sync.delta_json``):
# SQLite's JSON quoting is orjson's byte for byte (``json_like_orjson`` checks it at open).
CHANGED_JSON = (
    "json_object('block_id', id, 'updated_at', updated_at, 'sync_version', sync_version, "
    "'type', type, 'title', title, 'deleted_at', deleted_at)"
)
DELETED_JSON = "json_object('block_id', block_id, 'deleted_at', deleted_at)"
# Past every change time: "no upper bound" for a last page's range.
NO_CUT = 2**63 - 1
# Every character class JSON quoting treats apart (controls, quote, backslash, slash, DEL,
# two- three- and four-byte UTF-8, the line separators JavaScript minds).
PROBE = "".join(map(chr, range(32))) + '"\\/\x7f~é€\u2028\u2029\U0001f600'


def json_like_orjson(c: sqlite3.Connection) -> bool:
    """True if this SQLite quotes text as orjson does (3.40 does, for every code point): the
    encoded feed is only used then, so a library that quotes otherwise cannot change the
    answer's bytes, it only makes the feed take the Python path."""
    try:
        row = c.execute("SELECT json_object('t', ?)", (PROBE,)).fetchone()
    except sqlite3.Error:
        return False
    return bool(row and row[0] == orjson.dumps({"t": PROBE}).decode())


def _totals(
    c: sqlite3.Connection, heap_id: str, since: int, clock: int, memo: DeltaTotals | None
) -> tuple[int, int]:
    """What lies after ``since``: carried from the walk's previous page, or counted."""
    totals = None if memo is None else memo.get(heap_id, since, clock)
    if totals is None:
        row = c.execute(
            "SELECT (SELECT COUNT(*) FROM blocks WHERE heap_id=?1 AND updated_at > ?2), "
            "(SELECT COUNT(*) FROM block_tombstones WHERE heap_id=?1 AND deleted_at > ?2)",
            (heap_id, since),
        ).fetchone()
        totals = (int(row[0]), int(row[1]))
    return totals


def _clock(c: sqlite3.Connection, heap_id: str, since: int) -> int:
    clock_row = c.execute("SELECT clock FROM heaps WHERE id=?", (heap_id,)).fetchone()
    return int(clock_row[0]) if clock_row else since


def changes_since(
    c: sqlite3.Connection, heap_id: str, since: int, limit: int, memo: DeltaTotals | None = None
) -> ChangePage:
    """Keyset pages in (change time, id) order, only the columns delta answers; the totals
    are counted on a walk's first page and carried to the next ones by ``memo``."""
    clock = _clock(c, heap_id, since)
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
    totals = _totals(c, heap_id, since, clock, memo)
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


def changes_since_encoded(
    c: sqlite3.Connection, heap_id: str, since: int, limit: int, memo: DeltaTotals | None = None
) -> EncodedChangePage:
    """``changes_since``'s page with its rows written as JSON by SQLite, one string per feed
    (``group_concat`` over the ordered range): where the page ends is found first from two
    rows of each feed's index (``page_end``), then everything up to that end is one range."""
    clock = _clock(c, heap_id, since)
    ends = c.execute(
        "SELECT updated_at FROM blocks WHERE heap_id=? AND updated_at > ? "
        "ORDER BY updated_at, id LIMIT 2 OFFSET ?",
        (heap_id, since, limit - 1),
    ).fetchall()
    deleted_ends = c.execute(
        "SELECT deleted_at FROM block_tombstones WHERE heap_id=? AND deleted_at > ? "
        "ORDER BY deleted_at, block_id LIMIT 2 OFFSET ?",
        (heap_id, since, limit - 1),
    ).fetchall()
    cut = page_end(ends, deleted_ends)
    upto = NO_CUT if cut is None else cut
    n_changed, changed = c.execute(
        f"SELECT COUNT(*), group_concat(o, ',') FROM (SELECT {CHANGED_JSON} AS o FROM blocks "
        "WHERE heap_id=? AND updated_at > ? AND updated_at <= ? ORDER BY updated_at, id)",
        (heap_id, since, upto),
    ).fetchone()
    n_deleted, deleted = c.execute(
        f"SELECT COUNT(*), group_concat(o, ',') FROM (SELECT {DELETED_JSON} AS o "
        "FROM block_tombstones WHERE heap_id=? AND deleted_at > ? AND deleted_at <= ? "
        "ORDER BY deleted_at, block_id)",
        (heap_id, since, upto),
    ).fetchone()
    totals = _totals(c, heap_id, since, clock, memo)
    return finish_encoded_page(
        heap_id, clock, cut, (n_changed, changed), (n_deleted, deleted), totals, memo
    )
