"""Jobs that belong to the cluster (issue 14, items 2 and 3): a scan is a row of the jobs
table, so every server process on the database lists and aborts it, and a job whose process
died is failed by another within the heartbeat bound. The scans here are endless stand-ins
(``tests/jobs_support``): these tests are about the jobs, not the walking and hashing."""

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
from .jobs_support import ServerProcess, collect_events, endless_scans
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


# Timed against the wall clock: an abort through another process ends the job within a second,
# and a killed process's job is failed within the heartbeat bound; run alone (scripts/test.sh).
@pytest.mark.serial
@pytest.mark.slow
@pytest.mark.engines("postgres")
async def test_a_scan_is_listed_and_aborted_through_another_process_and_reaped_when_killed(
    start_server: Any,
    roots: Path,
    tmp_path: Path,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endless_scans(monkeypatch)
    settings = {"scan_roots": str(roots), "job_heartbeat_timeout": TIMEOUT_S, "auto_approve": True}
    a: RunningServer = await start_server(**settings)
    # A third process, to be killed later: started now (after A made the server key and
    # migrated), so that its start overlaps the first half.
    c = ServerProcess(
        a.services.settings.data_path,
        database_url,
        tmp_path / "c.log",
        HEAPER_SCAN_ROOTS=str(roots),
        HEAPER_JOB_HEARTBEAT_TIMEOUT=str(TIMEOUT_S),
    )
    try:
        await _cluster(a, await start_server(**settings), c, roots)
    finally:
        c.kill()


async def _cluster(a: RunningServer, b: RunningServer, c: ServerProcess, roots: Path) -> None:
    folder = roots / "photos"
    folder.mkdir()
    events: list[tuple[float, dict[str, Any]]] = []
    async with (
        HeaperClient(a.url) as on_a,
        HeaperClient(b.url, on_a.key) as on_b,
        HeaperClient(b.url) as stranger,
        trio.open_nursery() as nursery,
    ):
        await on_a.login()  # the first user: an admin, who may scan anything under the roots
        await on_b.login()
        await stranger.login()
        heap = await new_heap(on_a)
        await nursery.start(collect_events, b.url, on_b.access_token, events)

        # Started on A, listed through B with its progress (the row, one beat behind).
        scan_id = await start_scan(on_a, heap["id"], folder)
        seen = await listed(on_b, scan_id, min_done=5)
        assert (seen["state"], seen["kind"], seen["path"]) == ("running", "scan", str(folder))
        assert [s["scan_id"] for s in (await on_b.get("/api/scans")).json()["scans"]] == [scan_id]
        # Another user sees nothing of it, and cannot abort it: 404, as for no job at all.
        assert (await stranger.get("/api/active_scans")).json()["scans"] == []
        r = await stranger.post("/api/abort_scan", json={"scan_id": scan_id})
        assert_error(r, 404, "scan_not_found")
        # Only one scan of a folder at a time, whichever process is asked.
        r = await on_b.post("/api/scan_folder", json={"heap_id": heap["id"], "path": str(folder)})
        assert_error(r, 409, "scan_running")

        # Aborted through B: A stops it (NOTIFY), and the progress events stop.
        asked = trio.current_time()
        r = await on_b.post("/api/abort_scan", json={"scan_id": scan_id})
        assert r.status_code == 200 and r.json()["scan"]["state"] == "aborting", r.text
        job = await ended(on_b, scan_id)
        took = trio.current_time() - asked
        assert job["state"] == "aborted" and took < 1.0, (job, took)
        assert job["files_done"] >= 5
        await trio.sleep(0.6)  # more than a progress interval: nothing may follow the end
        mine = [(t, e) for t, e in events if e.get("scan_id") == scan_id]
        kinds = [e["type"] for _, e in mine]
        assert kinds[-1] == "scan.aborted" and kinds.count("scan.aborted") == 1, kinds
        assert set(kinds[:-1]) == {"scan.progress"} and len(kinds) >= 2, kinds
        r = await on_a.post("/api/abort_scan", json={"scan_id": scan_id})  # answers the end
        assert r.json()["scan"]["state"] == "aborted"

        # The third process runs the next scan, and is killed: B fails it within the bound.
        await c.wait_ready()
        async with HeaperClient(c.url, on_a.key) as on_c:
            await on_c.login()
            doomed = await start_scan(on_c, heap["id"], folder)
            await listed(on_b, doomed, min_done=1)
            killed = time.monotonic()
            c.kill()
        job = await ended(on_b, doomed, timeout=TIMEOUT_S + 10)
        failed_after = time.monotonic() - killed
        assert (job["state"], job["error"]) == ("failed", "process_died"), job
        # stale after TIMEOUT_S from its last beat (up to 0.5 s before the kill), seen by a
        # reaper that runs every 0.75 s, plus the polling here and a busy machine
        assert failed_after < TIMEOUT_S + 2.5, failed_after
        with trio.fail_after(5):  # C's progress reached B's sockets, then B's scan.failed
            while not any(
                e.get("scan_id") == doomed for _, e in events if e["type"] != "scan.progress"
            ):
                await trio.sleep(0.05)
        mine = [e for _, e in events if e.get("scan_id") == doomed]
        assert {e["type"] for e in mine[:-1]} == {"scan.progress"}, mine
        assert (mine[-1]["type"], mine[-1]["error"]) == ("scan.failed", "process_died")

        # ...and it can be started again, on B this time, and aborted through A. Asked of
        # both processes at once, one of them starts it (the table's unique index decides).
        answers: list[Any] = []

        async def ask(client: HeaperClient) -> None:
            body = {"heap_id": heap["id"], "path": str(folder)}
            answers.append(await client.post("/api/scan_folder", json=body))

        async with trio.open_nursery() as both:
            both.start_soon(ask, on_b)
            both.start_soon(ask, on_a)
        assert sorted(r.status_code for r in answers) == [200, 409], [r.text for r in answers]
        [won] = [r for r in answers if r.status_code == 200]
        [lost] = [r for r in answers if r.status_code == 409]
        assert_error(lost, 409, "scan_running")
        again = won.json()["scan_id"]
        await listed(on_a, again, min_done=1)
        r = await on_a.post("/api/abort_scan", json={"scan_id": again})
        assert r.status_code == 200
        assert (await ended(on_a, again))["state"] == "aborted"
        nursery.cancel_scope.cancel()
    print(
        f"\ncross-process abort {took * 1000:.0f} ms; killed job failed after {failed_after:.2f}s"
    )


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
