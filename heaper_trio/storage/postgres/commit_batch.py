"""A group commit's block changes written with a statement per table, not a dozen per change.

``documents.commit_change`` costs about twelve round trips per change (row lock, clock tick,
block row, search lines, log, relations, files, heap name, savepoint). A group commit of 16
concurrent pushes, or one push of 100 blocks, paid that many times over: on a loaded 2-core
machine a round trip through trio-asyncio takes 0.5-2 ms, so a push of 100 blocks took
seconds and populating 100,000 blocks took most of an hour (issue 12 item 4: that was the
"hang" of ``bench_delta.py --engine postgres``). Here every change of the batch is decided
in Python against the rows the caller already locked, then written with one statement per
table (``unnest`` arrays; ``executemany`` for the search lines, which asyncpg pipelines).

Same rows, same change times (each heap's clock ticks once per stored change, in the
caller's order, as ``GREATEST(now, clock + 1)`` one by one would), same conflicts as
committing them one by one: the caller falls back to that if a block id comes twice or
anything unexpected is refused (a unique violation, a heap gone).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from heaper_trio.records import BlockChange, CommitResult
from heaper_trio.storage import history_rows, rules, text_pieces
from heaper_trio.storage.errors import HeapNotFound
from heaper_trio.storage.postgres import text_parts
from heaper_trio.storage.postgres.runtime import Conn
from heaper_trio.storage.postgres.search import index_new_blocks, write_lines_many
from heaper_trio.storage.rows import Row
from heaper_trio.storage.search_lines import changes as line_changes

# How ``documents.commit_changes`` writes a group: a statement per table inside a savepoint
# (one by one in the same transaction on a surprise); the same without the savepoint, whose
# SAVEPOINT and RELEASE are two of the dozen round trips of a group commit (a surprise then
# raises ``OneByOne``: the caller rolls the transaction back and runs it again one by one);
# or one by one from the start.
SAVEPOINT, BARE, ONE_BY_ONE = "savepoint", "bare", "one_by_one"


class OneByOne(Exception):
    """A ``BARE`` group met a refusal that ``commit_change`` decides alone (a unique
    violation, a heap gone): roll back, then commit the group ``ONE_BY_ONE``."""


# The columns of an edit, in the order of ``_UPDATE``'s arrays (``rules.block_columns``).
EDIT_COLUMNS = (
    ("type", "text"),
    ("title", "text"),
    ("text", "text"),
    ("relations", "jsonb"),
    ("files", "jsonb"),
    ("apps", "jsonb"),
    ("updated_at", "bigint"),
    ("deleted_at", "bigint"),
    ("permanently_deleted_at", "bigint"),
    ("state_vector", "bytea"),
    ("size", "bigint"),
    ("last_seq", "bigint"),
    ("text_parts", "bigint"),
)
_UPDATE = (
    "UPDATE blocks b SET "
    + ", ".join(f"{name} = v.{name}" for name, _ in EDIT_COLUMNS)
    + " FROM unnest($1::text[], "
    + ", ".join(f"${i}::{t}[]" for i, (_, t) in enumerate(EDIT_COLUMNS, 2))
    + ") AS v(id, "
    + ", ".join(name for name, _ in EDIT_COLUMNS)
    + ") WHERE b.id = v.id"
)
# The types of ``rules.CREATED_BLOCK_COLUMNS``, in its order.
_CREATED_TYPES: tuple[str, ...] = (
    *("text",) * 5,
    *("jsonb",) * 3,
    *("bigint",) * 3,
    "bytea",
    *("bigint",) * 3,
    "text",
    "int4",
)
_INSERT = (
    f"INSERT INTO blocks ({rules.CREATED_BLOCK_COLUMNS}) SELECT * FROM unnest("
    + ", ".join(f"${i}::{t}[]" for i, t in enumerate(_CREATED_TYPES, 1))
    + ")"
)


# The changes' block rows, locked, with what ``commit_all`` decides and skips by: whether a
# block has relation or file rows to replace at all.
LOCK_ROWS = (
    "SELECT id, heap_id, last_seq, sync_version, title, text, text_parts, "
    "deleted_at IS NOT NULL AS trashed, "
    "EXISTS (SELECT 1 FROM block_relations r WHERE r.block_id = b.id) AS has_relations, "
    "EXISTS (SELECT 1 FROM block_files f WHERE f.block_id = b.id) AS has_files "
    'FROM blocks b WHERE id = ANY($1::text[]) ORDER BY id COLLATE "C" FOR UPDATE'
)


def batchable(changes: list[BlockChange]) -> bool:
    """Fewer round trips than ``commit_change`` from one change up; one block twice goes one
    by one (the second is decided against the first's outcome)."""
    return len({ch.block_id for ch in changes}) == len(changes)


async def commit_all(
    c: Conn, changes: list[BlockChange], now: int, heaps: dict[str, str], rows: dict[str, Row]
) -> list[CommitResult]:
    """``changes`` (distinct blocks) in one go. ``heaps``: the changes' heaps that exist,
    row-locked, by id, with their root block's id; ``rows``: the changes' existing block rows
    (``LOCK_ROWS``), row-locked; the blocks' advisory locks are held."""
    creating = [ch.block_id for ch in changes if rules.creates(ch)]
    tombstoned: set[str] = set()
    if creating:
        found = await c.fetch(
            "SELECT block_id FROM block_tombstones WHERE block_id = ANY($1::text[])", creating
        )
        tombstoned = {r[0] for r in found}
    results: list[CommitResult | None] = [None] * len(changes)
    accepted: list[tuple[int, BlockChange, Row | None]] = []
    for i, ch in enumerate(changes):
        current = rows.get(ch.block_id)
        if ch.heap_id not in heaps or rules.commit_conflict(ch, current, ch.block_id in tombstoned):
            results[i] = rules.conflict(ch)
        else:
            accepted.append((i, ch, current))
    if accepted:
        await _write(c, accepted, now, results, heaps)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


async def _write(
    c: Conn,
    accepted: list[tuple[int, BlockChange, Row | None]],
    now: int,
    results: list[CommitResult | None],
    roots: dict[str, str],
) -> None:
    times = await _tick_heaps(c, [ch.heap_id for _, ch, _ in accepted], now)
    created: list[tuple[Any, ...]] = []
    edits: list[tuple[Any, ...]] = []
    lines_new: list[tuple[str, str, str]] = []
    lines_moved: list[tuple[str, Counter[str], Counter[str]]] = []
    log: list[tuple[str, int, bytes, int, str | None]] = []
    relations: list[tuple[str, str, str, str]] = []
    files: list[tuple[str, str, str]] = []
    big_new: list[tuple[str, str]] = []  # created with a text kept in pieces
    for (i, ch, current), updated_at in zip(accepted, times, strict=True):
        p = ch.projection
        base = 0 if current is None else current["last_seq"]
        last_seq = base + len(ch.updates)
        columns = rules.block_columns(ch, updated_at, last_seq)
        if current is None:
            columns.update(rules.created_columns(ch, updated_at))
            if text_pieces.in_pieces(p.text, False):
                columns["text"] = ""
                big_new.append((ch.block_id, p.text))
            created.append(tuple(columns[k] for k in rules.CREATED_BLOCK_COLUMNS.split(", ")))
            lines_new.append((ch.block_id, p.title, p.text))
        else:
            was, old_text = await text_parts.current_text(c, ch.block_id, current)
            columns["text"], columns["text_parts"] = await text_parts.store(
                c, ch.block_id, was, p.text
            )
            edits.append((ch.block_id, *(columns[k] for k, _ in EDIT_COLUMNS)))
            gone, came = line_changes(current["title"], old_text, p.title, p.text)
            lines_moved.append((ch.block_id, gone, came))
        log += rules.log_rows(ch, base, now)
        relations += rules.relation_rows(ch.block_id, ch.heap_id, p)
        files += [(ch.block_id, h, ch.heap_id) for h in p.file_hashes]
        results[i] = rules.commit_result(ch, current, updated_at, last_seq)
    if created:
        await c.execute(_INSERT, *rules.columns(created, len(_CREATED_TYPES)))
        for block_id, text in big_new:
            await text_parts.created(c, block_id, text)
        await index_new_blocks(c, lines_new)
    if edits and log:  # one statement, one round trip: the log rows ride on the edit
        await c.execute(
            f"WITH edited AS ({_UPDATE}) {_log_insert(len(EDIT_COLUMNS) + 2)}",
            *rules.columns(edits, len(EDIT_COLUMNS) + 1),
            *rules.columns(log, 5),
        )
    elif edits:
        await c.execute(_UPDATE, *rules.columns(edits, len(EDIT_COLUMNS) + 1))
    elif log:
        await c.execute(_log_insert(1), *rules.columns(log, 5))
    if edits:
        await write_lines_many(c, lines_moved)
    for _, ch, _ in accepted:  # compaction: once in every COMPACT_EVERY updates of a block
        if ch.compacted is not None:
            await _compact(c, ch.block_id, *ch.compacted)
    ids = [ch.block_id for _, ch, _ in accepted]
    # A block's relation and file rows are replaced: deleted first if it has any.
    if any(cur is not None and cur["has_relations"] for _, _, cur in accepted):
        await c.execute("DELETE FROM block_relations WHERE block_id = ANY($1::text[])", ids)
    if relations:
        await c.execute(
            "INSERT INTO block_relations (block_id, kind, target_id, heap_id) SELECT * FROM "
            "unnest($1::text[], $2::text[], $3::text[], $4::text[]) ON CONFLICT DO NOTHING",
            *rules.columns(relations, 4),
        )
    if any(cur is not None and cur["has_files"] for _, _, cur in accepted):
        await c.execute("DELETE FROM block_files WHERE block_id = ANY($1::text[])", ids)
    if files:
        await c.execute(
            "INSERT INTO block_files (block_id, hash, heap_id) SELECT * FROM "
            "unnest($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING",
            *rules.columns(files, 3),
        )
    named = [ch for _, ch, _ in accepted if roots[ch.heap_id] == ch.block_id]
    if named:  # a heap is named after its root block's title
        await c.execute(
            "UPDATE heaps h SET name = v.title FROM unnest($1::text[], $2::text[]) "
            "AS v(heap_id, title) WHERE h.id = v.heap_id",
            [ch.heap_id for ch in named],
            [ch.projection.title for ch in named],
        )


def _log_insert(first: int) -> str:
    """The log rows' INSERT, its five arrays numbered from ``$first``."""
    arrays = zip(
        range(first, first + 5), ("text", "bigint", "bytea", "bigint", "text"), strict=True
    )
    return (
        "INSERT INTO block_updates (block_id, seq, data, created_at, author_id) SELECT * FROM "
        f"unnest({', '.join(f'${i}::{t}[]' for i, t in arrays)})"
    )


async def _tick_heaps(c: Conn, heap_ids: list[str], now: int) -> list[int]:
    """A change time per entry of ``heap_ids``, in order: each heap's clock moves once for
    all its changes, to what ticking once per change would leave it at."""
    counts = Counter(heap_ids)
    clocks: dict[str, int] = {}
    for heap_id, n in counts.items():
        clock = await c.fetchval(
            "UPDATE heaps SET clock = GREATEST($1::bigint + $2 - 1, clock + $2) WHERE id=$3 "
            "RETURNING clock",
            now,
            n,
            heap_id,
        )
        if clock is None:  # not after the caller's row lock; the caller goes one by one
            raise HeapNotFound(heap_id)
        clocks[heap_id] = int(clock) - n  # the clock before this batch's first change
    times = []
    for heap_id in heap_ids:
        clocks[heap_id] += 1
        times.append(clocks[heap_id])
    return times


async def _compact(c: Conn, block_id: str, snapshot: bytes, covers: int) -> None:
    await c.execute(
        "UPDATE blocks SET snapshot=$1, snapshot_seq=$2 WHERE id=$3 AND snapshot_seq < $2",
        bytes(snapshot),
        covers,
        block_id,
    )
    await c.execute(history_rows.move_sql(b="$1", s="$2::bigint"), block_id, covers)
    await c.execute("DELETE FROM block_updates WHERE block_id=$1 AND seq <= $2", block_id, covers)
