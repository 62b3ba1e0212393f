"""Stale upload claims are swept and unfinished deletions taken up (``services/file_claims``):
a process killed while it held a claim (or whose release failed) leaves its row for ever
otherwise, and one killed between dropping a file's row and removing its bytes leaves the
bytes. Only claims past their TTL go, which no drop counts any more; a claim that may still
be live is never removed. Storage on both engines; a real killed process and a real server's
start-up sweep on PostgreSQL (SQLite keeps claims in memory: a kill leaves none there)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from heaper_trio.services import file_claims
from heaper_trio.services.file_claims import CLAIM_TTL_MS, DELETION_TTL_MS
from heaper_trio.settings import Settings
from heaper_trio.storage import Storage
from tests.test_storage import NOW, opened
from tests.test_storage_contract import H1, H2

H3 = "c" * 64


def wall_ms() -> int:
    return int(time.time() * 1000)


async def rows(storage: Storage) -> tuple[set[str], set[str]]:
    """(claim tokens, hashes being deleted), read as another process would."""
    s: Any = storage
    if s.engine == "sqlite":

        def read(c: Any) -> tuple[set[str], set[str]]:
            claims = {r[0] for r in c.execute("SELECT token FROM file_claims")}
            return claims, {r[0] for r in c.execute("SELECT hash FROM file_deletions")}

        result: tuple[set[str], set[str]] = await s.rt.write(read)
        return result
    from heaper_trio.storage.postgres.runtime import read as pg_read

    async def fetch(c: Any) -> tuple[set[str], set[str]]:
        claims = {r[0] for r in await c.fetch("SELECT token FROM file_claims")}
        return claims, {r[0] for r in await c.fetch("SELECT hash FROM file_deletions")}

    fetched: tuple[set[str], set[str]] = await s._run(pg_read, fetch)
    return fetched


async def test_only_claims_past_their_ttl_are_swept_in_bounded_batches(
    make_settings: Callable[..., Settings],
) -> None:
    async with opened(make_settings()) as storage:
        await storage.claim_file(H1, "dead", NOW - CLAIM_TTL_MS - 1, 0)
        await storage.claim_file(H2, "dead2", NOW - CLAIM_TTL_MS - 5, 0)
        await storage.claim_file(H1, "edge", NOW - CLAIM_TTL_MS, 0)  # counted by a drop now
        await storage.claim_file(H3, "live", NOW, 0)
        await storage.add_file(file_of(H1))
        [gone] = await storage.drop_unreferenced_files(
            [H1], now=NOW - DELETION_TTL_MS - 1, claims_after=NOW + 1
        )
        assert gone.hash == H1
        assert await rows(storage) == ({"dead", "dead2", "edge", "live"}, {H1})

        # limit 1: one claim per statement; a stale deletion mark is never swept (its bytes
        # may still be there: finish_interrupted_deletions takes it up)
        assert await storage.sweep_file_claims(NOW - CLAIM_TTL_MS, 1) == 1
        claims, deleting = await rows(storage)
        assert len(claims & {"dead", "dead2"}) == 1 and deleting == {H1}
        assert await file_claims.sweep_claims_once(storage, NOW) == 1
        assert await rows(storage) == ({"edge", "live"}, {H1})
        assert await file_claims.sweep_claims_once(storage, NOW) == 0
        # the kept claim still holds its file against a drop
        await storage.add_file(file_of(H2))
        await storage.claim_file(H2, "held", NOW, 0)
        assert await storage.drop_unreferenced_files([H2], now=NOW, claims_after=NOW) == []
        assert await file_claims.sweep_claims_once(storage, NOW) == 0
        assert "held" in (await rows(storage))[0]


async def test_a_deletion_left_unfinished_is_taken_up_unless_a_file_or_an_upload_has_it(
    make_settings: Callable[..., Settings],
) -> None:
    """Marks older than ``DELETION_TTL_MS`` are deletions a crash or a failed removal left:
    their rows are gone, maybe not their bytes. Resuming one marks it again (uploads wait for
    it) for the caller to remove the bytes; one whose hash is a file's again just loses its
    mark; one an upload claims is left for later."""
    h4 = "d" * 64
    async with opened(make_settings()) as storage:
        stale = NOW - DELETION_TTL_MS - 1
        for h in (H1, H2, H3, h4):
            await storage.add_file(file_of(h))
            when = NOW if h == h4 else stale - (h == H1)  # H1 the oldest; h4 under way
            assert len(await storage.drop_unreferenced_files([h], now=when, claims_after=NOW + 1))
        await storage.add_file(file_of(H2))  # uploaded again since: the bytes are its
        await storage.claim_file(H3, "uploading", NOW, 0)

        cutoff = NOW - DELETION_TTL_MS
        assert await storage.stale_file_deletions(cutoff, 1) == [H1]  # oldest first
        found = await storage.stale_file_deletions(cutoff, 10)
        assert sorted(found) == sorted([H1, H2, H3])
        resumed = await storage.resume_file_deletions(
            [*found, h4], started_before=cutoff, now=NOW + 5, claims_after=NOW - CLAIM_TTL_MS
        )
        assert resumed == [H1]
        assert (await rows(storage))[1] == {H1, H3, h4}
        # H1 is being deleted again: an upload waits for its end
        assert await storage.claim_file(H1, "t", NOW + 6, NOW + 5)
        assert await storage.stale_file_deletions(cutoff, 10) == [H3]
        # resumed twice (two processes' sweeps): only one takes it
        assert (
            await storage.resume_file_deletions(
                [H1], started_before=cutoff, now=NOW + 7, claims_after=NOW - CLAIM_TTL_MS
            )
            == []
        )
        # a remover whose mark another sweep stamped again ends nothing: that one's removal
        # is under way (an upload must keep waiting for it)
        await storage.end_file_deletions([H1], stale - 1)
        assert H1 in (await rows(storage))[1]
        await storage.end_file_deletions([H1], NOW + 5)
        assert H1 not in (await rows(storage))[1]
        await storage.release_file_claim(H3, "uploading")
        assert await storage.resume_file_deletions(
            [H3], started_before=cutoff, now=NOW + 8, claims_after=NOW - CLAIM_TTL_MS
        ) == [H3]
        assert (
            await storage.resume_file_deletions(
                [], started_before=cutoff, now=NOW, claims_after=NOW
            )
            == []
        )


def file_of(hash: str) -> Any:
    from tests.test_storage_object_state import file

    return file(hash)


CLAIMER = """
import sys, time, trio
from heaper_trio.aio import open_asyncio_loop
from heaper_trio.services.container import open_storage
from heaper_trio.services.file_claims import CLAIM_TTL_MS, claimed
from heaper_trio.settings import load_settings

async def main():
    settings = load_settings(environ={}, overrides={
        "data_dir": sys.argv[1], "database_url": sys.argv[2], "pg_pool_min": 1, "pg_pool_max": 2})
    async with open_asyncio_loop(), open_storage(settings) as storage:
        now = int(time.time() * 1000)
        await storage.claim_file(sys.argv[3], "crashed-long-ago", now - CLAIM_TTL_MS - 1000, 0)
        async with claimed(storage, sys.argv[4]):   # the upload's own claim, held
            print("held", flush=True)
            await trio.sleep_forever()

trio.run(main)
"""


@pytest.mark.engines("postgres")
async def test_a_killed_processs_claims_are_swept_at_start_once_stale(
    make_settings: Callable[..., Settings], start_server: Any
) -> None:
    settings = make_settings()
    settings.data_path.mkdir(parents=True, exist_ok=True)
    with subprocess.Popen(  # noqa: ASYNC220 (started once, waited for in a thread)
        [sys.executable, "-c", CLAIMER, str(settings.data_path), settings.database_url, H1, H2],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            line = await trio.to_thread.run_sync(proc.stdout.readline)
            assert line.strip() == "held", line + proc.stderr.read()
        finally:
            proc.send_signal(signal.SIGKILL)  # no release: its rows stay
            await trio.to_thread.run_sync(proc.wait)
    async with opened(settings) as storage:
        claims, _ = await rows(storage)
        assert "crashed-long-ago" in claims and len(claims) == 2, claims
        live = next(iter(claims - {"crashed-long-ago"}))

        await start_server()  # its first sweep runs at start
        with trio.fail_after(10):
            while "crashed-long-ago" in (await rows(storage))[0]:
                await trio.sleep(0.05)
        # the killed process's fresh claim may be a live one as far as anyone can tell: kept
        assert (await rows(storage))[0] == {live}
        now = await storage.clock_ms()
        assert await file_claims.sweep_claims_once(storage, now) == 0
        assert await file_claims.sweep_claims_once(storage, now + CLAIM_TTL_MS + 1000) == 1
        assert (await rows(storage))[0] == set()


async def test_the_sweeper_runs_at_start_and_every_interval_and_survives_a_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[float] = []

    class Fake:
        fail = True

        async def clock_ms(self) -> int:
            return wall_ms()

        async def sweep_file_claims(self, claims_before: int, n: int) -> int:
            calls.append(trio.current_time())
            assert abs(wall_ms() - CLAIM_TTL_MS - claims_before) < 10_000
            if Fake.fail:  # the first pass fails: logged, the next one comes all the same
                Fake.fail = False
                raise OSError("database unreachable")
            return n if len(calls) < 30 else 0  # a backlog: full batches

    finishes: list[float] = []

    async def finish() -> int:
        finishes.append(trio.current_time())
        return 0

    async with trio.open_nursery() as nursery:
        nursery.start_soon(file_claims.sweep_claims_forever, Fake(), finish)
        await trio.sleep(file_claims.SWEEP_EVERY_S * 2 + 1)
        nursery.cancel_scope.cancel()
    assert finishes == [0.0, file_claims.SWEEP_EVERY_S, file_claims.SWEEP_EVERY_S * 2]
    starts = sorted(set(calls))
    assert starts == [0.0, file_claims.SWEEP_EVERY_S, file_claims.SWEEP_EVERY_S * 2], starts
    per_pass = [calls.count(t) for t in starts]
    assert per_pass == [1, file_claims.SWEEP_MAX_BATCHES, 30 - 1 - file_claims.SWEEP_MAX_BATCHES]


async def _renewed_while_swept(pool: Any, renew: str, stale: str, *args: Any) -> list[Any]:
    """A stale row, renewed by a transaction (as a drop or a claim does) that the sweep waits
    for; once it commits, what is left of the row. All on the asyncio side: connection A
    holds the row lock while B's sweep statement waits on it."""
    import asyncio

    from heaper_trio.storage.postgres.file_state import _sweep

    async with pool.acquire() as a, pool.acquire() as b:
        await a.execute(stale)
        async with a.transaction():
            await a.execute(renew, *args)
            sweep = asyncio.ensure_future(_sweep(b, NOW - CLAIM_TTL_MS, SWEEP_LIMIT))
            for _ in range(500):  # until the sweep waits on A's row lock
                if await a.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"):
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the sweep never waited for the row")
        assert await sweep == 0
        return list(
            await a.fetch(
                "SELECT * FROM file_deletions UNION ALL SELECT hash, created_at FROM file_claims"
            )
        )


SWEEP_LIMIT = 500


@pytest.mark.engines("postgres")
async def test_a_claim_renewed_while_the_sweep_waits_for_it_is_kept(
    make_settings: Callable[..., Settings],
) -> None:
    """EvalPlanQual: a DELETE that waited for a row lock rechecks only its own WHERE against
    the row's new version, not the subquery that picked it; without the age test repeated
    there, the claim an upload just renewed went, and a drop could then take its file."""
    async with opened(make_settings()) as storage:
        s: Any = storage
        left = await s._run(
            _renewed_while_swept,
            "INSERT INTO file_claims (hash, token, created_at) VALUES ($1, 't', $2) "
            "ON CONFLICT (hash, token) DO UPDATE SET created_at = excluded.created_at",
            f"INSERT INTO file_claims (hash, token, created_at) VALUES ('{H2}', 't', 1)",
            H2,
            NOW,
        )
        assert [tuple(r) for r in left] == [(H2, NOW)]


async def test_the_sweep_ages_rows_by_the_storages_clock(
    make_settings: Callable[..., Settings],
) -> None:
    """PostgreSQL rows are stamped by several processes: the sweeper takes the database's
    clock, not its own (which may be off by more than a TTL)."""
    async with opened(make_settings()) as storage:
        before = wall_ms()
        clock = await storage.clock_ms()
        # the same machine here: the two clocks agree to well within a second
        assert before - 1000 <= clock <= wall_ms() + 1000
        if getattr(storage, "engine", "") == "postgres":
            s: Any = storage
            from heaper_trio.storage.postgres.runtime import read as pg_read

            async def db_now(c: Any) -> int:
                return int(await c.fetchval("SELECT extract(epoch FROM now()) * 1000"))

            assert abs(clock - await s._run(pg_read, db_now)) < 1000

    cutoffs: list[tuple[int, int]] = []

    class Clocked:
        async def clock_ms(self) -> int:
            return 5 * CLAIM_TTL_MS

        async def sweep_file_claims(self, claims_before: int, n: int) -> int:
            cutoffs.append(claims_before)
            return 0

    async def finish() -> int:
        return 0

    with trio.move_on_after(1):
        await file_claims.sweep_claims_forever(Clocked(), finish)  # type: ignore[arg-type]
    assert cutoffs == [4 * CLAIM_TTL_MS]


async def test_bytes_no_row_names_are_marked_for_the_sweep_and_a_live_mark_kept(
    make_settings: Callable[..., Settings],
) -> None:
    """``mark_file_deletions``: an expired upload's published bytes, marked stale already for
    the sweep to take up; a mark there already (a deletion under way) keeps its stamp."""
    async with opened(make_settings()) as storage:
        stale = NOW - DELETION_TTL_MS - 1
        await storage.add_file(file_of(H2))
        assert await storage.drop_unreferenced_files([H2], now=NOW, claims_after=NOW + 1)
        await storage.mark_file_deletions([H1, H2], stale)
        await storage.mark_file_deletions([], stale)
        assert (await rows(storage))[1] == {H1, H2}
        assert await storage.stale_file_deletions(NOW - DELETION_TTL_MS, 10) == [H1]
        assert not await storage.claim_file(H1, "t", NOW, NOW - DELETION_TTL_MS)  # no wait
        await storage.release_file_claim(H1, "t")
        await storage.end_file_deletions([H2], NOW)  # still the live deletion's stamp
        assert (await rows(storage))[1] == {H1}


async def test_a_claim_by_the_storage_clock_waits_only_for_a_fresh_mark(
    make_settings: Callable[..., Settings],
) -> None:
    """``claim_file_now``: stamped by the storage's clock (PostgreSQL reads it in the claim's
    own statement), it waits for a mark from within the TTL of that clock, not an older one."""
    async with opened(make_settings()) as storage:
        now = await storage.clock_ms()
        await storage.mark_file_deletions([H1], now)
        await storage.mark_file_deletions([H2], now - DELETION_TTL_MS - 1000)
        assert await storage.claim_file_now(H1, "a", DELETION_TTL_MS)
        assert not await storage.claim_file_now(H2, "b", DELETION_TTL_MS)
        assert (await rows(storage))[0] == {"a", "b"}
        later = await storage.clock_ms()
        # stamped between the two reads of the clock: neither swept as stale nor in the future
        assert await storage.sweep_file_claims(now - 1, 10) == 0
        assert await storage.sweep_file_claims(later + 1, 10) == 2
