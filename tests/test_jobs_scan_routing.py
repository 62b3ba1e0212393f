"""A scan root belongs to a machine (issue 14, item 1): a scan asked of a process that does not
have the folder is queued, and a process whose machine has it claims and runs it. Two
in-process servers on one PostgreSQL database stand for two machines: A's scan root is
another folder than B's, so B's folders are "not on A's machine"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient

from .jobs_support import collect_events
from .test_jobs_cluster import ended
from .test_sync import new_heap

TIMEOUT_S = 0.6  # job_heartbeat_timeout: beats every 0.2 s; a queued job fails after 1.8 s


async def ask(client: HeaperClient, heap_id: str, path: Path | str) -> dict[str, Any]:
    r = await client.post("/api/scan_folder", json={"heap_id": heap_id, "path": str(path)})
    assert r.status_code == 200, r.text
    return dict(r.json()["scan"])


async def final_event(events: list[tuple[float, dict[str, Any]]], scan_id: str) -> dict[str, Any]:
    with trio.fail_after(10):
        while True:
            for _, e in events:
                if e.get("scan_id") == scan_id and e["type"] != "scan.progress":
                    return e
            await trio.sleep(0.05)


@pytest.mark.engines("postgres")
async def test_a_scan_of_another_machines_folder_is_queued_and_run_there(
    start_server: Any, roots: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "a_roots"  # A's own root: B's folders are not on A's machine
    elsewhere.mkdir()
    common = {"job_heartbeat_timeout": TIMEOUT_S, "auto_approve": True}
    a: RunningServer = await start_server(scan_roots=str(elsewhere), **common)
    b: RunningServer = await start_server(scan_roots=str(roots), **common)
    photos = roots / "photos"
    photos.mkdir()
    for i in range(3):
        (photos / f"p{i}.txt").write_text(f"photo {i}")
    events: list[tuple[float, dict[str, Any]]] = []
    async with (
        HeaperClient(a.url) as admin,
        HeaperClient(a.url) as user,
        trio.open_nursery() as nursery,
    ):
        await admin.login()  # the first user: an admin
        await user.login()
        heap = await new_heap(admin)
        await nursery.start(collect_events, a.url, admin.access_token, events)

        # Asked of A, answered queued; B takes it, A's socket sees its progress and end.
        job = await ask(admin, heap["id"], photos)
        assert (job["state"], job["path"]) == ("queued", str(photos)), job
        done = await ended(admin, job["scan_id"], timeout=10)
        assert (done["state"], done["files_new"], done["error"]) == ("done", 3, None), done
        end = await final_event(events, job["scan_id"])
        assert (end["type"], end["files_done"]) == ("scan.done", 3), end
        listed = (await admin.get("/api/scans")).json()["scans"]
        assert [s["scan_id"] for s in listed] == [job["scan_id"]]
        # The files are in the heap's scan index: a rescan by heap asked of A (queued again,
        # for the folder is B's) finds them unchanged.
        r = await admin.post("/api/scan_folder", json={"heap_id": heap["id"]})
        assert r.status_code == 200, r.text
        assert r.json()["skipped"] == []
        [again] = r.json()["scans"]
        assert (again["state"], again["path"]) == ("queued", str(photos)), again
        redone = await ended(admin, again["scan_id"], timeout=10)
        assert (redone["files_unchanged"], redone["files_new"]) == (3, 0), redone

        # A non-admin may scan only <root>/<their id>: B refuses another folder of its root,
        # and nothing is scanned.
        their_heap = await new_heap(user)
        asked = await ask(user, their_heap["id"], photos)
        assert asked["state"] == "queued"
        refused = await ended(user, asked["scan_id"], timeout=10)
        assert (refused["state"], refused["error"]) == ("failed", "scan_path_forbidden")
        assert refused["files_seen"] == 0
        own = roots / (user.user_id or "") / "docs"  # ...and scans their own folder there
        own.mkdir(parents=True)
        (own / "a.txt").write_text("a")
        theirs = await ask(user, their_heap["id"], own)
        assert theirs["state"] == "queued"
        scanned = await ended(user, theirs["scan_id"], timeout=10)
        assert (scanned["state"], scanned["files_new"]) == ("done", 1), scanned
        # A path with .. is refused by A itself, as before: never queued.
        r = await user.post(
            "/api/scan_folder",
            json={"heap_id": their_heap["id"], "path": str(roots / "x" / ".." / "photos")},
        )
        assert r.status_code == 403 and r.json()["error"] == "scan_path_forbidden", r.text

        # A path under no process's roots is refused by A, as with one process.
        r = await admin.post(
            "/api/scan_folder", json={"heap_id": heap["id"], "path": str(tmp_path / "outside")}
        )
        assert r.status_code == 403 and r.json()["error"] == "scan_path_forbidden", r.text

        # A folder under B's root that B does not have: queued, listed, then failed after
        # three heartbeat timeouts.
        gone = await ask(admin, heap["id"], roots / "nowhere")
        active = (await admin.get("/api/active_scans")).json()["scans"]
        assert [(s["scan_id"], s["state"]) for s in active] == [(gone["scan_id"], "queued")]
        lost = await ended(admin, gone["scan_id"], timeout=3 * TIMEOUT_S + 5)
        assert (lost["state"], lost["error"]) == ("failed", "no_process_has_root"), lost
        assert (await final_event(events, gone["scan_id"]))["error"] == "no_process_has_root"

        # Aborting a queued job ends it at once, from any process.
        waiting = await ask(admin, heap["id"], roots / "nowhere")
        async with HeaperClient(b.url, admin.key) as on_b:
            await on_b.login()
            r = await on_b.post("/api/abort_scan", json={"scan_id": waiting["scan_id"]})
        assert r.status_code == 200 and r.json()["scan"]["state"] == "aborted", r.text
        assert (await final_event(events, waiting["scan_id"]))["type"] == "scan.aborted"
        nursery.cancel_scope.cancel()
