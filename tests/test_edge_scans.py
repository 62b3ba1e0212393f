"""Issue 10, scans: ``active_scans`` lists running jobs only (a client polling for the end sees
the job leave), ``GET /api/scans`` keeps the recent history (own jobs, newest first, bounded
limit), and ``scan_folder`` with a heap and no path scans again every folder scanned into that
heap -- one job per topmost folder, under today's path rules. Real servers, both engines.

A scan that must stay running while the test looks is held by a stand-in for the folder walk
(``Held``), released by the test: what is observed is the service and routes, not timing."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient, LoginPending
from heaper_trio.services.scans import service as scan_service
from heaper_trio.services.scans.job import ScanJob

from .conftest import assert_error
from .test_scans import finished, scan, write
from .test_sync import new_heap


@pytest.fixture
async def boss(scan_server: RunningServer) -> Any:
    async with HeaperClient(scan_server.url) as c:
        await c.login()
        yield c


@pytest.fixture
async def other(boss: HeaperClient, scan_server: RunningServer) -> Any:
    """A second, approved, non-admin account on the scan server."""
    async with HeaperClient(scan_server.url) as c:
        with pytest.raises(LoginPending):
            await c.login()
        await scan_server.services.storage.set_user_state(c.user_id or "", "approved", 1)
        await c.login()
        yield c


class Gate:
    """While closed, a folder scan that starts waits (running) before it walks."""

    def __init__(self) -> None:
        self.event = trio.Event()

    def open(self) -> None:
        self.event.set()

    def close(self) -> None:
        self.event = trio.Event()


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Gate:
    gate = Gate()
    real = scan_service.FolderScan

    class Held:
        def __init__(self, job: ScanJob, *args: Any) -> None:
            self.job, self.event, self.scan = job, gate.event, real(job, *args)

        async def run(self) -> None:
            while not self.event.is_set() and not self.job.aborted:
                await trio.sleep(0.01)
            if not self.job.aborted:
                await self.scan.run()

    monkeypatch.setattr(scan_service, "FolderScan", Held)
    return gate


async def history(client: HeaperClient, limit: int = 100) -> list[dict[str, Any]]:
    r = await client.get(f"/api/scans?limit={limit}")
    assert r.status_code == 200, r.text
    return r.json()["scans"]  # type: ignore[no-any-return]


async def active(client: HeaperClient) -> list[str]:
    r = await client.get("/api/active_scans")
    assert r.status_code == 200, r.text
    return [s["scan_id"] for s in r.json()["scans"]]


# -- item 2: active means running; the history has its own route ------------------------------


async def test_active_scans_lists_running_jobs_only(
    boss: HeaperClient, other: HeaperClient, roots: Path, gate: Gate
) -> None:
    heap = await new_heap(boss)
    (roots / "a").mkdir()
    r = await boss.post("/api/scan_folder", json={"heap_id": heap["id"], "path": str(roots / "a")})
    assert r.status_code == 200, r.text
    scan_id = r.json()["scan_id"]
    assert r.json()["scans"] == [r.json()["scan"]]
    assert await active(boss) == [scan_id]
    assert await active(other) == []  # not theirs
    [job] = await history(boss)
    assert (job["scan_id"], job["state"], job["finished_at"]) == (scan_id, "running", None)
    gate.open()
    done = await finished(boss, scan_id)
    assert done["state"] == "done" and done["finished_at"] is not None
    assert await active(boss) == []  # ended: no longer listed as active
    assert [s["scan_id"] for s in await history(boss)] == [scan_id]


async def test_scan_history_is_own_newest_first_and_bounded(
    boss: HeaperClient, other: HeaperClient, roots: Path
) -> None:
    heap = await new_heap(boss)
    ids = []
    for name in ("one", "two", "three"):
        write(roots / name / "f.txt", name)
        ids.append((await scan(boss, heap["id"], roots / name))["scan_id"])
    assert [s["scan_id"] for s in await history(boss)] == ids[::-1]
    assert [s["scan_id"] for s in await history(boss, 2)] == ids[:0:-1]
    r = await boss.get("/api/scans")  # default limit
    assert [s["scan_id"] for s in r.json()["scans"]] == ids[::-1]
    assert await history(other) == []  # an admin's jobs are not another user's history
    mine = roots / (other.user_id or "") / "x"
    write(mine / "f.txt", "x")
    theirs = await scan(other, (await new_heap(other))["id"], mine)
    assert [s["scan_id"] for s in await history(other)] == [theirs["scan_id"]]
    assert theirs["scan_id"] not in [s["scan_id"] for s in await history(boss)]  # own only
    for bad in ("0", "101", "-1", "abc", "1.5", "99999999999999999999999"):
        err = assert_error(await boss.get(f"/api/scans?limit={bad}"), 400, "invalid_value")
        assert err["field"] == "query.limit", err
    assert_error(await boss.get("/api/scans", headers={"Authorization": "Bearer x"}), 401)


async def test_history_keeps_each_users_last_jobs(
    boss: HeaperClient, scan_server: RunningServer, monkeypatch: pytest.MonkeyPatch, roots: Path
) -> None:
    monkeypatch.setattr(scan_service, "KEEP_FINISHED_PER_USER", 2)
    heap = await new_heap(boss)
    write(roots / "k" / "f.txt", "k")
    ids = [(await scan(boss, heap["id"], roots / "k"))["scan_id"] for _ in range(3)]
    await scan(boss, heap["id"], roots / "k")  # starting a job forgets the oldest beyond 2
    got = [s["scan_id"] for s in await history(boss)]
    assert len(got) == 2 and ids[0] not in got and ids[1] not in got and ids[2] in got


async def test_the_api_document_has_the_history_route(boss: HeaperClient) -> None:
    paths = (await boss.get("/api/openapi.json")).json()["paths"]
    op = paths["/api/scans"]["get"]
    [limit] = [p for p in op["parameters"] if p["name"] == "limit"]
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 100)
    scan_folder = paths["/api/scan_folder"]["post"]
    assert {"403", "404", "409"} <= set(scan_folder["responses"])
    body = scan_folder["requestBody"]["content"]["application/json"]["schema"]
    assert "path" not in body.get("required", [])


# -- item 5: scan_folder by heap -------------------------------------------------------------


async def test_scan_by_heap_rescans_every_folder_scanned_into_it(
    boss: HeaperClient, scan_server: RunningServer, roots: Path
) -> None:
    heap, elsewhere = await new_heap(boss), await new_heap(boss)
    a, inner, c = roots / "a", roots / "b" / "inner", roots / "a-c"
    write(a / "sub" / "1.txt", "1")
    write(inner / "2.txt", "2")
    write(c / "3.txt", "3")
    write(roots / "d" / "4.txt", "4")
    await scan(boss, heap["id"], a / "sub")  # then its parent: only the parent is rescanned
    await scan(boss, heap["id"], a)
    await scan(boss, heap["id"], inner)
    await scan(boss, heap["id"], c)  # sorts between "a" and "a/..." -- still found
    await scan(boss, elsewhere["id"], roots / "d")  # another heap's folder: not this one's
    assert await scan_server.services.scans.scanned_folders(heap["id"]) == [
        str(a),
        str(c),
        str(inner),
    ]
    write(a / "sub" / "new.txt", "new")
    write(inner / "new.txt", "newer")
    r = await boss.post("/api/scan_folder", json={"workspace_id": heap["id"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [s["path"] for s in body["scans"]] == [str(a), str(c), str(inner)]
    assert body["scan_id"] == body["scans"][0]["scan_id"] and body["skipped"] == []
    assert body["scan"] == body["scans"][0]
    jobs = {s["path"]: await finished(boss, s["scan_id"]) for s in body["scans"]}
    assert {p: (j["state"], j["files_new"]) for p, j in jobs.items()} == {
        str(a): ("done", 1),
        str(c): ("done", 0),
        str(inner): ("done", 1),
    }
    assert all(j["heap_id"] == heap["id"] for j in jobs.values())
    entries = await scan_server.services.storage.scan_entries(
        heap["id"], [str(a / "sub" / "new.txt"), str(inner / "new.txt"), str(roots / "d")]
    )
    assert set(entries) == {str(a / "sub" / "new.txt"), str(inner / "new.txt")}


async def test_scan_by_heap_errors(
    boss: HeaperClient,
    other: HeaperClient,
    scan_server: RunningServer,
    roots: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    heap = await new_heap(boss)
    err = assert_error(
        await boss.post("/api/scan_folder", json={"heap_id": heap["id"]}), 404, "nothing_scanned"
    )
    assert "path" in err["message"]
    assert_error(await boss.post("/api/scan_folder", json={}), 400, "missing_field")
    assert_error(
        await other.post("/api/scan_folder", json={"heap_id": heap["id"]}), 403, "heap_forbidden"
    )
    write(roots / "keep" / "k.txt", "k")
    write(roots / "gone" / "g.txt", "g")
    await scan(boss, heap["id"], roots / "keep")
    await scan(boss, heap["id"], roots / "gone")
    shutil.rmtree(roots / "gone")
    r = await boss.post("/api/scan_folder", json={"heap_id": heap["id"]})
    assert r.status_code == 200, r.text
    assert [s["path"] for s in r.json()["scans"]] == [str(roots / "keep")]
    assert r.json()["skipped"] == [{"path": str(roots / "gone"), "error": "not_a_directory"}]
    await finished(boss, r.json()["scan_id"])
    # today's rules, not those of the day of the scan: every folder fails -> the first failure
    settings = scan_server.services.scans.settings
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    monkeypatch.setattr(
        scan_server.services.scans, "settings", dataclasses.replace(settings, scan_roots=str(moved))
    )
    r = await boss.post("/api/scan_folder", json={"heap_id": heap["id"]})
    assert_error(r, 403, "scan_path_forbidden")
    monkeypatch.setattr(
        scan_server.services.scans, "settings", dataclasses.replace(settings, scan_roots="")
    )
    assert_error(
        await boss.post("/api/scan_folder", json={"heap_id": heap["id"]}), 403, "scanning_disabled"
    )


async def test_scan_by_heap_conflicts_with_a_running_scan_and_starts_nothing(
    boss: HeaperClient, roots: Path, gate: Gate
) -> None:
    heap = await new_heap(boss)
    gate.open()
    for name in ("p", "q"):
        write(roots / name / "deep" / "f.txt", name)
        await scan(boss, heap["id"], roots / name)
    gate.close()
    r = await boss.post(
        "/api/scan_folder", json={"heap_id": heap["id"], "path": str(roots / "q" / "deep")}
    )
    running = r.json()["scan_id"]
    before = [s["scan_id"] for s in await history(boss)]
    err = assert_error(
        await boss.post("/api/scan_folder", json={"heap_id": heap["id"]}), 409, "scan_running"
    )
    assert err["scan_id"] == running, err
    assert [
        s["scan_id"] for s in await history(boss)
    ] == before  # p was not started either: all or none
    assert await active(boss) == [running]
    gate.open()
    await finished(boss, running)
    r = await boss.post("/api/scan_folder", json={"heap_id": heap["id"]})
    assert r.status_code == 200, r.text  # nothing runs now: both start
    assert [s["path"] for s in r.json()["scans"]] == [str(roots / "p"), str(roots / "q")]
    for s in r.json()["scans"]:
        assert (await finished(boss, s["scan_id"]))["files_unchanged"] == 1
