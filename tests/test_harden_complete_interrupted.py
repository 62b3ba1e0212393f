"""A resumable upload whose ``complete`` fails after renaming the verified bytes into the store
and before recording the file (the database unreachable for a moment, a cancel, a kill -9:
the same state on disk) is completed by the next ``complete``, not sent again. Before, its
status answered no chunk received and complete ``upload_incomplete`` with every chunk
missing: the client had to send the whole file again (for a large file, gigabytes) though
the server held its checked bytes. Real server over a real socket, both engines."""

from __future__ import annotations

from typing import Any

import pytest

from heaper_trio.client import HeaperClient

from .conftest import assert_error
from .test_sync import new_heap
from .test_uploads import CHUNK, sha

DATA = bytes(range(256)) * 1024  # 4 chunks
H = sha(DATA)


async def test_a_complete_that_failed_after_publishing_is_finished_not_resent(
    start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server()
    files = server.services.files
    real_record = files._record
    failures = [OSError("the database went away")]

    async def record_failing_once(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return await real_record(*args, **kwargs)

    monkeypatch.setattr(files, "_record", record_failing_once)
    async with HeaperClient(server.url) as client:
        await client.login()
        heap = await new_heap(client)
        base = f"{heap['id']}/blk-1/{H}"
        r = await client.post(
            f"/api/upload/init/{heap['id']}/blk-1",
            json={"hash": H, "size": len(DATA), "chunk_size": CHUNK, "name": "x.bin"},
        )
        assert r.status_code == 200 and r.json()["total_chunks"] == 4, r.text
        for i in range(4):
            r = await client.put(
                f"/api/upload/chunk/{base}/{i}", content=DATA[i * CHUNK : (i + 1) * CHUNK]
            )
            assert r.status_code == 200, r.text
        r = await client.post(f"/api/upload/complete/{base}")
        assert_error(r, 500)
        assert not failures and files.store_path(H).exists()  # published, not recorded
        r = await client.get(f"/api/file/{H}/raw/x.bin")
        assert r.status_code == 404, r.text  # no proof recorded yet: nobody reads it

        r = await client.get(f"/api/upload/status/{base}")
        assert r.status_code == 200, r.text
        assert (r.json()["status"], r.json()["received"]) == ("uploading", [0, 1, 2, 3])
        r = await client.post(f"/api/upload/complete/{base}")
        assert r.status_code == 200 and r.json()["file_hash"] == H, r.text
        r = await client.get(f"/api/file/{H}/raw/x.bin")
        assert (r.status_code, r.content) == (200, DATA)
        r = await client.post(f"/api/upload/complete/{base}")  # idempotent, as before
        assert r.status_code == 200 and r.json()["file_hash"] == H, r.text
        assert not [p for p in files.uploads.iterdir() if p.is_dir()], "a folder left"
