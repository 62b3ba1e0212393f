"""The PostgreSQL change feed (``GET /api/sync/delta``), the counterpart of
``sqlite.feed``: keyset pages in (change time, id) order, run in one REPEATABLE READ snapshot
(``documents.snapshot``) so that clock, rows and totals agree with each other."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

import orjson

from heaper_trio.records import ChangePage, EncodedChangePage
from heaper_trio.storage.postgres.runtime import Conn
from heaper_trio.storage.rows import (
    DELTA_COLUMNS,
    DeltaTotals,
    delta_rows,
    finish_encoded_page,
    page,
    tie_at,
)

# A changed and a removed block as the answer writes them (``web/json_sync.delta_json``).
# json_build_object spaces its output (``"a" : 1``), so the objects are put together from
# ``to_json`` of each text, whose quoting is orjson's (``json_like_orjson`` checks it).
CHANGED_JSON = (
    """'{"block_id":' || to_json(id)::text || ',"updated_at":' || updated_at """
    """|| ',"sync_version":' || sync_version """
    """|| ',"type":' || COALESCE(to_json(type)::text, 'null') """
    """|| ',"title":' || to_json(title)::text """
    """|| ',"deleted_at":' || COALESCE(deleted_at::text, 'null') || '}'"""
)
DELETED_JSON = (
    """'{"block_id":' || to_json(block_id)::text || ',"deleted_at":' || deleted_at || '}'"""
)
NO_CUT = 2**63 - 1  # past every change time: "no upper bound" for a last page's range
# Every character class JSON quoting treats apart (PostgreSQL text holds no NUL).
PROBE = "".join(map(chr, range(1, 32))) + '"\\/\x7f~é€\u2028\u2029\U0001f600'


async def json_like_orjson(c: Conn) -> bool:
    """True if this server quotes text as orjson does: the encoded feed is only used then
    (``PostgresStorage.open``), so a server that quotes otherwise cannot change the answer's
    bytes, it only makes the feed take the Python path."""
    got = await c.fetchval("SELECT '{\"t\":' || to_json($1::text)::text || '}'", PROBE)
    return bool(got == orjson.dumps({"t": PROBE}).decode())


async def _totals(
    c: Conn, heap_id: str, since: int, clock: int, memo: DeltaTotals | None
) -> tuple[int, int]:
    """What lies after ``since``: carried from the walk's previous page, or counted."""
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
    return totals


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
    totals = await _totals(c, heap_id, since, clock, memo)
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


# The page read whole, for a page whose ``KEYSET_PAGE`` rows end in a tie at its cut. One
# statement, so one snapshot without a transaction and one round trip (each costs the
# server more CPU than the page's rows do, issue 12 item 4): the heap's clock and whether it is
# the asker's ($5; NULL asks nothing, and nothing is read of a heap that is not the asker's);
# the change time of each feed's ``limit``-th row after ``since``, when a row follows it
# (``page_end``); the page's range in both feeds, up to the earlier of those times; and the
# totals of what follows ``since``, counted only when the clock is not the one the walk's
# previous page left them at ($4, NULL when nothing was carried). The changed rows come back
# as one array per column, in (time, id) order (the ordered subquery feeds the aggregates),
# and are written as JSON here by orjson: PostgreSQL's own JSON of a thousand rows (``to_json``
# of each text, concatenated) costs its backend more than the round trip, the array decode and
# orjson together (about 2.5 against 1.9 ms a page, ``scripts/bench_delta.py``'s heap).
_MINE = "(SELECT mine FROM m)"
ENCODED_PAGE = f"""
WITH h AS (SELECT clock, owner_id FROM heaps WHERE id = $1),
m AS (SELECT COALESCE((SELECT owner_id = $5 FROM h), $5::text IS NULL) AS mine),
ce AS (SELECT updated_at FROM blocks WHERE heap_id = $1 AND updated_at > $2 AND {_MINE}
       ORDER BY updated_at, id COLLATE "C" LIMIT 2 OFFSET $3),
de AS (SELECT deleted_at FROM block_tombstones WHERE heap_id = $1 AND deleted_at > $2
           AND {_MINE}
       ORDER BY deleted_at, block_id COLLATE "C" LIMIT 2 OFFSET $3),
cut AS (SELECT LEAST((SELECT min(updated_at) FROM ce HAVING COUNT(*) = 2),
                     (SELECT min(deleted_at) FROM de HAVING COUNT(*) = 2)) AS at),
fresh AS (SELECT {_MINE} AND ($4::bigint IS NULL OR (SELECT clock FROM h) IS DISTINCT FROM $4)
          AS count)
SELECT (SELECT clock FROM h), {_MINE}, (SELECT at FROM cut), c.n, d.n, d.rows,
    CASE WHEN (SELECT count FROM fresh) THEN
        (SELECT COUNT(*) FROM blocks WHERE heap_id = $1 AND updated_at > $2) END,
    CASE WHEN (SELECT count FROM fresh) THEN
        (SELECT COUNT(*) FROM block_tombstones WHERE heap_id = $1 AND deleted_at > $2) END,
    c.ids, c.ats, c.versions, c.types, c.titles, c.deleted
FROM (SELECT COUNT(*) AS n, array_agg(id) AS ids, array_agg(updated_at) AS ats,
          array_agg(sync_version) AS versions, array_agg(type) AS types,
          array_agg(title) AS titles, array_agg(deleted_at) AS deleted
      FROM (SELECT id, updated_at, sync_version, type, title, deleted_at FROM blocks
            WHERE heap_id = $1 AND updated_at > $2 AND {_MINE}
                AND updated_at <= COALESCE((SELECT at FROM cut), {NO_CUT})
            ORDER BY updated_at, id COLLATE "C") s) c,
     (SELECT COUNT(*) AS n, string_agg(o, ',') AS rows
      FROM (SELECT {DELETED_JSON} AS o FROM block_tombstones
            WHERE heap_id = $1 AND deleted_at > $2 AND {_MINE}
                AND deleted_at <= COALESCE((SELECT at FROM cut), {NO_CUT})
            ORDER BY deleted_at, block_id COLLATE "C") s) d
"""


def changed_json(columns: Sequence[Any]) -> str:
    """The changed rows of a page as the answer writes them (``web/json_sync.delta_json``),
    from one list per column (``ENCODED_PAGE``; None for no rows): orjson, so the very bytes
    ``delta_bytes`` makes (PostgreSQL text holds no lone surrogate, which orjson refuses)."""
    ids, ats, versions, types, titles, deleted = columns
    if not ids:
        return ""
    objects = [
        {
            "block_id": i,
            "updated_at": at,
            "sync_version": v,
            "type": t,
            "title": title,
            "deleted_at": d,
        }
        for i, at, v, t, title, d in zip(ids, ats, versions, types, titles, deleted, strict=True)
    ]
    return orjson.dumps(objects)[1:-1].decode()


# The page as ``ENCODED_PAGE`` reads it, without its first pass over each feed's end: each
# feed's first ``limit + 1`` rows after ``since`` ($3), the changed ones as one array per column
# (ordered subqueries feed the aggregates), the removed ones as two; where the page ends and
# which rows it keeps is found from them in Python (``_keyset_end``). The rows are then read
# once, not twice: the backend's CPU for a page of 1,000 went from 1.77-2.10 to 1.55-1.74 ms
# (per-page interleaved runs on ``scripts/bench_delta.py``'s heap, docs/performance.md).
# Owner check ($5), clock and totals ($4) as in ``ENCODED_PAGE``.
KEYSET_PAGE = f"""
WITH h AS (SELECT clock, owner_id FROM heaps WHERE id = $1),
m AS (SELECT COALESCE((SELECT owner_id = $5 FROM h), $5::text IS NULL) AS mine),
fresh AS (SELECT {_MINE} AND ($4::bigint IS NULL OR (SELECT clock FROM h) IS DISTINCT FROM $4)
          AS count)
SELECT (SELECT clock FROM h), {_MINE},
    CASE WHEN (SELECT count FROM fresh) THEN
        (SELECT COUNT(*) FROM blocks WHERE heap_id = $1 AND updated_at > $2) END,
    CASE WHEN (SELECT count FROM fresh) THEN
        (SELECT COUNT(*) FROM block_tombstones WHERE heap_id = $1 AND deleted_at > $2) END,
    c.ids, c.ats, c.versions, c.types, c.titles, c.deleted, d.ids, d.ats
FROM (SELECT array_agg(id) AS ids, array_agg(updated_at) AS ats,
          array_agg(sync_version) AS versions, array_agg(type) AS types,
          array_agg(title) AS titles, array_agg(deleted_at) AS deleted
      FROM (SELECT id, updated_at, sync_version, type, title, deleted_at FROM blocks
            WHERE heap_id = $1 AND updated_at > $2 AND {_MINE}
            ORDER BY updated_at, id COLLATE "C" LIMIT $3) s) c,
     (SELECT array_agg(block_id) AS ids, array_agg(deleted_at) AS ats
      FROM (SELECT block_id, deleted_at FROM block_tombstones
            WHERE heap_id = $1 AND deleted_at > $2 AND {_MINE}
            ORDER BY deleted_at, block_id COLLATE "C" LIMIT $3) s) d
"""


def _keyset_end(
    changed_at: Sequence[int], deleted_at: Sequence[int], limit: int
) -> tuple[int | None, int, int] | None:
    """Where a page of ``KEYSET_PAGE``'s rows ends, as ``page_end`` finds it (a feed with a
    row past ``limit`` ends at its ``limit``-th time, the page at the earlier of those), and
    how many rows of each feed it keeps (ties of the cut included). None when a feed's row
    ``limit + 1`` is at the cut itself: rows of that time may follow that were not read, and
    ``ENCODED_PAGE`` reads the whole range up to the cut."""
    ends = [int(at[limit - 1]) for at in (changed_at, deleted_at) if len(at) > limit]
    if not ends:  # nothing follows either feed: every row read is the page
        return None, len(changed_at), len(deleted_at)
    cut = min(ends)
    if any(len(at) > limit and at[limit] <= cut for at in (changed_at, deleted_at)):
        return None  # a tie across the read rows' end
    return cut, bisect_right(changed_at, cut), bisect_right(deleted_at, cut)


def deleted_json(block_ids: Sequence[str], times: Sequence[int]) -> str:
    """Removed rows as ``DELETED_JSON`` writes them (orjson: the same bytes)."""
    if not block_ids:
        return ""
    rows = [{"block_id": b, "deleted_at": at} for b, at in zip(block_ids, times, strict=True)]
    return orjson.dumps(rows)[1:-1].decode()


def _refused(
    heap_id: str, since: int, memo: DeltaTotals | None, carried: tuple[int, int, int] | None
) -> None:
    """A page refused to its asker: totals carried for the heap stay for its owner."""
    if memo is not None and carried is not None:  # not this asker's to spend
        memo.carry_counts(heap_id, since, carried[1], carried[2], carried[0])


async def changes_since_encoded(
    c: Conn,
    heap_id: str,
    since: int,
    limit: int,
    memo: DeltaTotals | None = None,
    owner_id: str | None = None,
) -> EncodedChangePage | None:
    """``changes_since``'s page with its rows written as JSON, in one statement
    (``KEYSET_PAGE``; ``ENCODED_PAGE`` after it, in its own snapshot, when the rows read end
    in a tie): run it with the ``read`` runner, no transaction. With ``owner_id``, None when
    the heap is not that user's (or does not exist): the ownership check of the delta route
    folded into the page's round trip."""
    carried = None if memo is None else memo.take(heap_id, since)
    at = None if carried is None else carried[0]
    row = await c.fetchrow(KEYSET_PAGE, heap_id, since, limit + 1, at, owner_id)
    assert row is not None  # aggregates give one row
    if owner_id is not None and not row[1]:
        _refused(heap_id, since, memo, carried)
        return None
    changed, deleted = [row[i] or [] for i in range(4, 10)], (row[10] or [], row[11] or [])
    end = _keyset_end(changed[1], deleted[1], limit)
    if end is None:  # its own snapshot: owner, clock, rows and totals all read again
        row = await c.fetchrow(ENCODED_PAGE, heap_id, since, limit - 1, at, owner_id)
        assert row is not None
        if owner_id is not None and not row[1]:  # the heap went meanwhile
            _refused(heap_id, since, memo, carried)
            return None
        counts = (row[6], row[7])
        cut: int | None = None if row[2] is None else int(row[2])
        rows = ((int(row[3]), changed_json([row[i] for i in range(8, 14)])), (int(row[4]), row[5]))
    else:
        cut, n_changed, n_deleted = end
        counts = (row[2], row[3])
        rows = (
            (n_changed, changed_json([column[:n_changed] for column in changed])),
            (n_deleted, deleted_json(deleted[0][:n_deleted], deleted[1][:n_deleted])),
        )
    clock = since if row[0] is None else int(row[0])
    if counts[0] is None and carried is not None:  # the clock it was carried at: still exact
        memo.hits += 1  # type: ignore[union-attr]
        totals = (carried[1], carried[2])
    else:
        totals = (int(counts[0]), int(counts[1]))
    return finish_encoded_page(heap_id, clock, cut, rows[0], rows[1], totals, memo)
