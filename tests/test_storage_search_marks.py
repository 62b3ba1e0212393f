"""The storage contract of live commits (both engines): ``BlockChange.search_later`` (the
search rows may be written later, by ``reindex_marked`` or the next open, never lost) and
``BlockChange.heap_owner`` (the commit is refused as a conflict unless the heap is that
user's)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from heaper_trio.records import BlockQuery, CommitStatus
from heaper_trio.settings import Settings
from heaper_trio.storage import Storage
from tests.test_storage import NOW, opened
from tests.test_storage_contract import add_users, change, new_heap


async def _found(storage: Storage, word: str) -> list[str]:
    return [b.id for b in await storage.query_blocks("h1", BlockQuery(terms=(word,)), 10)]


async def test_marked_blocks_are_indexed_by_reindex_marked_and_at_open(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    async with opened(settings) as storage:
        await add_users(storage)
        await new_heap(storage, "h1")
        [made] = await storage.commit_changes([change("b1", "h1", title="alpha")], NOW)
        assert made.status is CommitStatus.created
        later = replace(
            change("b1", "h1", expected=1, title="alpha", text="bravo"), search_later=True
        )
        [edited] = await storage.commit_changes([later], NOW)
        assert edited.status is CommitStatus.ok
        while await storage.reindex_marked():
            pass
        assert await _found(storage, "bravo") == ["b1"] and await _found(storage, "alpha") == ["b1"]
        assert await storage.reindex_marked() == 0
        # marked again, then a commit that indexes at once: the rows are rebuilt whole
        again = replace(
            change("b1", "h1", expected=2, title="alpha", text="charlie"), search_later=True
        )
        assert (await storage.commit_changes([again], NOW))[0].status is CommitStatus.ok
        now = change("b1", "h1", expected=3, title="alpha", text="delta")
        assert (await storage.commit_changes([now], NOW))[0].status is CommitStatus.ok
        assert await _found(storage, "delta") == ["b1"]
        assert await _found(storage, "charlie") == [] and await _found(storage, "bravo") == []
        assert await storage.reindex_marked() == 0
        # marked, and the storage closes before any catch-up
        last = replace(
            change("b1", "h1", expected=4, title="alpha", text="echo"), search_later=True
        )
        assert (await storage.commit_changes([last], NOW))[0].status is CommitStatus.ok
    async with opened(settings) as storage:
        assert await _found(storage, "echo") == ["b1"]
        assert await _found(storage, "delta") == []
        assert await storage.reindex_marked() == 0


async def test_a_commit_for_another_heap_owner_is_a_conflict(
    make_settings: Callable[..., Settings],
) -> None:
    async with opened(make_settings()) as storage:
        await add_users(storage)
        await new_heap(storage, "h1")
        await storage.commit_changes([change("b1", "h1", title="alpha")], NOW)
        results = await storage.commit_changes(
            [
                replace(change("b2", "h1"), heap_owner="u1"),  # the owner: stored
                replace(change("b1", "h1", expected=1), heap_owner="u2"),  # not the owner
                replace(change("b3", "gone"), heap_owner="u1"),  # no such heap
                replace(change("b4", "h1"), heap_owner="u1"),
            ],
            NOW,
        )
        assert [r.status for r in results] == [
            CommitStatus.created,
            CommitStatus.conflict,
            CommitStatus.conflict,
            CommitStatus.created,
        ]
        stored = await storage.load_block("b1")
        assert stored is not None and stored.last_seq == 1
        alone = replace(change("b1", "h1", expected=1), heap_owner="u2")
        assert (await storage.commit_changes([alone], NOW))[0].status is CommitStatus.conflict
        mine = replace(change("b1", "h1", expected=1), heap_owner="u1")
        assert (await storage.commit_changes([mine], NOW))[0].status is CommitStatus.ok
