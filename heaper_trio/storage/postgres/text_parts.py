"""PostgreSQL's side of big texts in pieces (``storage/text_pieces.py``, migration 0022): the
pieces live in ``block_text_parts`` by block id. A row's text in pieces reads as '' with a
token in ``text_parts``; every reader joins the pieces back (``records``, ``current_text``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from heaper_trio.records import BlockRecord
from heaper_trio.storage import text_pieces
from heaper_trio.storage.postgres.runtime import Conn
from heaper_trio.storage.rows import RECORD_COLUMNS, Row, record_row
from heaper_trio.storage.text_pieces import Stored

PG_RECORD_COLUMNS = RECORD_COLUMNS + ", text_parts"


async def current_text(c: Conn, block_id: str, row: Row) -> tuple[Stored | None, str]:
    """The text a block row (``text``, ``text_parts``) holds: its pieces (None: in the row)
    and the whole text."""
    token = row["text_parts"]
    if not token:
        return None, row["text"]
    kept = text_pieces.recent(token)
    if kept is None:
        rows = await c.fetch(
            "SELECT pos, body FROM block_text_parts WHERE block_id=$1 ORDER BY pos", block_id
        )
        kept = text_pieces.read_back(token, [(r[0], r[1]) for r in rows])
    return kept, kept.text


async def records(c: Conn, rows: Sequence[Row]) -> list[BlockRecord]:
    """Block records of rows selected with ``PG_RECORD_COLUMNS``, pieces joined back.

    Readers run without a transaction, so a row and its pieces read in two statements could
    come from two commits (review: a text shrunk back into its row read as ''). A row in
    pieces is therefore read again whole, with its pieces, in one statement (one snapshot);
    one that is gone by then (purged) is left out."""
    parted = [r["id"] for r in rows if r["text_parts"]]
    fresh: dict[str, BlockRecord] = {}
    if parted:
        found = await c.fetch(
            f"SELECT {PG_RECORD_COLUMNS}, (SELECT string_agg(p.body, '' ORDER BY p.pos) "
            "FROM block_text_parts p WHERE p.block_id = blocks.id) AS joined "
            "FROM blocks WHERE id = ANY($1::text[])",
            parted,
        )
        for f in found:
            record = record_row(f)
            if f["text_parts"]:
                record = dataclasses.replace(record, text=f["joined"] or "")
            fresh[f["id"]] = record
    out = []
    for r in rows:
        if not r["text_parts"]:
            out.append(record_row(r))
        elif r["id"] in fresh:
            out.append(fresh[r["id"]])
    return out


async def store(c: Conn, block_id: str, old: Stored | None, new: str) -> tuple[str, int]:
    """Write ``new``'s pieces (the block row exists); returns what goes in ``blocks.text``
    and ``blocks.text_parts``, which the caller writes in the same transaction."""
    p = text_pieces.plan(old, new)
    if p.delete_all:
        await c.execute("DELETE FROM block_text_parts WHERE block_id=$1", block_id)
    elif p.delete_between is not None:
        await c.execute(
            "DELETE FROM block_text_parts WHERE block_id=$1 AND pos BETWEEN $2 AND $3",
            block_id,
            *p.delete_between,
        )
    if p.inserts:
        await c.execute(
            "INSERT INTO block_text_parts (block_id, pos, body) "
            "SELECT $1, * FROM unnest($2::bigint[], $3::text[])",
            block_id,
            [pos for pos, _ in p.inserts],
            [body for _, body in p.inserts],
        )
    return p.inline, p.token


async def created(c: Conn, block_id: str, text: str) -> None:
    """A block just inserted with '' for a ``text`` kept in pieces: its pieces and token."""
    _, token = await store(c, block_id, None, text)
    await c.execute("UPDATE blocks SET text_parts=$1 WHERE id=$2", token, block_id)
