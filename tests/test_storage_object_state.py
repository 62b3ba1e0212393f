"""Object-store state shared by server processes, on both engines (issue 14): upload claims
against the last holder's deletion (``services/file_claims``), the multipart id stored on the
upload row (first writer wins), and system jobs (the upload expiry lease: one active row,
no owner). Direct calls, no server; on PostgreSQL two storages stand for two processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

import trio

from heaper_trio.records import FileRecord, UploadRecord
from heaper_trio.settings import Settings
from heaper_trio.storage import Storage
from tests.test_storage import NOW, opened
from tests.test_storage_contract import H1, H2, add_users
from tests.test_storage_jobs import job

LONG_AGO = NOW - 10_000_000


def file(hash: str) -> FileRecord:
    return FileRecord(hash, f"f-{hash[-8:]}", 10, "text/plain", "x.txt", None, {}, NOW)


@asynccontextmanager
async def two(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[Storage, Storage]]:
    """Two storages on one PostgreSQL database (two processes); SQLite: the same one twice
    (one process per database there)."""
    settings = make_settings()
    async with opened(settings) as a:
        if not a.shares_processes:
            yield a, a
            return
        async with opened(settings) as b:
            yield a, b


async def test_a_claimed_hash_is_not_dropped_and_a_deletion_makes_claims_wait(
    make_settings: Callable[..., Settings],
) -> None:
    async with opened(make_settings()) as storage:
        await storage.add_file(file(H1))  # no block holds it
        assert not await storage.claim_file(H1, "t1", NOW, NOW - 60_000)
        assert await storage.drop_unreferenced_files([H1], now=NOW, claims_after=NOW - 1) == []
        assert await storage.get_file(H1) is not None  # an upload is about to hold it
        await storage.release_file_claim(H1, "t1")
        dropped = await storage.drop_unreferenced_files([H1], now=NOW, claims_after=NOW - 1)
        assert [f.hash for f in dropped] == [H1]
        # the bytes are being deleted: a claim says so until the deletion ends, or goes stale
        assert await storage.claim_file(H1, "t2", NOW + 1, NOW - 60_000)
        assert not await storage.claim_file(H1, "t2", NOW + 1, NOW + 1)
        await storage.end_file_deletions([H1], NOW + 1)  # not its stamp: stays
        assert await storage.claim_file(H1, "t2", NOW + 1, NOW - 60_000)  # still marked
        await storage.end_file_deletions([H1], NOW)
        await storage.end_file_deletions([], NOW)
        assert not await storage.claim_file(H1, "t2", NOW + 2, NOW - 60_000)
        # a claim older than the bound is a dead process's: it holds nothing
        await storage.add_file(file(H2))
        await storage.claim_file(H2, "old", LONG_AGO, 0)
        dropped = await storage.drop_unreferenced_files([H2], now=NOW, claims_after=NOW - 1)
        assert [f.hash for f in dropped] == [H2]


async def test_claim_and_drop_racing_never_both_win(
    make_settings: Callable[..., Settings],
) -> None:
    """Each round a claim and a drop of one hash race from two processes: either the claim
    sees the deletion (and would wait), or the drop leaves the row (claimed)."""
    async with two(make_settings) as (a, b):
        for round in range(12):
            h = f"{round:064x}"
            await a.add_file(file(h))
            seen: dict[str, object] = {}

            async def claim(h: str = h, seen: dict[str, object] = seen) -> None:
                seen["deleting"] = await b.claim_file(h, "t", NOW, NOW - 60_000)

            async def drop(h: str = h, seen: dict[str, object] = seen) -> None:
                seen["dropped"] = await a.drop_unreferenced_files([h], now=NOW, claims_after=0)

            async with trio.open_nursery() as race:
                race.start_soon(claim)
                race.start_soon(drop)
            assert seen["deleting"] == bool(seen["dropped"]), (round, seen)


async def test_the_first_multipart_id_stored_wins(
    make_settings: Callable[..., Settings],
) -> None:
    async with two(make_settings) as (a, b):
        await add_users(a)
        upload = UploadRecord("up1", "u1", "h1", "blk", H1, 25, 10, "a", "x/y", NOW, NOW + 9)
        assert (await a.save_upload(upload)).multipart_id is None  # a row from before
        got: list[str | None] = []

        async def store(storage: Storage, mine: str) -> None:
            got.append(await storage.set_multipart_id("up1", mine))

        async with trio.open_nursery() as race:
            race.start_soon(store, a, "m-a")
            race.start_soon(store, b, "m-b")
        assert got[0] == got[1] and got[0] in ("m-a", "m-b")
        assert (await b.get_upload("h1", "blk", H1)).multipart_id == got[0]  # type: ignore[union-attr]
        assert await a.set_multipart_id("up1", "m-c") == got[0]  # not expected: unchanged
        assert await a.set_multipart_id("up1", "m-c", expected=got[0]) == "m-c"  # replaced
        assert await a.set_multipart_id("gone", "m-d") is None


async def test_a_system_job_has_no_owner_and_one_active_row(
    make_settings: Callable[..., Settings],
) -> None:
    async with opened(make_settings()) as storage:
        await add_users(storage)
        lease = replace(job("x1", owner=""), kind="upload_expiry", heap_id="", path="")
        assert await storage.insert_jobs([lease])
        assert not await storage.insert_jobs([replace(lease, id="x2")])  # one holder
        assert (await storage.get_job("x1")).owner_id == ""  # type: ignore[union-attr]
        assert "x1" not in [j.id for j in await storage.list_jobs("u1", True, 0, 10)]
        assert "x1" in [j.id for j in await storage.list_jobs(None, True, 0, 10)]
        await storage.finish_job(replace(lease, state="done", finished_at=NOW + 1))
        assert await storage.insert_jobs([replace(lease, id="x2")])  # the next holder
        assert await storage.insert_jobs([job("u1-scan")])  # users' jobs are unaffected
