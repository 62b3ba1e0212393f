"""Big block texts kept in pieces (migration 0022, issue 12 item 4).

SQLite rewrites a whole row when any of its columns changes, overflow pages included: a push
of one word into an 8.6 MB document wrote 8.6 MB of text to the WAL, fsynced and checkpointed
it (about 75% of a 100 ms push). A text of ``BIG_TEXT`` characters or more is therefore kept
in ``block_text_parts`` (``blocks.text`` holds '' and ``blocks.text_parts`` is 1), and a
commit rewrites only the pieces between the old and new texts' common prefix and suffix
(found at memcmp speed, as the search rows do), about one piece per typed word.

Pieces are cut at code points (Python ``str`` slices), so a piece never splits a character.
``pos`` orders them with gaps of ``_GAP``, so replacing pieces in the middle renumbers none;
when a gap is used up the whole text is written again (once). A changed stretch shorter than
``PIECE // 4`` takes a neighbour in with it, so deletions do not leave crumbs behind. Every
reader sees the whole text: ``records`` joins the pieces back for the block views and queries,
``old_text`` for the commit's search rows. Pieces and row change in the writer's one
transaction, and pieces go with their block (``ON DELETE CASCADE``).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterable

from heaper_trio.records import BlockRecord
from heaper_trio.storage.rows import RECORD_COLUMNS, Row, record_row
from heaper_trio.storage.search_lines import common_prefix, common_suffix

BIG_TEXT = 256 * 1024  # characters from which a text is kept in pieces
PIECE = 32 * 1024  # characters per piece when a stretch is cut
_GAP = 1 << 20  # distance between the positions of pieces written together

# The record columns plus what it takes to join a text's pieces back (``records``).
SQLITE_RECORD_COLUMNS = RECORD_COLUMNS + ", n, text_parts"


Pieces = list[tuple[int, str]]  # (pos, body) in order


def pieces(c: sqlite3.Connection, block_n: int) -> Pieces:
    rows = c.execute(
        "SELECT pos, body FROM block_text_parts WHERE block_n=? ORDER BY pos", (block_n,)
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def whole_text(c: sqlite3.Connection, block_n: int) -> str:
    return "".join(body for _, body in pieces(c, block_n))


def records(c: sqlite3.Connection, rows: Iterable[Row]) -> list[BlockRecord]:
    """Block records of rows selected with ``SQLITE_RECORD_COLUMNS``, pieces joined back."""
    out = []
    for r in rows:
        record = record_row(r)
        if r["text_parts"]:
            record = dataclasses.replace(record, text=whole_text(c, r["n"]))
        out.append(record)
    return out


def in_pieces(text: str, now_in_pieces: bool) -> bool:
    """Whether ``text`` is kept in pieces; once in pieces a text stays so until it is half the
    threshold, so one that wavers around it does not move back and forth on every push."""
    return len(text) >= (BIG_TEXT // 2 if now_in_pieces else BIG_TEXT)


def _cut(text: str) -> list[str]:
    """``text`` in pieces of about ``PIECE`` characters (none for an empty text)."""
    if len(text) <= 2 * PIECE:
        return [text] if text else []
    count = -(-len(text) // PIECE)
    size = -(-len(text) // count)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _write_all(c: sqlite3.Connection, block_n: int, text: str) -> None:
    c.execute("DELETE FROM block_text_parts WHERE block_n=?", (block_n,))
    c.executemany(
        "INSERT INTO block_text_parts (block_n, pos, body) VALUES (?, ?, ?)",
        [(block_n, i * _GAP, body) for i, body in enumerate(_cut(text))],
    )


def store(c: sqlite3.Connection, block_n: int, old_pieces: Pieces | None, new: str) -> str:
    """Keep ``new`` as the block's text (``old_pieces``: its pieces now, None if the text is
    in the row); returns what goes in ``blocks.text`` ('' when the text is in pieces). The
    caller writes that and the flag ``in_pieces(new, ...)`` to the row in the same
    transaction."""
    was_in_pieces = old_pieces is not None
    if not in_pieces(new, was_in_pieces):
        if was_in_pieces:
            c.execute("DELETE FROM block_text_parts WHERE block_n=?", (block_n,))
        return new
    if old_pieces is None:
        _write_all(c, block_n, new)
    else:
        _rewrite_changed(c, block_n, old_pieces, new)
    return ""


def _rewrite_changed(c: sqlite3.Connection, block_n: int, parts: Pieces, new: str) -> None:
    """Replace the pieces that hold what changed between ``parts`` and ``new``."""
    old = "".join(body for _, body in parts)
    if old == new:
        return
    if not parts:
        _write_all(c, block_n, new)
        return
    starts = [0]
    for _, body in parts:
        starts.append(starts[-1] + len(body))
    p = common_prefix(old, new)
    s = common_suffix(old, new, min(len(old), len(new)) - p)
    first = _piece_at(starts, min(p, len(old) - 1))
    last = max(first, _piece_at(starts, len(old) - s - 1))
    # take a neighbour in while the stretch to write is a crumb
    while (starts[last + 1] - starts[first]) + (len(new) - len(old)) < PIECE // 4:
        if last + 1 < len(parts):
            last += 1
        elif first > 0:
            first -= 1
        else:
            break
    head, tail = starts[first], len(old) - starts[last + 1]
    bodies = _cut(new[head : len(new) - tail])
    lo = parts[first - 1][0] if first > 0 else parts[first][0] - _GAP * (len(bodies) + 1)
    hi = parts[last + 1][0] if last + 1 < len(parts) else parts[last][0] + _GAP * (len(bodies) + 1)
    if hi - lo <= len(bodies):  # no room between the neighbours: renumber by writing it all
        _write_all(c, block_n, new)
        return
    c.execute(
        "DELETE FROM block_text_parts WHERE block_n=? AND pos BETWEEN ? AND ?",
        (block_n, parts[first][0], parts[last][0]),
    )
    step = (hi - lo) // (len(bodies) + 1)
    c.executemany(
        "INSERT INTO block_text_parts (block_n, pos, body) VALUES (?, ?, ?)",
        [(block_n, lo + (i + 1) * step, body) for i, body in enumerate(bodies)],
    )


def _piece_at(starts: list[int], at: int) -> int:
    """The index of the piece holding character ``at`` (``starts`` ends with the length)."""
    lo, hi = 0, len(starts) - 2
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if starts[mid] <= at:
            lo = mid
        else:
            hi = mid - 1
    return lo
