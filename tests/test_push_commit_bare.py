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
from heaper_trio.storage.postgres import commit_batch

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
