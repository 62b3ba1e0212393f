"""SQLite's side of big texts in pieces (``storage/text_pieces.py``, migration 0022): the
pieces live in ``block_text_parts`` by ``blocks.n``. Besides the text, the compacted snapshot
left the row too (``block_snapshots``): SQLite writes a row of a new size anew, overflow pages
included, so a snapshot in the row was written again by every push (16 MB of WAL for one
changed byte next to an 8 MB blob, measured)."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterable

from heaper_trio.records import BlockRecord
from heaper_trio.records.text_segments import Text
from heaper_trio.storage import text_pieces
from heaper_trio.storage.rows import RECORD_COLUMNS, Row, record_row
from heaper_trio.storage.text_pieces import Stored

# The record columns plus what it takes to join a text's pieces back (``records``).
SQLITE_RECORD_COLUMNS = RECORD_COLUMNS + ", n, text_parts"


def pieces(c: sqlite3.Connection, block_n: int) -> list[tuple[int, str]]:
    """The stored pieces (pos, body), in order."""
    rows = c.execute(
        "SELECT pos, body FROM block_text_parts WHERE block_n=? ORDER BY pos", (block_n,)
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def stored(c: sqlite3.Connection, block_n: int, token: int) -> Stored:
    """The text of block ``block_n`` whose row holds ``token`` (not 0)."""
    return text_pieces.recent(token) or text_pieces.read_back(token, pieces(c, block_n))


def records(c: sqlite3.Connection, rows: Iterable[Row]) -> list[BlockRecord]:
    """Block records of rows selected with ``SQLITE_RECORD_COLUMNS``, pieces joined back."""
    out = []
    for r in rows:
        record = record_row(r)
        if r["text_parts"]:
            text = "".join(body for _, body in pieces(c, r["n"]))
            record = dataclasses.replace(record, text=text)
        out.append(record)
    return out


def store(c: sqlite3.Connection, block_n: int, old: Stored | None, new: Text) -> tuple[str, int]:
    """Write ``new``'s pieces; returns what goes in ``blocks.text`` and ``blocks.text_parts``,
    which the caller writes to the row in the same transaction."""
    p = text_pieces.plan(old, new)
    if p.delete_all:
        c.execute("DELETE FROM block_text_parts WHERE block_n=?", (block_n,))
    elif p.delete_between is not None:
        c.execute(
            "DELETE FROM block_text_parts WHERE block_n=? AND pos BETWEEN ? AND ?",
            (block_n, *p.delete_between),
        )
    if p.inserts:  # none for a text kept in its row (nearly all)
        c.executemany(
            "INSERT INTO block_text_parts (block_n, pos, body) VALUES (?, ?, ?)",
            [(block_n, pos, body) for pos, body in p.inserts],
        )
    return p.inline, p.token
