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
``stored`` for the commit's search rows. Pieces and row change in the writer's one
transaction, and pieces go with their block (``ON DELETE CASCADE``).

``blocks.text_parts`` is 0 for a text in the row, else a random token drawn anew whenever the
pieces change. The writer keeps the last few texts it wrote by token (``_RECENT``), so a push
does not read the 8 MB it wrote a moment ago back from the database: a token names exactly
one set of pieces, and a token whose transaction rolled back is never found in a row.
"""

from __future__ import annotations

import dataclasses
import secrets
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from heaper_trio.records import BlockRecord
from heaper_trio.storage.rows import RECORD_COLUMNS, Row, record_row
from heaper_trio.storage.search_lines import common_prefix, common_suffix

BIG_TEXT = 256 * 1024  # characters from which a text is kept in pieces
PIECE = 32 * 1024  # characters per piece when a stretch is cut
_GAP = 1 << 20  # distance between the positions of pieces written together

# The record columns plus what it takes to join a text's pieces back (``records``).
SQLITE_RECORD_COLUMNS = RECORD_COLUMNS + ", n, text_parts"


@dataclass(frozen=True)
class Stored:
    """A text kept in pieces: the whole text and each piece's (pos, length in characters)."""

    token: int
    text: str
    layout: tuple[tuple[int, int], ...]


_RECENT: OrderedDict[int, Stored] = OrderedDict()  # by token, the last few written
_RECENT_KEPT = 4
_RECENT_LOCK = threading.Lock()  # writers of several databases in one process (tests)


def _remember(stored: Stored) -> None:
    with _RECENT_LOCK:
        _RECENT[stored.token] = stored
        while len(_RECENT) > _RECENT_KEPT:
            _RECENT.popitem(last=False)


def stored(c: sqlite3.Connection, block_n: int, token: int) -> Stored:
    """The text of block ``block_n`` whose row holds ``token`` (not 0)."""
    with _RECENT_LOCK:
        kept = _RECENT.get(token)
    if kept is not None:
        return kept
    rows = c.execute(
        "SELECT pos, body FROM block_text_parts WHERE block_n=? ORDER BY pos", (block_n,)
    ).fetchall()
    return Stored(token, "".join(r[1] for r in rows), tuple((r[0], len(r[1])) for r in rows))


def pieces(c: sqlite3.Connection, block_n: int) -> list[tuple[int, str]]:
    """The stored pieces (pos, body), in order."""
    rows = c.execute(
        "SELECT pos, body FROM block_text_parts WHERE block_n=? ORDER BY pos", (block_n,)
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


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


def _write_all(c: sqlite3.Connection, block_n: int, text: str) -> tuple[tuple[int, int], ...]:
    c.execute("DELETE FROM block_text_parts WHERE block_n=?", (block_n,))
    rows = [(block_n, i * _GAP, body) for i, body in enumerate(_cut(text))]
    c.executemany("INSERT INTO block_text_parts (block_n, pos, body) VALUES (?, ?, ?)", rows)
    return tuple((pos, len(body)) for _, pos, body in rows)


def store(c: sqlite3.Connection, block_n: int, old: Stored | None, new: str) -> tuple[str, int]:
    """Keep ``new`` as the block's text (``old``: what its pieces hold now, None if the text
    is in the row); returns what goes in ``blocks.text`` and ``blocks.text_parts``, which
    the caller writes to the row in the same transaction."""
    if not in_pieces(new, old is not None):
        if old is not None:
            c.execute("DELETE FROM block_text_parts WHERE block_n=?", (block_n,))
        return new, 0
    if old is not None and old.text == new:
        return "", old.token
    layout = _write_all(c, block_n, new) if old is None else _rewrite(c, block_n, old, new)
    kept = Stored(secrets.randbits(62) + 1, new, layout)
    _remember(kept)
    return "", kept.token


def _rewrite(
    c: sqlite3.Connection, block_n: int, old: Stored, new: str
) -> tuple[tuple[int, int], ...]:
    """Replace the pieces that hold what changed between ``old`` and ``new``; the new layout."""
    parts, text = old.layout, old.text
    if not parts:
        return _write_all(c, block_n, new)
    starts = [0]
    for _, length in parts:
        starts.append(starts[-1] + length)
    p = common_prefix(text, new)
    s = common_suffix(text, new, min(len(text), len(new)) - p)
    first = _piece_at(starts, min(p, len(text) - 1))
    last = max(first, _piece_at(starts, len(text) - s - 1))
    # take a neighbour in while the stretch to write is a crumb
    while (starts[last + 1] - starts[first]) + (len(new) - len(text)) < PIECE // 4:
        if last + 1 < len(parts):
            last += 1
        elif first > 0:
            first -= 1
        else:
            break
    head, tail = starts[first], len(text) - starts[last + 1]
    bodies = _cut(new[head : len(new) - tail])
    room = _GAP * (len(bodies) + 1)
    lo = parts[first - 1][0] if first > 0 else parts[first][0] - room
    hi = parts[last + 1][0] if last + 1 < len(parts) else parts[last][0] + room
    if hi - lo <= len(bodies):  # no room between the neighbours: renumber by writing it all
        return _write_all(c, block_n, new)
    c.execute(
        "DELETE FROM block_text_parts WHERE block_n=? AND pos BETWEEN ? AND ?",
        (block_n, parts[first][0], parts[last][0]),
    )
    step = (hi - lo) // (len(bodies) + 1)
    rows = [(block_n, lo + (i + 1) * step, body) for i, body in enumerate(bodies)]
    c.executemany("INSERT INTO block_text_parts (block_n, pos, body) VALUES (?, ?, ?)", rows)
    return (*parts[:first], *((pos, len(body)) for _, pos, body in rows), *parts[last + 1 :])


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
