"""A heartbeat that runs while a scan's first row is being written must not abort it: the
beat asks the database about this process's running jobs, finds no row for the new one
(not written yet) and took that for "ended elsewhere" (seen in CI under load on PostgreSQL:
a new scan ended at once, "aborted through the jobs table", 0 seen)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient

from .test_harden_scanned import folder_of, user  # noqa: F401 (a fixture: the scanning user)
from .test_scans import scan, write
from .test_sync import new_heap


async def test_a_beat_before_the_first_row_leaves_the_scan_running(
    user: HeaperClient,  # noqa: F811 (the fixture imported above)
    scan_server: RunningServer,
    roots: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    heap = await new_heap(user)
    mine = folder_of(roots, user)
    write(mine / "a.txt", "some text")
    registry = scan_server.services.scans.table
    real = registry.storage.insert_jobs
    beats: list[int] = []

    async def beaten_first(jobs: list[Any]) -> bool:
        await registry.beat()  # the supervisor's beat, between the start here and the row
        beats.append(len(jobs))
        return await real(jobs)

    monkeypatch.setattr(registry.storage, "insert_jobs", beaten_first)
    job = await scan(user, heap["id"], mine)
    assert beats == [1]
    assert (job["state"], job["files_new"]) == ("done", 1), job
