"""Full-text search rows per line (migration 0017, issue 12 item 4), shared by both engines.

A block is searched through the distinct lines of its title and text (``block_lines``: one row
per distinct non-empty line with the number of times it occurs), not through one index entry
of the whole text: a typed word changes one line, and re-indexing that line costs what the
edit costs, where re-indexing a 5.5 MB text took 500-650 ms of every push into it.

What changed between two versions is found without splitting the whole text twice: the texts
share a prefix and a suffix of whole lines (found by comparing slices, at memcmp speed), and
only the lines between them are counted. Lines that leave in one place and come back in
another (a moved paragraph) cancel out. A phrase is matched within one line (docs/api.md,
"Search").
"""

from __future__ import annotations

import hashlib
from collections import Counter

from heaper_trio.records import text_segments
from heaper_trio.records.text_segments import _STEP as _STEP
from heaper_trio.records.text_segments import Text


def lines(text: str) -> Counter[str]:
    """The indexed lines of a text: non-empty ones, with how often each occurs."""
    return Counter(line for line in text.split("\n") if line)


# The last ``common_ends`` answer, by the identity of its two texts: a commit asks it twice
# about the same two (big) texts, for its pieces (``text_pieces``) and for these rows.
_last_ends: tuple[Text, Text, int, int] | None = None


def common_ends(a: Text, b: Text) -> tuple[int, int]:
    """(p, s): ``a`` and ``b`` share ``p`` leading and then ``s`` trailing characters (texts
    in ``Segments`` skip the parts they share: ``text_segments.common_ends``)."""
    global _last_ends
    last = _last_ends
    if last is not None and last[0] is a and last[1] is b:
        return last[2], last[3]
    p, s = text_segments.common_ends(a, b)
    _last_ends = (a, b, p, s)
    return p, s


def _middles(a: Text, b: Text) -> tuple[str, str]:
    """The parts of ``a`` and ``b`` outside their common leading and trailing whole lines."""
    p, s = common_ends(a, b)
    start = a.rfind("\n", 0, p) + 1  # lines before ``start`` are whole and equal
    tail, tail_b = len(a) - s, len(b) - s  # a[tail:] == b[tail_b:]
    if (tail == 0 or a[tail - 1] == "\n") and (tail_b == 0 or b[tail_b - 1] == "\n"):
        end = tail
    else:
        nl = a.find("\n", tail)
        end = len(a) if nl < 0 else nl + 1
    cut = len(a) - end  # common trailing characters that begin a line in both
    return a[start:end], b[start : len(b) - cut]


def changes(
    old_title: str, old_text: Text, title: str, text: Text
) -> tuple[Counter[str], Counter[str]]:
    """(lines to remove, lines to add) that turn the rows of the old version into the new."""
    gone, came = lines(old_title), lines(title)
    if old_text != text:
        old_mid, new_mid = _middles(old_text, text)
        gone.update(lines(old_mid))
        came.update(lines(new_mid))
    both = gone & came
    return gone - both, came - both


def line_key(line: str) -> int:
    """A signed 64-bit key of a line for SQLite's index (rows are matched on the line too, so
    a collision costs nothing but a longer index lookup). PostgreSQL computes its own key."""
    return int.from_bytes(
        hashlib.blake2b(line.encode(), digest_size=8).digest(), "big", signed=True
    )
