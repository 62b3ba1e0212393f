"""SQLite's search rows per line (migration 0017, ``storage/search_lines.py``): written with
every commit of a block, built once for the blocks that existed before the migration, and a
little after a live commit (``BlockChange.search_later``: the block is marked instead)."""

from __future__ import annotations

import sqlite3
from collections import Counter

from heaper_trio.records.text_segments import Text
from heaper_trio.storage.search_lines import changes, line_key, lines
from heaper_trio.storage.sqlite import text_parts

_BACKFILL_BATCH = 200  # blocks per transaction while indexing existing ones


def write_lines(
    c: sqlite3.Connection, block_n: int, gone: Counter[str], came: Counter[str]
) -> None:
    """Apply a block's line changes (``search_lines.changes``) to its rows."""
    for body, k in gone.items():
        key = line_key(body)
        # A line that goes altogether (nearly always: lines seldom repeat) in one statement;
        # one still used elsewhere in the block is counted down instead
        if c.execute(
            "DELETE FROM block_lines WHERE block_n=? AND key=? AND body=? AND uses <= ?",
            (block_n, key, body, k),
        ).rowcount:
            continue
        c.execute(
            "UPDATE block_lines SET uses = uses - ? WHERE block_n=? AND key=? AND body=?",
            (k, block_n, key, body),
        )
    for body, k in came.items():
        key = line_key(body)
        if c.execute(
            "UPDATE block_lines SET uses = uses + ? WHERE block_n=? AND key=? AND body=?",
            (k, block_n, key, body),
        ).rowcount:
            continue
        c.execute(
            "INSERT INTO block_lines (block_n, key, body, uses) VALUES (?, ?, ?, ?)",
            (block_n, key, body, k),
        )


def index_block(
    c: sqlite3.Connection, block_n: int, old: tuple[str, Text] | None, title: str, text: Text
) -> None:
    """Index a block's new title and text; ``old`` is what its rows hold now (None: none)."""
    if old is None:  # no rows yet: plain inserts, no lookups
        c.executemany(
            "INSERT INTO block_lines (block_n, key, body, uses) VALUES (?, ?, ?, ?)",
            [(block_n, line_key(b), b, k) for b, k in (lines(title) + lines(str(text))).items()],
        )
    else:
        write_lines(c, block_n, *changes(old[0], old[1], title, text))


def index_new_blocks(c: sqlite3.Connection, blocks: list[tuple[str, str, str]]) -> None:
    """Index blocks just inserted together: (id, title, text) each."""
    for block_id, title, text in blocks:
        row = c.execute("SELECT n FROM blocks WHERE id=?", (block_id,)).fetchone()
        index_block(c, row[0], None, title, text)


def reindex(c: sqlite3.Connection, block_n: int, title: str | None, text: str) -> None:
    """Rebuild a block's rows from its title and text, and drop its mark (None: no block)."""
    c.execute("DELETE FROM block_lines WHERE block_n=?", (block_n,))
    if title is not None:
        index_block(c, block_n, None, title, text)
    c.execute("DELETE FROM block_lines_todo WHERE block_n=?", (block_n,))


def reindex_marked(c: sqlite3.Connection, limit: int = _BACKFILL_BATCH) -> int:
    """Re-index up to ``limit`` blocks listed in ``block_lines_todo``: those of migration 0017,
    and those whose live commits left their search rows for later (``search_later``). The
    list is written in the commit that made the rows stale, so a crash loses no mark."""
    todo = c.execute(
        "SELECT t.block_n, b.title, b.text, b.text_parts FROM block_lines_todo t "
        "LEFT JOIN blocks b ON b.n = t.block_n LIMIT ?",
        (limit,),
    ).fetchall()
    for block_n, title, text, token in todo:
        if token:  # a big text lives in pieces (migration 0022); its row's text is empty
            text = text_parts.stored(c, block_n, token).text
        reindex(c, block_n, title, text)
    return len(todo)


def backfill(conn: sqlite3.Connection) -> int:
    """Index the blocks listed in ``block_lines_todo``, a batch per transaction; returns how
    many. A crash midway leaves the rest listed, and the next start goes on from there."""
    done = 0
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            count = reindex_marked(conn, _BACKFILL_BATCH)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        done += count
        if count < _BACKFILL_BATCH:
            return done
