"""The jobs table's storage contract on both engines (migration 0012): insert, beat, abort
requests, listing, the reaper and forgetting. Direct calls, no server."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from heaper_trio.records.jobs import COUNTERS, JobProcess, JobRecord
from heaper_trio.settings import Settings
from tests.test_storage import NOW, opened
from tests.test_storage_contract import add_users

P1, P2 = JobProcess("p1", "host-a", 11), JobProcess("p2", "host-b", 22)


def job(job_id: str, owner: str = "u1", at: int = NOW, process: JobProcess = P1) -> JobRecord:
    return JobRecord(
        id=job_id,
        owner_id=owner,
        heap_id="h1",
        kind="scan",
        path=f"/roots/{job_id}",
        state="running",
        process=process,
        created_at=at,
        heartbeat_at=at,
        started_at=at,
    )


async def test_jobs_beat_abort_list_reap_and_forget(
    make_settings: Callable[..., Settings],
) -> None:
    async with opened(make_settings()) as storage:
        await add_users(storage)
        assert await storage.insert_jobs([job("j1"), job("j2", at=NOW + 1)])
        assert await storage.insert_jobs([job("j3", "u2", NOW + 2, P2)])
        assert await storage.insert_jobs([])
        got = await storage.get_job("j1")
        assert got == replace(job("j1"), counters=dict.fromkeys(COUNTERS, 0))
        assert got.active and not got.abort_requested
        assert await storage.get_job("nope") is None

        # A beat: heartbeat and progress of the process's jobs, one call for all of them.
        progress = replace(
            job("j1"),
            files_seen=10,
            files_done=4,
            bytes=4096,
            current_path="/roots/j1/a",
            counters={"files_new": 3, "errors": 1, "not_a_counter": 9},
        )
        assert await storage.beat_jobs(NOW + 100, [progress, job("j2", at=NOW + 1)]) == []
        got = await storage.get_job("j1")
        assert got is not None and got.heartbeat_at == NOW + 100
        assert (got.files_seen, got.files_done, got.bytes, got.current_path) == (
            10,
            4,
            4096,
            "/roots/j1/a",
        )
        assert got.counters["files_new"] == 3 and got.counters["errors"] == 1
        assert "not_a_counter" not in got.counters and got.counters["folders"] == 0

        # An abort asked through the table: the row says aborting, and the next beat of
        # the running process hears of it, even if that beat still says running.
        asked = await storage.request_job_abort("j2")
        assert asked is not None and asked.state == "aborting" and asked.abort_requested
        assert await storage.beat_jobs(NOW + 200, [job("j1"), job("j2")]) == ["j2"]
        got = await storage.get_job("j2")
        assert got is not None and got.state == "aborting"  # not turned back into running
        assert await storage.request_job_abort("nope") is None

        # Listing: newest first, by owner or everyone's, active or also recently finished.
        assert [j.id for j in await storage.list_jobs("u1", True, 0, 10)] == ["j2", "j1"]
        assert [j.id for j in await storage.list_jobs(None, True, 0, 10)] == ["j3", "j2", "j1"]
        assert [j.id for j in await storage.list_jobs(None, True, 0, 1)] == ["j3"]
        done = replace(job("j1"), state="done", finished_at=NOW + 300, files_done=7)
        await storage.finish_job(done)
        got = await storage.get_job("j1")
        assert got is not None and (got.state, got.finished_at, got.files_done) == (
            "done",
            NOW + 300,
            7,
        )
        assert not got.active
        assert [j.id for j in await storage.list_jobs("u1", True, 0, 10)] == ["j2"]
        assert [j.id for j in await storage.list_jobs("u1", False, NOW, 10)] == ["j2", "j1"]
        assert [j.id for j in await storage.list_jobs("u1", False, NOW + 301, 10)] == ["j2"]
        # a finished job is beyond a beat's reach (its process must stop it), and an abort
        # of it changes nothing
        assert await storage.beat_jobs(NOW + 400, [job("j1")]) == ["j1"]
        after = await storage.request_job_abort("j1")
        assert after is not None and after.state == "done" and not after.abort_requested

        # The reaper: active rows with a heartbeat older than ``before``, failed once.
        failed = await storage.fail_stale_jobs(NOW + 150, NOW + 500, "process_died")
        assert [(j.id, j.state, j.error, j.finished_at) for j in failed] == [
            ("j3", "failed", "process_died", NOW + 500)
        ]
        assert failed[0].process == P2
        assert await storage.fail_stale_jobs(NOW + 150, NOW + 600, "process_died") == []
        # a reaped job stays failed whatever its process still says
        assert await storage.beat_jobs(NOW + 700, [job("j3", "u2", NOW + 2, P2)]) == ["j3"]
        await storage.finish_job(replace(job("j3"), state="done", finished_at=NOW + 800))
        got = await storage.get_job("j3")
        assert got is not None and (got.state, got.finished_at) == ("failed", NOW + 500)

        # One active scan per (heap, path) and one active reindex per owner, all or none.
        assert not await storage.insert_jobs([job("j4"), replace(job("j5"), path="/roots/j2")])
        assert await storage.get_job("j4") is None
        reindex = replace(job("r1"), kind="reindex", path="", heap_id="")
        assert await storage.insert_jobs([job("j4"), replace(job("j5"), path="/roots/j1"), reindex])
        assert not await storage.insert_jobs([replace(reindex, id="r2", heap_id="h1")])
        assert await storage.insert_jobs([replace(reindex, id="r3", owner_id="u2")])
        await storage.finish_job(replace(reindex, state="done", finished_at=NOW + 350))
        assert await storage.insert_jobs([replace(reindex, id="r2")])  # the first one ended
        for j in ("j4", "j5", "r2", "r3"):
            await storage.finish_job(replace(job(j), state="done", finished_at=NOW + 10_001))

        # Forgetting: jobs finished before the time go; active ones stay.
        assert await storage.forget_jobs(NOW + 400) == 2  # j1, r1 (j3 finished at +500)
        assert await storage.get_job("j1") is None and await storage.get_job("r1") is None
        assert await storage.forget_jobs(NOW + 10_000) == 1  # j3
        left = {j.id for j in await storage.list_jobs(None, False, 0, 10)}
        assert left == {"j2", "j4", "j5", "r2", "r3"}

        # Started in the same millisecond (a heap's folders, together): the later one first.
        same = [job(f"s{i}", at=NOW + 20_000) for i in range(4)]
        assert await storage.insert_jobs(same)
        assert [j.id for j in await storage.list_jobs("u1", True, 0, 4)] == ["s3", "s2", "s1", "s0"]
