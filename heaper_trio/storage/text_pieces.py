"""Big block texts kept in pieces (migration 0022, issue 12 item 4), shared by both engines.

Rewriting a block's whole text on every push made a typed word cost what the document
costs: SQLite writes a row of a new size anew, overflow pages included (8.6 MB to the WAL,
fsynced and checkpointed, per word), and PostgreSQL compressed and WAL-logged the whole text
again and sent it back and forth over the wire. A text of ``BIG_TEXT`` characters or more is
therefore kept in ``block_text_parts`` (``blocks.text`` holds ''), and a commit rewrites only
the pieces between the old and new texts' common prefix and suffix (found at memcmp speed, as
the search rows do): about one piece per typed word. This module plans that; each engine's
``text_parts`` runs the plan in the commit's transaction, so pieces and row change together.

Pieces are cut at code points (Python ``str`` slices), so a piece never splits a character.
``pos`` orders them with gaps of ``_GAP``, so replacing pieces in the middle renumbers none;
when a gap is used up the whole text is written again (once). A changed stretch shorter than
``PIECE // 4`` takes a neighbour in with it, so deletions leave no crumbs behind.

``blocks.text_parts`` is 0 for a text in the row, else a random token drawn anew whenever the
pieces change. The last few texts planned are kept by token (``_RECENT``), so a push does not
read back the 8 MB written a moment ago: a token names exactly one set of pieces (it is never
drawn twice), and a token whose transaction rolled back is never found in a row. Pieces
written by another process carry a token this one does not know, and are read.

A text may come as ``Segments`` (``records/text_segments``): the common ends skip the segments
the kept text shares by identity, only the changed stretch is sliced out, and the text is
joined only to be written whole (a new text in pieces, or a renumbering).
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass

from heaper_trio.records.text_segments import Text, lazy, lazy_text, raw_text
from heaper_trio.storage.search_lines import common_ends

BIG_TEXT = 256 * 1024  # characters from which a text is kept in pieces
PIECE = 32 * 1024  # characters per piece when a stretch is cut
_GAP = 1 << 20  # distance between the positions of pieces written together

Layout = tuple[tuple[int, int], ...]  # each piece's (pos, length in characters), in order


@lazy_text("text")
@dataclass(frozen=True)
class Stored:
    """A text kept in pieces, as its row's token names it. ``text`` may have been given as
    ``Segments`` (``raw_text`` reads it so); reading ``text`` joins them."""

    token: int
    text: str
    layout: Layout


@dataclass(frozen=True)
class Plan:
    """What a commit writes: ``inline`` and ``token`` go to ``blocks.text`` and
    ``blocks.text_parts``; pieces are deleted (all of them, or those with ``pos`` in
    ``delete_between``, ends included) before ``inserts`` (pos, body) are written."""

    inline: str
    token: int
    delete_all: bool = False
    delete_between: tuple[int, int] | None = None
    inserts: tuple[tuple[int, str], ...] = ()


_RECENT: OrderedDict[int, Stored] = OrderedDict()  # by token, the last few planned
_RECENT_KEPT = 4
_RECENT_LOCK = threading.Lock()  # SQLite writer threads and trio tasks of one process


def recent(token: int) -> Stored | None:
    with _RECENT_LOCK:
        return _RECENT.get(token)


def _remember(stored: Stored) -> None:
    with _RECENT_LOCK:
        _RECENT[stored.token] = stored
        while len(_RECENT) > _RECENT_KEPT:
            _RECENT.popitem(last=False)


def read_back(token: int, rows: list[tuple[int, str]]) -> Stored:
    """The ``Stored`` of pieces (pos, body) read from the database, in order."""
    return Stored(token, "".join(r[1] for r in rows), tuple((r[0], len(r[1])) for r in rows))


def in_pieces(text: Text, now_in_pieces: bool) -> bool:
    """Whether ``text`` is kept in pieces; once in pieces a text stays so until it is half the
    threshold, so one that wavers around it does not move back and forth on every push."""
    return len(text) >= (BIG_TEXT // 2 if now_in_pieces else BIG_TEXT)


def cut(text: str) -> list[str]:
    """``text`` in pieces of about ``PIECE`` characters (none for an empty text)."""
    if len(text) <= 2 * PIECE:
        return [text] if text else []
    count = -(-len(text) // PIECE)
    size = -(-len(text) // count)
    return [text[i : i + size] for i in range(0, len(text), size)]


def plan(old: Stored | None, new: Text) -> Plan:
    """Keep ``new`` as the block's text; ``old`` is what its pieces hold now (None: the
    text is in the row). A text in ``Segments`` is joined only to be written whole."""
    if not in_pieces(new, old is not None):
        return Plan(str(new), 0, delete_all=old is not None)
    if old is not None and len(raw_text(old)) == len(new) == common_ends(raw_text(old), new)[0]:
        return Plan("", old.token)
    out = _whole(str(new)) if old is None or not old.layout else _changed(old, new)
    layout = out[1]
    stored = Stored(secrets.randbits(62) + 1, lazy(new), layout)
    _remember(stored)
    return Plan("", stored.token, *out[0])


_Writes = tuple[bool, tuple[int, int] | None, tuple[tuple[int, str], ...]]


def _whole(new: str) -> tuple[_Writes, Layout]:
    rows = tuple((i * _GAP, body) for i, body in enumerate(cut(new)))
    return (True, None, rows), tuple((pos, len(body)) for pos, body in rows)


def _changed(old: Stored, new: Text) -> tuple[_Writes, Layout]:
    """Replace the pieces that hold what changed between ``old`` and ``new``."""
    parts, text = old.layout, raw_text(old)
    starts = [0]
    for _, length in parts:
        starts.append(starts[-1] + length)
    p, s = common_ends(text, new)
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
    bodies = cut(new[head : len(new) - tail])
    room = _GAP * (len(bodies) + 1)
    lo = parts[first - 1][0] if first > 0 else parts[first][0] - room
    hi = parts[last + 1][0] if last + 1 < len(parts) else parts[last][0] + room
    if hi - lo <= len(bodies):  # no room between the neighbours: renumber by writing it all
        return _whole(str(new))
    step = (hi - lo) // (len(bodies) + 1)
    rows = tuple((lo + (i + 1) * step, body) for i, body in enumerate(bodies))
    layout = (*parts[:first], *((pos, len(body)) for pos, body in rows), *parts[last + 1 :])
    return (False, (parts[first][0], parts[last][0]), rows), layout


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
