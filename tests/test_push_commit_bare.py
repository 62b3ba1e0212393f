"""A group commit on PostgreSQL writes its batch without a savepoint (two round trips fewer);
a refusal that only ``commit_change`` decides alone (a unique violation, a heap gone) rolls the
whole transaction back and commits the group again one by one. SQLite has no such path: the
test runs on both engines and checks the outcome alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from heaper_trio.records import BlockChange, CommitResult, CommitStatus
from heaper_trio.services.documents import DocumentService
from heaper_trio.settings import Settings
from heaper_trio.storage.postgres import commit_batch, push_commit

from .test_push_group_commit import change, projection
from .test_storage import NOW, login, opened


async def test_a_surprise_in_a_bare_batch_rolls_back_and_goes_one_by_one(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = commit_batch.commit_all
    calls: list[int] = []

    async def written_then_refused(c: Any, changes: list[BlockChange], *a: Any) -> Any:
        calls.append(len(changes))
        results: list[CommitResult] = await real(c, changes, *a)
        if len(calls) == 1:  # everything written, then a refusal: all of it must go
            raise asyncpg.UniqueViolationError("duplicate key value")
        return results

    monkeypatch.setattr(commit_batch, "commit_all", written_then_refused)
    settings = make_settings()
    async with opened(settings) as storage:
        user = (await login(storage, "pk-bare", auto_approve=True)).user  # type: ignore[union-attr]
        heap = await DocumentService(storage, settings).create_heap(user, "h", None)
        [first] = await storage.commit_changes(
            [change(heap, "old", None, projection("a", ""))], NOW
        )
        assert first.status is CommitStatus.created
        calls.clear()
        edit = change(heap, "old", 1, projection("b", "x"), n=2)
        new = change(heap, "new", None, projection("c", ""))
        results = await storage.commit_changes([edit, new], NOW)
        assert [r.status for r in results] == [CommitStatus.ok, CommitStatus.created]
        assert [r.last_seq for r in results] == [3, 1]
        old, made = await storage.load_block("old"), await storage.load_block("new")
        assert old is not None and made is not None
        assert len(old.updates) == 3 and len(made.updates) == 1  # the first try left nothing
        blocks = await storage.get_blocks(["old", "new"])
        assert (blocks["old"].title, blocks["new"].title) == ("b", "c")
        # PostgreSQL: the bare batch, then one by one (commit_all not called again)
        assert calls == ([2] if storage.engine == "postgres" else [])


async def test_batched_search_lines_match_one_by_one(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's search rows after a group commit (``write_lines_many``: one statement per
    block) equal those after committing one by one (``write_lines``: three): lines whose uses
    drop but stay, run out, grow, and come new."""
    settings = make_settings()
    async with opened(settings) as storage:
        if storage.engine != "postgres":
            pytest.skip("PostgreSQL's statements")
        from heaper_trio.storage.postgres.runtime import read

        user = (await login(storage, "pk-lines", auto_approve=True)).user  # type: ignore[union-attr]
        heap = await DocumentService(storage, settings).create_heap(user, "h", None)
        before = ("a\na\na\nb\nb\nc\nkeep\ngone\ngone", "x")
        after = ("a\nb\nc\nc\nnew\nkeep", "x\nnew\nnew")
        rows = []
        for prefix, way in (("1", "one by one"), ("2", "batched statements"), ("3", "one call")):
            ids = [f"{prefix}{k}" for k in "pq"]
            for i in ids:
                await storage.commit_changes(
                    [change(heap, i, None, projection("t", before[0]))], NOW
                )
            edits = [
                change(heap, ids[0], 1, projection("t", after[0])),
                change(heap, ids[1], 1, projection("t", after[1])),
            ]
            with monkeypatch.context() as m:
                if way != "one call":  # the batch's statements run only when 0023's call may not
                    m.setattr(push_commit, "eligible", lambda changes: False)
                if way == "one by one":
                    m.setattr(commit_batch, "batchable", lambda changes: False)
                results = await storage.commit_changes(edits, NOW)
            assert [r.status for r in results] == [CommitStatus.ok] * 2

            async def lines(c: Any, ids: list[str]) -> Any:
                found = await c.fetch(
                    "SELECT block_id, body, uses FROM block_lines WHERE block_id = ANY($1) "
                    'ORDER BY block_id COLLATE "C", body COLLATE "C"',
                    ids,
                )
                return [(r[0][1:], r[1], r[2]) for r in found]

            rows.append(await storage._run(read, lines, ids))  # type: ignore[attr-defined]
        assert rows[0] == rows[1] == rows[2]
        assert ("p", "a", 1) in rows[1] and ("p", "c", 2) in rows[1] and ("q", "new", 2) in rows[1]
        assert not [r for r in rows[1] if r[2] <= 0 or r[1] == "gone"]
