"""The pieces planner (``storage/text_pieces.py``) against a table kept in a dict: after any
sequence of edits, the pieces hold exactly the new text, in order, none empty or oversized,
and an edit rewrites only what its stretch needs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heaper_trio.storage import text_pieces
from heaper_trio.storage.text_pieces import Plan, Stored

ALPHABET = st.sampled_from(list("ab\nç東😀 "))


class Table:
    """``block_text_parts`` of one block, and its row's text and token."""

    def __init__(self) -> None:
        self.rows: dict[int, str] = {}
        self.inline, self.token = "", 0

    def run(self, p: Plan) -> None:
        if p.delete_all:
            self.rows.clear()
        elif p.delete_between is not None:
            lo, hi = p.delete_between
            self.rows = {k: v for k, v in self.rows.items() if not lo <= k <= hi}
        for pos, body in p.inserts:
            assert pos not in self.rows
            self.rows[pos] = body
        self.inline, self.token = p.inline, p.token

    def text(self) -> str:
        return self.inline + "".join(self.rows[k] for k in sorted(self.rows))

    def stored(self, cached: bool) -> Stored | None:
        if not self.token:
            return None
        kept = text_pieces.recent(self.token) if cached else None
        return kept or text_pieces.read_back(self.token, sorted(self.rows.items()))


@pytest.fixture(autouse=True)
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text_pieces, "BIG_TEXT", 64)
    monkeypatch.setattr(text_pieces, "PIECE", 8)


edits = st.lists(
    st.tuples(st.integers(0, 400), st.integers(0, 60), st.text(ALPHABET, max_size=90)),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(start=st.text(ALPHABET, min_size=70, max_size=300), edits=edits, cached=st.booleans())
def test_pieces_hold_the_text_through_any_edits(
    start: str, edits: list[tuple[int, int, str]], cached: bool
) -> None:
    table, text = Table(), start
    table.run(text_pieces.plan(None, text))
    for at, gone, typed in edits:
        at = min(at, len(text))
        new = text[:at] + typed + text[at + gone :]
        before = dict(table.rows)
        table.run(text_pieces.plan(table.stored(cached), new))
        assert table.text() == new
        if table.token:
            assert table.inline == ""
            assert all(0 < len(b) <= 2 * text_pieces.PIECE for b in table.rows.values())
            if before and len(typed) <= 1 and gone <= 1:  # a keystroke: a few pieces at most
                assert len(set(table.rows.items()) - set(before.items())) <= 3
        else:
            assert table.rows == {} and table.inline == new
        text = new
