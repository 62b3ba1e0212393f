"""Queued jobs in the jobs table, on both engines (issue 14, item 1): a claim is one
statement that only one process wins, an aborted queued job can no longer be claimed, and
queued rows are failed by their age (``fail_queued_jobs``), never by the heartbeat reaper
(no process beats for them). Direct calls, no server."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import trio

from heaper_trio.records.jobs import JobProcess
from heaper_trio.settings import Settings
from tests.test_storage import NOW, opened
from tests.test_storage_contract import add_users
from tests.test_storage_jobs import P1, P2, job


async def test_queued_jobs_are_claimed_once_and_failed_by_age(
    make_settings: Callable[..., Settings],
) -> None:
    async with opened(make_settings()) as storage:
        await add_users(storage)
        queued = [
            replace(job(j, at=NOW + i), state="queued", started_at=None)
            for i, j in enumerate(("q1", "q2", "q3"))
        ]
        assert await storage.insert_jobs(queued)
        # The heartbeat reaper leaves queued rows alone, however old their heartbeat.
        assert await storage.fail_stale_jobs(NOW + 10_000, NOW + 10_000, "process_died") == []

        # Two processes claim q1 at once: one gets the row, running in its name.
        results: list[object] = []

        async def claim(process: JobProcess) -> None:
            results.append(await storage.claim_job("q1", process, NOW + 50))

        async with trio.open_nursery() as both:
            both.start_soon(claim, P1)
            both.start_soon(claim, P2)
        [won] = [r for r in results if r is not None]
        assert results.count(None) == 1
        got = await storage.get_job("q1")
        assert got == won and got is not None
        assert (got.state, got.started_at, got.heartbeat_at) == ("running", NOW + 50, NOW + 50)
        assert got.process in (P1, P2)
        assert await storage.claim_job("q1", P1, NOW + 60) is None  # no longer queued
        assert await storage.claim_job("nope", P1, NOW + 60) is None

        # An abort asked of a queued job: it stays queued (no process runs it) but nobody
        # can claim it any more.
        asked = await storage.request_job_abort("q2")
        assert asked is not None and (asked.state, asked.abort_requested) == ("queued", True)
        assert await storage.claim_job("q2", P1, NOW + 70) is None

        # Failed by age: created before the bound, once.
        failed = await storage.fail_queued_jobs(NOW + 2, NOW + 80, "no_process_has_root")
        assert [(j.id, j.state, j.error, j.finished_at) for j in failed] == [
            ("q2", "failed", "no_process_has_root", NOW + 80)
        ]
        assert await storage.fail_queued_jobs(NOW + 2, NOW + 90, "no_process_has_root") == []
        left = await storage.get_job("q3")
        assert left is not None and left.state == "queued"
        assert (await storage.get_job("q1")).state == "running"  # type: ignore[union-attr]


async def test_processes_advertise_their_scan_roots(
    make_settings: Callable[..., Settings],
) -> None:
    async with opened(make_settings()) as storage:
        await storage.beat_process(P1, ["/srv/photos", "/srv/music"], NOW, NOW - 1000)
        await storage.beat_process(P2, [], NOW - 500, NOW - 1000)
        assert await storage.process_scan_roots(NOW - 600) == {
            "p1": ["/srv/photos", "/srv/music"],
            "p2": [],
        }
        assert await storage.process_scan_roots(NOW - 100) == {"p1": ["/srv/photos", "/srv/music"]}
        # A beat writes the row whole; rows that beat before the bound are deleted.
        await storage.beat_process(P1, ["/srv/photos"], NOW + 1000, NOW - 400)
        assert await storage.process_scan_roots(0) == {"p1": ["/srv/photos"]}
