"""Upload claims and deletion marks are stamped by the clock they are aged by
(``services/file_claims``): the storage's (the database's on PostgreSQL). A server process
whose own clock runs late used to stamp its claims in the past, so the sweep (by the
database's clock) took a live claim for a dead process's and removed it, and a deletion then
dropped the file the upload was about to record: the upload answered 200 and its file had no
bytes. Over a real socket, the process clock skewed by the test.

The regression is PostgreSQL's: there claims are rows stamped by one clock and aged by the
database's. The SQLite case is for parity only (its claims live in the process's memory and
its storage clock is the process's ``time.time``, which the test skews everywhere): it passes
with or without the fix, and checks that the same flow still holds on that engine."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest
import trio

from heaper_trio.client import HeaperClient
from heaper_trio.services import file_claims
from heaper_trio.services.file_claims import CLAIM_TTL_MS

from .test_storage_claim_sweep import rows
from .test_sync import new_heap

SKEW_S = 2 * CLAIM_TTL_MS / 1000  # the process's clock runs this late: past any TTL


async def test_a_live_claim_of_a_process_whose_clock_runs_late_is_not_swept(
    start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() - SKEW_S)  # the whole process
    server = await start_server()
    files = server.services.files
    storage = files.storage
    data = b"bytes two blocks hold, then one\n" * 200

    held, release = trio.Event(), trio.Event()
    real_record = files._record

    async def held_record(*args: Any, **kwargs: Any) -> Any:
        if not held.is_set():  # the second upload, inside its claim
            held.set()
            await release.wait()
        return await real_record(*args, **kwargs)

    async with HeaperClient(server.url) as client:
        await client.login()
        first, second = await new_heap(client, "first"), await new_heap(client, "second")
        r = await client.post(
            f"/api/upload/file/{first['id']}/blk-1", files={"file": ("f.txt", data, "text/plain")}
        )
        assert r.status_code == 200, r.text
        monkeypatch.setattr(files, "_record", held_record)

        async def upload_again() -> None:
            r = await client.post(
                f"/api/upload/file/{second['id']}/blk-2",
                files={"file": ("f.txt", data, "text/plain")},
            )
            assert r.status_code == 200, r.text

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(upload_again)
                await held.wait()  # the upload holds its claim and has not recorded yet
                # the sweeper's pass, as the server runs it (by the storage's clock)
                await file_claims.sweep_claims_once(storage, await storage.clock_ms())
                if storage.shares_processes:
                    assert len((await rows(storage))[0]) == 1, "the live claim was swept"
                # the last other holder goes: the claimed file must stay
                assert (await client.delete(f"/api/heap/{first['id']}")).status_code == 200
                release.set()
        digest = hashlib.sha256(data).hexdigest()
        r = await client.get(f"/api/file/{digest}/raw/f.txt")
        assert (r.status_code, r.content) == (200, data), r.text[:300]
        assert files.store_path(digest).exists()
