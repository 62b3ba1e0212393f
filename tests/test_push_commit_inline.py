"""The one call's inline updates (``push_commit._inline``) are sized without writing the
announcement, and must decide as ``announce.inline_updates`` does: the same updates, sent or
not, for any ids, log position and update sizes."""

from __future__ import annotations

import json
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from heaper_trio.protocol import announce
from heaper_trio.storage.postgres import push_commit


@dataclass
class _Change:
    block_id: str
    expected_last_seq: int | None
    updates: tuple[bytes, ...]


@settings(max_examples=300, deadline=None)
@given(
    origin=st.text(min_size=1, max_size=20),
    block_id=st.from_regex(r"[A-Za-z0-9_-]{1,128}", fullmatch=True),
    seq=st.integers(0, 2**40),
    size=st.integers(1, 9),
    count=st.integers(1, 1100),
)
def test_inline_updates_decide_as_announce_does(
    origin: str, block_id: str, seq: int, size: int, count: int
) -> None:
    updates = tuple(bytes([i % 256]) * size for i in range(count))
    ch = _Change(block_id, seq, updates)
    got = push_commit._inline(origin, ch)  # type: ignore[arg-type]
    wide = push_commit._WIDEST_VERSION
    want = announce.inline_updates(origin, block_id, seq + count, wide, updates)
    assert (got is None) == (want is None)
    if got is not None and want is not None:
        assert json.loads(got) == json.loads(want)["d"]
        assert ", " not in got  # compact: the function keeps it verbatim
