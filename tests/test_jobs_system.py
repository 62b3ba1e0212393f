"""Jobs that belong to the cluster (issue 14): upload expiry is one lease in the jobs table
(one process sweeps; another takes over once the holder's row is reaped), and every
``regenerate_file`` is a job row its owner and the admins see, with how it ended."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.services.files import FileService
from heaper_trio.services.scans.registry import JobTable
from heaper_trio.services.upload_expiry import KIND, UploadExpiry
from heaper_trio.settings import Settings

from .conftest import assert_error
from .test_storage_object_state import two
from .test_sync import new_heap


class Sweeps:
    """FileService's ``expire``, counted (the lease is what is tested, not the sweep)."""

    def __init__(self) -> None:
        self.runs = 0

    async def expire(self, now: int) -> int:
        self.runs += 1
        return 0


async def test_one_process_sweeps_and_another_takes_over_when_it_dies(
    make_settings: Callable[..., Settings],
) -> None:
    clock = [1_700_000_000_000]
    async with two(make_settings) as (db_a, db_b):
        tables = [JobTable(db, lambda *_: None, 10.0, lambda: clock[0]) for db in (db_a, db_b)]
        sweeps = [Sweeps(), Sweeps()]
        a, b = (UploadExpiry(cast(FileService, s), t) for s, t in zip(sweeps, tables, strict=True))
        assert await a.step() and not await b.step()  # one holder in the cluster
        assert not await a.step()  # held, but the next sweep is not due yet
        rows = [r for r in await db_b.list_jobs(None, True, 0, 50) if r.kind == KIND]
        assert [(r.owner_id, r.state, r.process.id) for r in rows] == [
            ("", "running", tables[0].process.id)
        ]
        clock[0] += 5_000
        await tables[0].beat()  # beaten like any job: the reaper leaves it alone
        assert await tables[1].reap() == []
        clock[0] += 60_000  # A hangs: no beat for longer than the timeout
        [reaped] = await tables[1].reap()
        assert (reaped.kind, reaped.error) == (KIND, "process_died")
        assert await b.step() and sweeps[1].runs == 1  # B took the lease over
        await tables[0].beat()  # A wakes up: its row is no longer active, so its job aborts
        assert not await a.step() and a.job is None  # and it does not sweep again
        assert sweeps[0].runs == 1
        await b._end("done")  # B stops: the lease is free for the next one
        assert await a.step() and sweeps[0].runs == 2


@pytest.mark.engines("sqlite")  # the rows on both engines: test_storage_object_state
async def test_regenerate_is_a_job_of_its_owner(
    server: RunningServer, admin: HeaperClient, eve: HeaperClient
) -> None:
    heap = await new_heap(eve, "pics")
    r = await eve.post(
        f"/api/upload/file/{heap['id']}/blk-1", files={"file": ("a.txt", b"hello\n", "text/plain")}
    )
    assert r.status_code == 200, r.text
    digest = r.json()["file_hash"]
    assert (await eve.post("/api/regenerate_file", json={"file_hash": digest})).status_code == 200
    assert_error(
        await eve.post("/api/regenerate_file", json={"file_hash": "0" * 64}), 404, "file_not_found"
    )
    mine = (await eve.get("/api/scans")).json()["scans"]
    assert [(j["kind"], j["path"], j["state"], j.get("error")) for j in mine] == [
        ("regenerate", "0" * 64, "failed", "file_not_found"),
        ("regenerate", digest, "done", None),
    ]
    assert (await admin.get("/api/scans")).json()["scans"] == []  # not the admin's own
    with trio.fail_after(10):  # the server's expiry lease is taken as it starts
        while not any(j["kind"] == KIND for j in await _admin_jobs(admin)):
            await trio.sleep(0.05)
    listed = {(j["kind"], j["user_id"]) for j in await _admin_jobs(admin)}
    assert listed == {(KIND, ""), ("regenerate", eve.user_id)}
    # the lease is the admin page's only: not in anyone's active scans, an admin's either
    for client in (admin, eve):
        active = (await client.get("/api/active_scans")).json()["scans"]
        assert [j for j in active if j["kind"] == KIND] == []


async def _admin_jobs(admin: HeaperClient) -> list[dict[str, Any]]:
    r = await admin.get("/api/admin/jobs?limit=50")
    assert r.status_code == 200, r.text
    return list(r.json()["jobs"])
