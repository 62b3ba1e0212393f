"""More than one machine (issue 14): server processes that share only a PostgreSQL database,
an object store and the server key.

``test_two_processes_share_files_jobs_and_tokens`` is the issue's cluster test: two real
server processes (``python -m tests.jobs_support``: the CLI, with the folder scan replaced by
an endless stand-in so a job runs as long as the test needs), each with its own data
directory, one database, one bucket of the moto server, the same scan root. The tests of the
overlap check start ``/a`` and ``/a/b`` through two in-process servers at the same instant.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.keys import SERVER_KEY_FILE, load_or_create_server_key
from heaper_trio.protocol import messages as m
from heaper_trio.services.object_uploads import PART_MIN
from heaper_trio.settings import Settings
from heaper_trio.storage.postgres.jobs import SCAN_START_LOCK

from .conftest import assert_error
from .jobs_support import ServerProcess, endless_scans
from .live_client import UNCLOSED_SOCKETS, collect_closed_sockets, live_client
from .objects_support import bucket, open_multipart, s3_endpoint
from .test_files_objects import png, sha, upload_chunks
from .test_jobs_cluster import ended, listed, start_scan
from .test_storage import NOW, opened
from .test_storage_contract import add_users
from .test_storage_jobs import job
from .test_sync import new_heap

__all__ = ["bucket", "collect_closed_sockets", "s3_endpoint"]  # fixtures, used by name
pytestmark = [*UNCLOSED_SOCKETS]

TIMEOUT_S = 1.5  # job_heartbeat_timeout here: beats every 0.5 s, reaps every 0.75 s
Events = list[dict[str, Any]]


async def ws_events(
    url: str,
    token: str,
    into: Events,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The owner's user events on the ``events`` channel of a ``/ws`` socket to ``url``."""
    async with live_client(url) as ws:
        await ws.open("events", token)
        await ws.expect(m.Authenticated, lambda x: x.address == "events")
        task_status.started()
        while True:
            message = await ws.receive(timeout=math.inf)
            if isinstance(message, m.Stateless) and message.address == "events":
                into.append(json.loads(message.payload))


def of_job(events: Events, scan_id: str) -> list[str]:
    return [e["type"] for e in events if e.get("scan_id") == scan_id]


async def until(check: Any, timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.05)


# Timed against the wall clock (a killed process's job is failed within the heartbeat bound):
# run alone (scripts/test.sh runs the serial tests after the parallel part).
@pytest.mark.serial
@pytest.mark.slow
@pytest.mark.engines("postgres")
async def test_two_processes_share_files_jobs_and_tokens(
    tmp_path: Path, database_url: str, s3_endpoint: str, bucket: str
) -> None:
    roots = tmp_path / "roots"
    folder = roots / "photos"
    folder.mkdir(parents=True)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    # As on two machines: each its own data directory, the server key copied into both.
    load_or_create_server_key(tmp_path / "a")
    shutil.copy2(tmp_path / "a" / SERVER_KEY_FILE, tmp_path / "b" / SERVER_KEY_FILE)
    env = {
        "HEAPER_SCAN_ROOTS": str(roots),
        "HEAPER_JOB_HEARTBEAT_TIMEOUT": str(TIMEOUT_S),
        "HEAPER_AUTO_APPROVE": "true",
        "HEAPER_FILES_BACKEND": "s3",
        "HEAPER_S3_ENDPOINT": s3_endpoint,
        "HEAPER_S3_BUCKET": bucket,
    }
    a, b = (ServerProcess(tmp_path / n, database_url, tmp_path / f"{n}.log", **env) for n in "ab")
    try:
        with trio.fail_after(60):  # two processes starting (and migrating) together
            await a.wait_ready()
            await b.wait_ready()
        await _cluster(a, b, folder, s3_endpoint, bucket)
    finally:
        a.kill()
        b.kill()


async def _cluster(
    a: ServerProcess, b: ServerProcess, folder: Path, s3_endpoint: str, bucket: str
) -> None:
    events: Events = []  # the owner's events, on a /ws socket to B
    async with (
        HeaperClient(a.url) as on_a,
        HeaperClient(b.url, key=on_a.key) as on_b,
        HeaperClient(b.url) as stranger,
        trio.open_nursery() as nursery,
    ):
        await on_a.login()  # the first user: an admin, who may scan anything under the roots
        # A token A signed is good on B: both hold the one server key.
        async with httpx.AsyncClient() as raw:
            bearer = {"Authorization": f"Bearer {on_a.access_token}"}
            r = await raw.post(b.url + "/api/me", headers=bearer)
            assert r.status_code == 200 and r.json()["user_id"] == on_a.user_id, r.text
        await on_b.login()
        await stranger.login()
        heap = await new_heap(on_a)
        await nursery.start(ws_events, b.url, on_b.access_token, events)

        # Files: a resumable upload's chunks through B then A, completed on A; Range on B.
        data = os.urandom(PART_MIN + 12345)
        r = await upload_chunks(on_a, heap["id"], "blk-c", data, clients=[on_b, on_a])
        assert isinstance(r, httpx.Response) and r.status_code == 200, r.text
        first = await on_a.get(f"/api/file/{sha(data)}/raw/c", headers={"Range": "bytes=0-0"})
        assert first.status_code == 206 and first.content == data[:1], first.status_code
        part = await on_b.get(f"/api/file/{sha(data)}/raw/c", headers={"Range": "bytes=5000000-"})
        assert part.status_code == 206 and part.content == data[5_000_000:], part.status_code
        assert part.headers["content-range"] == f"bytes 5000000-{len(data) - 1}/{len(data)}"
        assert part.headers["etag"] and part.headers["etag"] == first.headers["etag"]
        assert open_multipart(s3_endpoint, bucket) == []
        small = os.urandom(70_000)  # one request, through B; streamed with Range by A
        r = await on_b.post(
            f"/api/upload/file/{heap['id']}/blk-d", files={"file": ("d.bin", small, "x/y")}
        )
        assert r.status_code == 200, r.text
        r = await on_a.get(f"/api/stream/{sha(small)}/d.bin", headers={"Range": "bytes=100-199"})
        assert r.status_code == 206 and r.content == small[100:200], r.status_code
        # A client thumbnail replaced through the other process is what both serve.
        for uploader, thumb in ((on_a, png()), (on_b, png(40))):
            r = await uploader.post(
                f"/api/upload/thumbnail/blk-c/{sha(data)}/small",
                files={"thumbnail": ("t.png", thumb)},
                data={"type": "image", "size": "small"},
            )
            assert r.status_code == 200, r.text
            for reader in (on_a, on_b):
                r = await reader.get(f"/api/download/thumbnail/blk-c/{sha(data)}/image/small")
                assert r.status_code == 200 and r.content == thumb

        # A scan started on A is listed through B; the stranger sees nothing and gets 404.
        scan_id = await start_scan(on_a, heap["id"], folder)
        seen = await listed(on_b, scan_id, min_done=5)
        assert (seen["state"], seen["kind"], seen["path"]) == ("running", "scan", str(folder))
        assert [s["scan_id"] for s in (await on_b.get("/api/scans")).json()["scans"]] == [scan_id]
        assert (await stranger.get("/api/active_scans")).json()["scans"] == []
        assert (await stranger.get("/api/scans")).json()["scans"] == []
        r = await stranger.post("/api/abort_scan", json={"scan_id": scan_id})
        assert_error(r, 404, "scan_not_found")
        r = await on_b.post("/api/scan_folder", json={"heap_id": heap["id"], "path": str(folder)})
        assert_error(r, 409, "scan_running")  # one scan of a folder, whichever process is asked

        # Aborted through B; its progress on B's socket stops with the one scan.aborted.
        asked = time.monotonic()
        r = await on_b.post("/api/abort_scan", json={"scan_id": scan_id})
        assert r.status_code == 200 and r.json()["scan"]["state"] == "aborting", r.text
        job = await ended(on_b, scan_id)
        took = time.monotonic() - asked
        assert took < 1.0, took  # A hears of it at once (NOTIFY), not at its next beat
        assert job["state"] == "aborted" and job["files_done"] >= 5, job
        await until(lambda: "scan.aborted" in of_job(events, scan_id))
        await trio.sleep(0.6)  # more than a progress interval: nothing may follow the end
        kinds = of_job(events, scan_id)
        assert kinds[-1] == "scan.aborted" and kinds.count("scan.aborted") == 1, kinds
        assert set(kinds[:-1]) == {"scan.progress"} and len(kinds) >= 2, kinds

        # Started again on A, and A is killed: B fails the job within the heartbeat bound...
        doomed = await start_scan(on_a, heap["id"], folder)
        await listed(on_b, doomed, min_done=1)
        killed = time.monotonic()
        a.kill()  # SIGKILL
        job = await ended(on_b, doomed, timeout=TIMEOUT_S + 10)
        failed_after = time.monotonic() - killed
        assert (job["state"], job["error"]) == ("failed", "process_died"), job
        # stale TIMEOUT_S after its last beat (up to 0.5 s before the kill), seen by a reaper
        # that runs every 0.75 s, plus the polling here and a busy machine
        assert failed_after < TIMEOUT_S + 2.5, failed_after
        await until(lambda: "scan.failed" in of_job(events, doomed))
        [failed] = [
            e for e in events if e.get("scan_id") == doomed and e["type"] != "scan.progress"
        ]
        assert (failed["type"], failed["error"]) == ("scan.failed", "process_died")
        r = await stranger.post("/api/abort_scan", json={"scan_id": doomed})
        assert_error(r, 404, "scan_not_found")

        # ...and the folder can be scanned again, on B.
        again = await start_scan(on_b, heap["id"], folder)
        await listed(on_b, again, min_done=1)
        r = await on_b.post("/api/abort_scan", json={"scan_id": again})
        assert r.status_code == 200
        assert (await ended(on_b, again))["state"] == "aborted"
        nursery.cancel_scope.cancel()
    print(
        f"\ncross-process abort {took * 1000:.0f} ms; killed job failed after {failed_after:.2f} s"
    )


# -- two overlapping scans started at once through two processes --------------------------


def _hold_scan_start_lock(
    dsn: str, heap_id: str, waiters: int, locked: threading.Event, answered: threading.Event
) -> bool:
    """Hold the heap's scan-start lock (a session lock on the key the servers lock in their
    inserting transactions) until ``waiters`` transactions wait for it, then let them go:
    both starts are past their early check and inside the transaction. False if the
    requests were all answered without waiting (no lock: the bug)."""

    async def hold() -> bool:
        c = await asyncpg.connect(dsn)
        try:
            await c.execute(
                SCAN_START_LOCK.replace("pg_advisory_xact_lock", "pg_advisory_lock"), heap_id
            )
            locked.set()
            deadline = time.monotonic() + 20
            while not answered.is_set() and time.monotonic() < deadline:
                waiting = await c.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND "
                    "database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                )
                if waiting >= waiters:
                    return True
                await asyncio.sleep(0.01)
            return False
        finally:
            await c.close()  # lets the waiting transactions go, one at a time

    return asyncio.run(hold())


@pytest.mark.engines("postgres")
async def test_nested_scans_started_at_once_on_two_processes_give_one_start(
    start_server: Any, tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    endless_scans(monkeypatch)
    roots = tmp_path / "roots"
    (roots / "a" / "b").mkdir(parents=True)
    (roots / "ab").mkdir()  # a sibling of a whose name starts alike
    settings = {"scan_roots": str(roots), "job_heartbeat_timeout": 5.0}
    one: RunningServer = await start_server(**settings)
    two: RunningServer = await start_server(**settings)
    async with HeaperClient(one.url) as on_one, HeaperClient(two.url, on_one.key) as on_two:
        await on_one.login()
        await on_two.login()
        heap = await new_heap(on_one)
        a, ab, ab2 = roots / "a", roots / "a" / "b", roots / "ab"
        # around, inside, the same folder; the outer one asked first and second
        for first, second in ((a, ab), (ab, a), (a, a)):
            answers: list[httpx.Response] = []
            locked, answered = threading.Event(), threading.Event()
            held: list[bool] = []

            async with trio.open_nursery() as both:
                both.start_soon(_hold, database_url, heap["id"], locked, answered, held)
                await until(locked.is_set)
                for client, path in ((on_one, first), (on_two, second)):
                    both.start_soon(_ask, client, heap["id"], path, answers, answered)
            assert held == [True], "the second start did not wait for the first one's insert"
            assert sorted(r.status_code for r in answers) == [200, 409], [r.text for r in answers]
            [won] = [r for r in answers if r.status_code == 200]
            [lost] = [r for r in answers if r.status_code == 409]
            assert won.json()["scan_id"] in str(assert_error(lost, 409, "scan_running"))
            r = await on_one.post("/api/abort_scan", json={"scan_id": won.json()["scan_id"]})
            assert r.status_code == 200
            for client in (on_one, on_two):  # the one not running it reads the final row
                assert (await ended(client, won.json()["scan_id"]))["state"] == "aborted"
        # A sibling whose name starts alike is no overlap: both start.
        siblings = [await start_scan(c, heap["id"], p) for c, p in ((on_one, a), (on_two, ab2))]
        for scan_id in siblings:
            await on_two.post("/api/abort_scan", json={"scan_id": scan_id})
            assert (await ended(on_one, scan_id))["state"] == "aborted"


async def _hold(
    dsn: str, heap_id: str, locked: threading.Event, answered: threading.Event, held: list[bool]
) -> None:
    held.append(
        await trio.to_thread.run_sync(_hold_scan_start_lock, dsn, heap_id, 2, locked, answered)
    )


async def _ask(
    client: HeaperClient,
    heap_id: str,
    path: Path,
    answers: list[httpx.Response],
    answered: threading.Event,
) -> None:
    answers.append(
        await client.post("/api/scan_folder", json={"heap_id": heap_id, "path": str(path)})
    )
    if len(answers) == 2:
        answered.set()


async def test_the_insert_refuses_a_scan_inside_or_around_an_active_one(
    make_settings: Callable[..., Settings],
) -> None:
    """Both engines: the overlap check is the inserting transaction's, all or none."""
    async with opened(make_settings()) as storage:
        await add_users(storage)
        assert await storage.insert_jobs([replace(job("j1"), path="/r/a")])
        for path in ("/r/a/b", "/r", "/r/a", "/"):
            assert not await storage.insert_jobs([replace(job("j2"), path=path)]), path
        assert not await storage.insert_jobs(  # one clash: none stored
            [replace(job("j2"), path="/r/c"), replace(job("j3"), path="/r/a/d")]
        )
        assert await storage.get_job("j2") is None
        assert await storage.insert_jobs(
            [
                replace(job("j2"), path="/r/ab"),  # a sibling whose name starts alike
                replace(job("j3"), path="/r/a/b", heap_id="h2"),  # another heap
                replace(job("r1"), kind="reindex", path="", heap_id=""),
            ]
        )
        await storage.finish_job(replace(job("j1"), state="done", finished_at=NOW + 1))
        assert await storage.insert_jobs([replace(job("j4"), path="/r/a/b")])  # it ended
