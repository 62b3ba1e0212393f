"""The jobs table as the scan service uses it (``services/scans/registry``): heartbeats, the
reaper, aborts through the table, and the loop's cadence. Time is an argument (``now_ms``)
or trio's autojump clock; nothing here sleeps for real."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from heaper_trio.errors import Conflict, NotFound
from heaper_trio.records import User
from heaper_trio.records.jobs import JobRecord
from heaper_trio.services.scans.job import ScanJob
from heaper_trio.services.scans.registry import PROCESS_DIED, JobTable
from heaper_trio.settings import Settings
from tests.test_storage import NOW, opened
from tests.test_storage_contract import add_users

U1 = User("u1", "key-u1", None, "approved", False, 0, NOW, NOW)
U2 = User("u2", "key-u2", None, "approved", False, 0, NOW, NOW)
ADMIN = User("u2", "key-u2", None, "approved", True, 0, NOW, NOW)


class Clock:
    def __init__(self) -> None:
        self.ms = NOW

    def __call__(self) -> int:
        return self.ms


def tables(storage: Any, clock: Clock, timeout_s: float = 10.0) -> tuple[JobTable, JobTable, list]:
    """Two processes' tables on one database, and the events they published."""
    published: list[tuple[str, dict[str, object]]] = []

    def publish(user_id: str, evt: dict[str, object]) -> None:
        published.append((user_id, evt))

    return (
        JobTable(storage, publish, timeout_s, clock),
        JobTable(storage, publish, timeout_s, clock),
        published,
    )


async def started(table: JobTable, job: ScanJob) -> ScanJob:
    table.local[job.scan_id] = job
    await table.insert([job])
    return job


@pytest.mark.engines("sqlite")
async def test_a_dead_process_s_job_is_failed_once_and_can_be_started_again(
    make_settings: Callable[..., Settings],
) -> None:
    clock = Clock()
    async with opened(make_settings()) as storage:
        await add_users(storage)
        a, b, published = tables(storage, clock)
        job = await started(a, ScanJob("u1", "h1", "/roots/u1/photos"))
        job.files_done = 5
        clock.ms += 9_000
        await a.beat()  # a beat keeps it alive, and carries its progress
        row = await storage.get_job(job.scan_id)
        assert row is not None and (row.heartbeat_at, row.files_done) == (NOW + 9_000, 5)
        assert [s.scan_id for s in await b.active(U1)] == [job.scan_id]

        # Process A dies: no more beats. At the timeout its job is still A's...
        clock.ms += 10_000
        assert await b.reap() == []
        # ...then B fails it, once, and tells its owner.
        clock.ms += 1
        # it holds its folder until reaped: the same scan cannot start, on any process
        assert [r.id for r in await b.running_rows("u1")] == [job.scan_id]
        with pytest.raises(Conflict) as e:
            await started(b, ScanJob("u1", "h1", "/roots/u1/photos"))
        assert e.value.code == "scan_running" and len(b.local) == 0
        [failed] = await b.reap()
        assert (failed.id, failed.state, failed.error) == (job.scan_id, "failed", PROCESS_DIED)
        assert published == [
            (
                "u1",
                {
                    "type": "scan.failed",
                    "scan_id": job.scan_id,
                    "heap_id": "h1",
                    "path": "/roots/u1/photos",
                    "error": PROCESS_DIED,
                },
            )
        ]
        assert await a.reap() == [] and await b.reap() == []
        assert await b.active(U1) == []
        [history] = await b.history(U1, 10)
        assert (history.state, history.error, history.files_done) == ("failed", PROCESS_DIED, 5)
        # A process that was only hung cannot revive it with a late beat: it aborts the job
        # instead (another process may scan that folder now), and its end changes nothing.
        await a.beat()
        row = await storage.get_job(job.scan_id)
        assert row is not None and row.state == "failed"
        assert job.aborted
        job.state = "aborted"
        await a.finish(job)
        row = await storage.get_job(job.scan_id)
        assert row is not None and (row.state, row.error) == ("failed", PROCESS_DIED)
        # Started again on B: a new job, listed by both.
        again = await started(b, ScanJob("u1", "h1", "/roots/u1/photos"))
        assert [s.scan_id for s in await a.active(U1)] == [again.scan_id]


@pytest.mark.engines("sqlite")
async def test_abort_through_another_process_and_who_may(
    make_settings: Callable[..., Settings],
) -> None:
    clock = Clock()
    async with opened(make_settings()) as storage:
        await add_users(storage)
        a, b, _ = tables(storage, clock)
        job = await started(a, ScanJob("u1", "h1", "/roots/u1/x"))
        for other in (U2,):  # someone else's job: 404 on either process, like no job
            for table in (a, b):
                with pytest.raises(NotFound) as e:
                    await table.abort(other, job.scan_id)
                assert e.value.code == "scan_not_found"
        with pytest.raises(NotFound):
            await b.abort(U1, "no-such-job")
        snap = await b.abort(U1, job.scan_id)  # through B, the row only
        assert snap.state == "aborting" and not job.aborted
        await a.beat()  # A hears of it at its next beat (or at once, by NOTIFY)
        assert job.aborted and job.state == "aborting"
        job.state, job.finished_at = "aborted", clock.ms
        await a.finish(job)
        assert job.scan_id not in a.local
        # Aborting a finished job answers its final state; an admin may abort anyone's.
        assert (await b.abort(ADMIN, job.scan_id)).state == "aborted"
        other = await started(a, ScanJob("u1", "h1", "/roots/u1/y"))
        assert (await b.abort(ADMIN, other.scan_id)).state == "aborting"
        a.abort_local(other.scan_id)  # what the NOTIFY does on A
        assert other.aborted
        a.abort_local("not-here")  # a job of another process: nothing to do


@pytest.mark.engines("sqlite")
async def test_sqlite_fails_the_jobs_of_an_earlier_life_as_it_starts(
    make_settings: Callable[..., Settings],
) -> None:
    """One server process per SQLite database: an active row at start was left by a crash."""
    clock = Clock()
    async with opened(make_settings()) as storage:
        await add_users(storage)
        earlier, now, published = tables(storage, clock)
        left = await started(earlier, ScanJob("u1", "h1", "/roots/u1/a"))
        clock.ms += 100  # well within the timeout
        async with trio.open_nursery() as nursery:
            await nursery.start(now.run)
            row = await storage.get_job(left.scan_id)
            assert row is not None and (row.state, row.error) == ("failed", PROCESS_DIED)
            assert [e["type"] for _, e in published] == ["scan.failed"]
            nursery.cancel_scope.cancel()


class CountingStorage:
    """Records when the loop beats and reaps; fails when told to."""

    shares_processes = True

    def __init__(self) -> None:
        self.beats: list[float] = []
        self.reaps: list[float] = []
        self.forgets = 0
        self.failing = False

    async def beat_jobs(self, now: int, jobs: list[JobRecord]) -> list[str]:
        self.beats.append(trio.current_time())
        if self.failing:
            raise OSError("database down")
        return []

    async def fail_stale_jobs(self, before: int, now: int, error: str) -> list[JobRecord]:
        self.reaps.append(trio.current_time())
        if self.failing:
            raise OSError("database down")
        return []

    async def forget_jobs(self, finished_before: int) -> int:
        self.forgets += 1
        return 0

    async def fail_queued_jobs(self, created_before: int, now: int, error: str) -> list[JobRecord]:
        return []

    async def beat_process(self, *args: object) -> None:
        pass

    async def list_jobs(self, *args: object) -> list[JobRecord]:
        return []


async def test_the_loop_beats_every_second_and_reaps_and_survives_a_failing_database(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = CountingStorage()
    table = JobTable(storage, lambda u, e: None, 10.0)  # type: ignore[arg-type]
    table.local["j"] = ScanJob("u1", "h1", "/p")
    async with trio.open_nursery() as nursery:
        await nursery.start(table.run)
        await trio.sleep(10.5)
        storage.failing = True
        await trio.sleep(5)
        storage.failing = False
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert len(storage.beats) == 21  # every second, through the failures
    assert storage.reaps[:6] == [0, 2, 4, 6, 8, 10] and len(storage.reaps) == 11
    assert storage.forgets == 1  # every ten minutes
    short = JobTable(storage, lambda u, e: None, 1.5)  # type: ignore[arg-type]
    assert (short.beat_s, short.reap_s) == (0.5, 0.75)  # a short timeout beats faster


class FailingFinish(CountingStorage):
    async def finish_job(self, job: JobRecord) -> None:
        raise OSError("database down")


async def test_a_final_write_that_fails_forgets_the_job_all_the_same(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The reaper fails its row later (its process no longer beats for it); the job must not
    stay listed here as running for ever."""
    table = JobTable(FailingFinish(), lambda u, e: None, 10.0)  # type: ignore[arg-type]
    job = ScanJob("u1", "h1", "/p")
    table.local[job.scan_id] = job
    job.state = "done"
    await table.finish(job)
    assert table.local == {}
    assert "writing its final state failed" in caplog.text


class SlowFinish(CountingStorage):
    def __init__(self) -> None:
        super().__init__()
        self.release = trio.Event()
        self.final: list[str] = []

    async def finish_job(self, job: JobRecord) -> None:
        await self.release.wait()
        self.final.append(job.state)


async def test_a_new_job_waits_for_the_final_rows_of_jobs_that_ended_here() -> None:
    """A client told of an end here (the local state) may start the same scan at once: the
    check waits for that end's row, or the table would still hold the folder (409)."""
    storage = SlowFinish()
    table = JobTable(storage, lambda u, e: None, 10.0)  # type: ignore[arg-type]
    job = ScanJob("u1", "h1", "/p")
    table.local[job.scan_id] = job
    job.state = "done"
    settled: list[bool] = []

    async def check() -> None:
        await table.settled()
        settled.append(storage.final == ["done"])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(table.finish, job)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(check)
        await trio.testing.wait_all_tasks_blocked()
        assert settled == [] and job.scan_id in table.local
        storage.release.set()
    assert settled == [True] and table.local == {}
    await table.settled()  # nothing ending: at once
