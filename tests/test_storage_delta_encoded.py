"""The change feed whose rows the database writes as JSON (``changes_since_encoded``) answers,
byte for byte, what the Python path (``changes_since`` then ``web/json_sync.delta_bytes``)
answers for the same state, on both engines: every page of walks with several page sizes,
through ties of change times in both feeds, tombstones, and titles that need every kind of
JSON quoting. The engines' own fallback (used when the database quotes text otherwise) is
held to the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from heaper_trio.records import CommitStatus
from heaper_trio.settings import Settings
from heaper_trio.storage import Storage, observe
from heaper_trio.web.json_sync import delta_bytes, encoded_delta_bytes
from tests.test_storage import NOW, opened
from tests.test_storage_contract import add_users, change, new_heap
from tests.test_sync_perf_paths import fresh_totals, raw

# Quoting of every class: controls (PostgreSQL text holds no NUL), quote, backslash, slash,
# DEL, two- three- and four-byte UTF-8, JavaScript's line separators, plain commas and braces.
TITLES = (
    "".join(map(chr, range(1, 32))),
    'quote " back \\ slash / del \x7f',
    "été € 😀 \u2028\u2029",
    '},{"block_id":"forged"}',
    "",
)


async def walk_both(storage: Storage, heap_id: str, limit: int) -> int:
    """Walk the feed both ways in step; every page must be the same bytes. Pages walked."""
    since, pages = 0, 0
    while True:
        encoded = await storage.changes_since_encoded(heap_id, since, limit)
        plain = await storage.changes_since(heap_id, since, limit)
        got = encoded_delta_bytes(encoded)
        assert got == delta_bytes(plain), (limit, since, got)
        assert (encoded.changed_count, encoded.deleted_count) == (
            len(plain.changed),
            len(plain.deleted),
        )
        orjson.loads(got)  # and it is JSON
        pages += 1
        since = encoded.server_time
        if not encoded.has_more:
            return pages


async def test_encoded_feed_equals_the_python_path(make_settings: Callable[..., Settings]) -> None:
    async with opened(make_settings()) as storage:
        assert storage.sql_json  # type: ignore[attr-defined]  # the database's path is tested
        await add_users(storage)
        await new_heap(storage, "h1")
        await new_heap(storage, "other")
        # ids written in reverse of their order, so a tie's (time, id) order is not the
        # order rows were inserted in
        ids = [f"b{i:02d}" for i in range(11, -1, -1)]
        changes = [
            change(b, "h1", title=TITLES[i % len(TITLES)], type="note" if i % 3 else "tag")
            for i, b in enumerate(ids)
        ]
        changes.append(change("trashed", "h1", title="in the trash", deleted_at=NOW + 1))
        results = await storage.commit_changes(changes, NOW)
        assert all(r.status is CommitStatus.created for r in results)
        await storage.commit_changes([change("x", "other", title="not this heap")], NOW)
        tie = NOW + 500
        for b in ids[2:7]:  # five blocks share one change time
            await raw(
                storage,
                "UPDATE blocks SET updated_at=? WHERE id=?",
                "UPDATE blocks SET updated_at=$1 WHERE id=$2",
                tie,
                b,
            )
        await raw(  # a block without a type: null in the answer
            storage,
            "UPDATE blocks SET type=NULL WHERE id=?",
            "UPDATE blocks SET type=NULL WHERE id=$1",
            ids[0],
        )
        for i, b in enumerate(("gone4", "gone3", "gone2", "gone1", "gone0")):
            await raw(
                storage,
                "INSERT INTO block_tombstones (block_id, heap_id, deleted_at) VALUES (?, ?, ?)",
                "INSERT INTO block_tombstones (block_id, heap_id, deleted_at) VALUES ($1, $2, $3)",
                b,
                "h1",
                tie + 1 if i < 3 else tie - 1 - i,
            )
        await raw(
            storage,
            "UPDATE heaps SET clock=? WHERE id=?",
            "UPDATE heaps SET clock=$1 WHERE id=$2",
            tie + 100,
            "h1",
        )
        for limit in (1, 2, 3, 4, 7, 1000):
            assert await walk_both(storage, "h1", limit) >= (1 if limit == 1000 else 2)
        # past the last change, an unknown heap: empty pages alike
        for heap_id, since in (("h1", tie + 100), ("nope", 0), ("h1", 2**62)):
            page = await storage.changes_since_encoded(heap_id, since, 10)
            assert encoded_delta_bytes(page) == delta_bytes(
                await storage.changes_since(heap_id, since, 10)
            )
            assert (page.changed, page.deleted, page.has_more) == ("", "", False)
        # the fallback for a database quoting otherwise: the same bytes from Python
        storage.sql_json = False  # type: ignore[attr-defined]
        for limit in (2, 1000):
            await walk_both(storage, "h1", limit)


async def test_encoded_walk_counts_totals_once(make_settings: Callable[..., Settings]) -> None:
    """The totals are carried page to page on the encoded path too, counted again when a
    write came in between, and always what a fresh count gives."""
    async with opened(make_settings()) as storage:
        await add_users(storage)
        await new_heap(storage, "h1")
        await storage.commit_changes([change(f"b{i}", "h1") for i in range(9)], NOW)
        memo = storage.delta_totals  # type: ignore[attr-defined]
        hits, since, seen, totals = memo.hits, 0, 0, []
        while True:
            page = await storage.changes_since_encoded("h1", since, 2)
            assert (page.total_changed, page.total_deleted) == await fresh_totals(
                storage, "h1", since
            )
            totals.append(page.total_changed)
            seen += page.changed_count
            since = page.server_time
            if not page.has_more:
                break
            if len(totals) == 2:  # a new block between pages: the next page counts again
                await storage.commit_changes([change("late", "h1")], NOW)
        assert seen == 11 and totals == [10, 8, 7, 5, 3, 1]  # the root, nine, and the late one
        assert memo.hits - hits == len(totals) - 2  # counted on the first page and after the write


async def test_owned_feed_checks_the_owner_in_the_page(
    make_settings: Callable[..., Settings],
) -> None:
    """``owned_changes_since_encoded`` (the delta route's one round trip on PostgreSQL): the
    owner's pages are the unowned path's bytes, walk and totals alike; another user and an
    unknown heap get None, and asking for them neither spends nor corrupts the owner's
    carried totals. Both ways on PostgreSQL: the folded statement and the fallback."""
    async with opened(make_settings()) as storage:
        await add_users(storage)
        await new_heap(storage, "h1")
        await storage.commit_changes(
            [change(f"b{i}", "h1", title=TITLES[i % 5]) for i in range(7)], NOW
        )
        for sql_json in (True, False):
            storage.sql_json = sql_json  # type: ignore[attr-defined]
            since, pages = 0, 0
            while True:
                owned = await storage.owned_changes_since_encoded("u1", "h1", since, 3)
                assert owned is not None
                assert await storage.owned_changes_since_encoded("u2", "h1", since, 3) is None
                assert await storage.owned_changes_since_encoded("u1", "nope", since, 3) is None
                plain = await storage.changes_since(heap_id="h1", since=since, limit=3)
                assert encoded_delta_bytes(owned) == delta_bytes(plain)
                assert (owned.total_changed, owned.total_deleted) == await fresh_totals(
                    storage, "h1", since
                )
                pages += 1
                since = owned.server_time
                if not owned.has_more:
                    break
            assert pages == 3  # the root and seven blocks, three a page


class _Trips:
    def __init__(self) -> None:
        self.trips = 0

    def commit_batch(self, engine: str, size: int, seconds: float) -> None:
        pass

    def round_trip(self, engine: str, kind: str, seconds: float) -> None:
        self.trips += 1


async def test_a_postgres_delta_page_is_one_round_trip(
    make_settings: Callable[..., Settings],
) -> None:
    """The delta route's page on PostgreSQL, ownership check included, is one database call
    (each costs more than a page's rows, issue 12 item 4); a refused heap is one call too."""
    async with opened(make_settings()) as storage:
        if storage.engine != "postgres":
            pytest.skip("SQLite asks get_heap then the page, both in process")
        await add_users(storage)
        await new_heap(storage, "h1")
        await storage.commit_changes([change(f"b{i}", "h1") for i in range(5)], NOW)
        trips = _Trips()
        observe.set_observer(trips)
        try:
            since, pages = 0, 0
            while True:
                page = await storage.owned_changes_since_encoded("u1", "h1", since, 2)
                assert page is not None
                pages += 1
                since = page.server_time
                if not page.has_more:
                    break
            assert await storage.owned_changes_since_encoded("u2", "h1", 0, 2) is None
        finally:
            observe.set_observer(observe._Nobody())
        assert (pages, trips.trips) == (3, 4)


class _OwnerLeavesAfterFirstStatement:
    """A connection on which the heap changes hands between a page's two statements (the
    keyset read and, after a tie at its end, the full range)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.statements = 0

    async def fetchrow(self, query: str, *args: Any) -> Any:
        self.statements += 1
        if self.statements == 2:
            await self.conn.execute("UPDATE heaps SET owner_id='u2' WHERE id='h1'")
        return await self.conn.fetchrow(query, *args)


async def test_a_postgres_page_read_again_checks_the_owner_again(
    make_settings: Callable[..., Settings],
) -> None:
    """A page whose first rows end in a tie is read again in a snapshot of its own; a heap
    that is no longer the asker's by then is refused there too, not answered empty."""
    async with opened(make_settings()) as storage:
        if storage.engine != "postgres":
            pytest.skip("the keyset read and its fallback are PostgreSQL's")
        from heaper_trio.storage.postgres import feed
        from heaper_trio.storage.postgres.runtime import read

        await add_users(storage)
        await new_heap(storage, "h1")
        await storage.commit_changes([change(f"b{i}", "h1") for i in range(3)], NOW)
        await raw(storage, "", "UPDATE blocks SET updated_at=$1 WHERE heap_id=$2", NOW + 7, "h1")
        conn: list[_OwnerLeavesAfterFirstStatement] = []

        async def page(c: Any) -> Any:
            conn.append(_OwnerLeavesAfterFirstStatement(c))
            return await feed.changes_since_encoded(conn[0], "h1", 0, 1, None, "u1")

        assert await storage._run(read, page) is None  # type: ignore[attr-defined]
        assert conn[0].statements == 2  # the tie sent it to the second statement
