"""A PostgreSQL reader of big texts (get_blocks, query_blocks, trashed) runs without a
transaction: a commit landing between its read of the block rows and its read of their pieces
must not be half seen (review: a text shrunk back into its row read as '')."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from heaper_trio.settings import Settings
from heaper_trio.storage import text_pieces
from heaper_trio.storage.postgres import text_parts as pg_text_parts

from .test_storage import NOW, opened
from .test_storage_contract import add_users, change, new_heap


@pytest.mark.engines("postgres")
async def test_a_big_text_shrinking_between_row_and_pieces_is_never_read_torn(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(text_pieces, "BIG_TEXT", 2000)
    monkeypatch.setattr(text_pieces, "PIECE", 200)
    big = "line of text\n" * 400  # 5,200 characters: in pieces
    small = "short now\n"
    async with opened(make_settings()) as storage:
        await add_users(storage)
        await new_heap(storage, "h1")
        await storage.commit_changes([change("b1", "h1", text=big)], NOW)
        assert (await storage.get_blocks(["b1"]))["b1"].text == big

        original = pg_text_parts.records
        fired = False

        async def records(c: Any, rows: Any) -> Any:
            nonlocal fired
            if not fired:  # what a commit of the shrunk text writes, landing right here
                fired = True
                await c.execute("DELETE FROM block_text_parts WHERE block_id='b1'")
                await c.execute("UPDATE blocks SET text=$1, text_parts=0 WHERE id='b1'", small)
            return await original(c, rows)

        monkeypatch.setattr(pg_text_parts, "records", records)
        got = (await storage.get_blocks(["b1"]))["b1"].text
        # Either the text before (big) or after (small) is right; '' never was the text.
        assert got in (big, small), f"torn read: {got!r}"
