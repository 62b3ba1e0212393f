"""PostgreSQL's search rows per line (migration 0017, ``storage/search_lines.py``), written
with every commit of a block: a statement for the lines that left, one for those that came,
whatever their number. The server computes each line's key (``heaper_line_key``)."""

from __future__ import annotations

from collections import Counter

from heaper_trio.storage.postgres.runtime import Conn
from heaper_trio.storage.search_lines import changes, lines

_GONE = (
    "WITH g(body, k) AS (SELECT * FROM unnest($2::text[], $3::int[])) "
    "UPDATE block_lines l SET uses = l.uses - g.k FROM g WHERE l.block_id = $1 "
    "AND l.key = heaper_line_key(g.body) AND l.body = g.body"
)
# A statement of its own: the sub-statements of one WITH see the rows as they were before it.
_EMPTIED = (
    "DELETE FROM block_lines WHERE block_id = $1 AND uses <= 0 "
    "AND key IN (SELECT heaper_line_key(b) FROM unnest($2::text[]) AS b)"
)
_CAME = (
    "WITH c(body, k) AS (SELECT * FROM unnest($2::text[], $3::int[])), "
    "u AS (UPDATE block_lines l SET uses = l.uses + c.k FROM c WHERE l.block_id = $1 "
    "AND l.key = heaper_line_key(c.body) AND l.body = c.body RETURNING l.body) "
    "INSERT INTO block_lines (block_id, body, uses) "
    "SELECT $1, c.body, c.k FROM c WHERE c.body NOT IN (SELECT body FROM u)"
)

# _GONE, _EMPTIED and _CAME as one statement. Its sub-statements see the rows as they were
# before it, so a line whose uses run out is deleted by its own sub-statement rather than
# decremented and then deleted; the gone and came lines of a change are distinct
# (``search_lines.changes``), so no row is touched twice.
_MOVED = (
    "WITH g(body, k) AS (SELECT * FROM unnest($2::text[], $3::int[])), "
    "c(body, k) AS (SELECT * FROM unnest($4::text[], $5::int[])), "
    "gd AS (DELETE FROM block_lines l USING g WHERE l.block_id = $1 "
    "AND l.key = heaper_line_key(g.body) AND l.body = g.body AND l.uses <= g.k), "
    "gu AS (UPDATE block_lines l SET uses = l.uses - g.k FROM g WHERE l.block_id = $1 "
    "AND l.key = heaper_line_key(g.body) AND l.body = g.body AND l.uses > g.k), "
    "u AS (UPDATE block_lines l SET uses = l.uses + c.k FROM c WHERE l.block_id = $1 "
    "AND l.key = heaper_line_key(c.body) AND l.body = c.body RETURNING l.body) "
    "INSERT INTO block_lines (block_id, body, uses) "
    "SELECT $1, c.body, c.k FROM c WHERE c.body NOT IN (SELECT body FROM u)"
)


async def write_lines(c: Conn, block_id: str, gone: Counter[str], came: Counter[str]) -> None:
    """Apply a block's line changes; the caller holds the block's row lock."""
    if gone:
        await c.execute(_GONE, block_id, list(gone), list(gone.values()))
        await c.execute(_EMPTIED, block_id, list(gone))
    if came:
        await c.execute(_CAME, block_id, list(came), list(came.values()))


async def index_block(
    c: Conn, block_id: str, old: tuple[str, str] | None, title: str, text: str
) -> None:
    """Index a block's new title and text; ``old`` is what its rows hold now (None: none)."""
    if old is None:  # no rows yet: plain inserts, no lookups
        await index_new_blocks(c, [(block_id, title, text)])
    else:
        await write_lines(c, block_id, *changes(old[0], old[1], title, text))


async def index_new_blocks(c: Conn, blocks: list[tuple[str, str, str]]) -> None:
    """Index blocks just inserted together, (id, title, text) each, in one statement."""
    rows = [
        (i, body, k)
        for i, title, text in blocks
        for body, k in (lines(title) + lines(text)).items()
    ]
    if rows:
        await c.execute(
            "INSERT INTO block_lines (block_id, body, uses) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::int[])",
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
        )


async def write_lines_many(c: Conn, blocks: list[tuple[str, Counter[str], Counter[str]]]) -> None:
    """``write_lines`` for many blocks, (id, gone, came) each, in one statement per block
    (``_MOVED``), sent for every block at once (asyncpg pipelines ``executemany``): one round
    trip where ``_GONE``, ``_EMPTIED`` and ``_CAME`` took three."""
    moved = [(b, list(g), list(g.values()), list(n), list(n.values())) for b, g, n in blocks]
    if any(g or n for _, g, _, n, _ in moved):
        await c.executemany(_MOVED, [m for m in moved if m[1] or m[3]])
