"""The line diff behind per-line search rows (storage/search_lines.py): applying what it
returns to the old version's rows must give exactly the new version's rows."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from heaper_trio.storage.search_lines import _STEP, changes, line_key, lines

_TEXT = st.lists(st.sampled_from(["a", "b", "ab", "", "c d", "é", "a\n"]), max_size=12).map(
    "\n".join
)


def _rows(title: str, text: str) -> Counter[str]:
    return lines(title) + lines(text)


def _check(old: tuple[str, str], new: tuple[str, str]) -> tuple[Counter[str], Counter[str]]:
    gone, came = changes(*old, *new)
    assert not (gone & came)
    kept = _rows(*old)
    assert not gone - kept  # only rows that exist are removed
    assert kept - gone + came == _rows(*new)
    return gone, came


@settings(max_examples=100, deadline=None)
@given(_TEXT, _TEXT, _TEXT, _TEXT)
def test_changes_turn_the_old_rows_into_the_new(t0: str, x0: str, t1: str, x1: str) -> None:
    _check((t0, x0), (t1, x1))


@settings(max_examples=40, deadline=None)
@given(_TEXT, _TEXT, _TEXT)
def test_an_edit_between_shared_lines(head: str, middle: str, tail: str) -> None:
    _check(("", head + "\n" + tail), ("", head + "\n" + middle + "\n" + tail))
    _check(("", head + middle + tail), ("", head + tail))


def test_a_word_typed_into_a_big_text_touches_one_line() -> None:
    paragraphs = [f"{i} some words of a long document" for i in range(3 * _STEP // 20)]
    old = "\n".join(paragraphs)
    paragraphs[len(paragraphs) // 2] = "w " + paragraphs[len(paragraphs) // 2]
    gone, came = _check(("Big", old), ("Big", "\n".join(paragraphs)))
    assert len(gone) == len(came) == 1
    assert _check(("", old), ("", old)) == (Counter(), Counter())
    assert _check(("", old), ("", old + "x")) == (
        Counter({paragraphs[-1]: 1}),
        Counter({paragraphs[-1] + "x": 1}),
    )


def test_line_keys_are_signed_64_bit_and_stable() -> None:
    assert line_key("a") == line_key("a") != line_key("b")
    assert all(-(2**63) <= line_key(s) < 2**63 for s in ("", "a", "é" * 1000))
