"""Jobs that belong to the cluster (issue 14, items 2 and 3): a scan is a row of the jobs
table, so every server process on the database lists and aborts it, and a job whose process
died is failed by another within the heartbeat bound. The scans here are endless stand-ins
(``tests/jobs_support``): these tests are about the jobs, not the walking and hashing. The
cross-process scenario (listed and aborted through another process, ``kill -9`` reaped) is
``tests/test_cluster.py``'s; the helpers here serve both."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.records.jobs import JobProcess, JobRecord

from .conftest import assert_error
from .jobs_support import endless_scans
from .test_sync import new_heap

TIMEOUT_S = 1.5  # job_heartbeat_timeout here: beats every 0.5 s, reaps every 0.75 s


async def start_scan(client: HeaperClient, heap_id: str, path: Path) -> str:
    r = await client.post("/api/scan_folder", json={"heap_id": heap_id, "path": str(path)})
    assert r.status_code == 200, r.text
    return str(r.json()["scan_id"])


async def listed(client: HeaperClient, scan_id: str, min_done: int = 0) -> dict[str, Any]:
    """The job once ``active_scans`` lists it with at least ``min_done`` files done."""
    with trio.fail_after(20):
        while True:
            for job in (await client.get("/api/active_scans")).json()["scans"]:
                if job["scan_id"] == scan_id and job["files_done"] >= min_done:
                    return dict(job)
            await trio.sleep(0.05)


async def ended(client: HeaperClient, scan_id: str, timeout: float = 20) -> dict[str, Any]:
    with trio.fail_after(timeout):
        while True:
            scans = (await client.get("/api/scans?limit=100")).json()["scans"]
            [job] = [s for s in scans if s["scan_id"] == scan_id]
            if job["state"] in ("done", "aborted", "failed"):
                assert scan_id not in {
                    s["scan_id"] for s in (await client.get("/api/active_scans")).json()["scans"]
                }
                return dict(job)
            await trio.sleep(0.05)


async def test_a_job_a_dead_server_left_holds_its_folder_until_reaped(
    start_server: Any, roots: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One process (both engines): the row of a job whose server died, as a restarted
    server finds it. It is listed and holds its folder while its heartbeat is fresh, then it
    is failed and the folder can be scanned again; the running job is this process's own."""
    endless_scans(monkeypatch)
    server: RunningServer = await start_server(
        scan_roots=str(roots), job_heartbeat_timeout=1.0, auto_approve=True
    )
    folder = (roots / "left").resolve()
    folder.mkdir()
    async with HeaperClient(server.url) as client, HeaperClient(server.url) as stranger:
        await client.login()
        await stranger.login()
        heap = await new_heap(client)
        now = int(time.time() * 1000)
        left = JobRecord(
            id="left-behind",
            owner_id=client.user_id or "",
            heap_id=heap["id"],
            kind="scan",
            path=str(folder),
            state="running",
            process=JobProcess("gone", "elsewhere", 1),
            created_at=now,
            heartbeat_at=now + 1500,  # fresh for a while, whatever this machine's pace
            started_at=now,
            files_done=3,
        )
        assert await server.services.storage.insert_jobs([left])
        [job] = (await client.get("/api/active_scans")).json()["scans"]
        assert (job["scan_id"], job["state"], job["files_done"]) == ("left-behind", "running", 3)
        r = await client.post("/api/scan_folder", json={"heap_id": heap["id"], "path": str(folder)})
        assert "left-behind" in str(assert_error(r, 409, "scan_running"))
        job = await ended(client, "left-behind", timeout=15)
        assert (job["state"], job["error"]) == ("failed", "process_died")
        r = await stranger.post("/api/abort_scan", json={"scan_id": "left-behind"})
        assert_error(r, 404, "scan_not_found")

        scan_id = await start_scan(client, heap["id"], folder)
        await listed(client, scan_id, min_done=1)
        row = await server.services.storage.get_job(scan_id)
        assert row is not None and row.process == server.services.scans.table.process
        r = await client.post("/api/abort_scan", json={"scan_id": scan_id})
        assert r.json()["scan"]["state"] in ("aborting", "aborted")
        job = await ended(client, scan_id)
        assert job["state"] == "aborted" and job["files_done"] >= 1
        with trio.fail_after(10):  # the row is written just after the job ends here
            while (row := await server.services.storage.get_job(scan_id)) and row.active:
                await trio.sleep(0.02)
        assert row is not None and (row.state, row.files_done) == ("aborted", job["files_done"])
