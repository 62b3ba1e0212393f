"""A resumable upload whose ``complete`` fails after renaming the verified bytes into the store
and before recording the file (the database unreachable for a moment, a cancel, a kill -9:
the same state on disk) is completed by the next ``complete``, not sent again. Before, its
status answered no chunk received and complete ``upload_incomplete`` with every chunk
missing: the client had to send the whole file again (for a large file, gigabytes) though
the server held its checked bytes. Real server over a real socket, both engines."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient

from .conftest import assert_error
from .objects_support import bucket, keys, s3_endpoint
from .test_files_objects import MiB, backend, files_server
from .test_storage_claim_sweep import rows
from .test_sync import new_heap
from .test_uploads import sha

__all__ = ["backend", "bucket", "files_server", "s3_endpoint"]  # fixtures, used by name
DATA = os.urandom(3 * MiB + 5)  # 4 chunks on disk, 1 part in a bucket
H = sha(DATA)


async def test_a_complete_that_failed_after_publishing_is_finished_not_resent(
    files_server: RunningServer, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = files_server
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
            json={"hash": H, "size": len(DATA), "chunk_size": MiB, "name": "x.bin"},
        )
        assert r.status_code == 200, r.text
        size, total = r.json()["chunk_size"], r.json()["total_chunks"]
        for i in range(total):
            r = await client.put(
                f"/api/upload/chunk/{base}/{i}", content=DATA[i * size : (i + 1) * size]
            )
            assert r.status_code == 200, r.text
        r = await client.post(f"/api/upload/complete/{base}")
        assert_error(r, 500)
        assert not failures and await files._in_store(H)  # published, not recorded
        r = await client.get(f"/api/file/{H}/raw/x.bin")
        assert r.status_code == 404, r.text  # no proof recorded yet: nobody reads it

        r = await client.get(f"/api/upload/status/{base}")
        assert r.status_code == 200, r.text
        assert (r.json()["status"], r.json()["received"]) == ("uploading", list(range(total)))
        r = await client.post(f"/api/upload/complete/{base}")
        assert r.status_code == 200 and r.json()["file_hash"] == H, r.text
        r = await client.get(f"/api/file/{H}/raw/x.bin")
        assert (r.status_code, r.content == DATA) == (200, True)
        r = await client.post(f"/api/upload/complete/{base}")  # idempotent, as before
        assert r.status_code == 200 and r.json()["file_hash"] == H, r.text
    assert not [p for p in files.uploads.iterdir() if p.is_dir()], "a folder left"
    if backend == "s3":
        s = server.services.settings
        assert keys(s.s3_endpoint, s.s3_bucket) == [f"files/{H}"]


async def test_a_retried_complete_whose_published_bytes_went_asks_for_them_again(
    start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retry's status and first look see the published bytes; before its claim is held
    they are removed (a stale deletion mark of the hash resumed by the sweep, or a deletion
    the claim waited for: emulated by removing them on entering ``hold``). Before the fix,
    complete made a new ``data`` of holes where the published one was; on the reused inode
    the running hash still vouched for every chunk, so zeros went to the store under the
    upload's hash (200, and a GET answered zeros); on another inode a wrong 422 threw the
    upload away. Now: 409 upload_incomplete with every chunk missing, status lists none,
    and the chunks sent again complete the file."""
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
            json={"hash": H, "size": len(DATA), "chunk_size": MiB, "name": "x.bin"},
        )
        size, total = r.json()["chunk_size"], r.json()["total_chunks"]
        for i in range(total):
            r = await client.put(
                f"/api/upload/chunk/{base}/{i}", content=DATA[i * size : (i + 1) * size]
            )
            assert r.status_code == 200, r.text
        r = await client.post(f"/api/upload/complete/{base}")
        assert_error(r, 500)

        real_hold = files.claims.hold

        @asynccontextmanager
        async def hold_after_a_deletion(hash: str) -> AsyncIterator[None]:
            files.store_path(hash).unlink()  # the deletion's removal ends just before
            async with real_hold(hash):
                yield

        monkeypatch.setattr(files.claims, "hold", hold_after_a_deletion)
        r = await client.post(f"/api/upload/complete/{base}")
        body = assert_error(r, 409, "upload_incomplete")
        assert body["missing"] == list(range(total)), body
        assert not files.store_path(H).exists(), "zeros published"
        monkeypatch.setattr(files.claims, "hold", real_hold)
        r = await client.get(f"/api/file/{H}/raw/x.bin")
        assert r.status_code == 404, r.text
        r = await client.get(f"/api/upload/status/{base}")
        assert (r.json()["status"], r.json()["received"]) == ("uploading", []), r.text

        for i in range(total):
            r = await client.put(
                f"/api/upload/chunk/{base}/{i}", content=DATA[i * size : (i + 1) * size]
            )
            assert r.status_code == 200, r.text
        r = await client.post(f"/api/upload/complete/{base}")
        assert r.status_code == 200 and r.json()["file_hash"] == H, r.text
        r = await client.get(f"/api/file/{H}/raw/x.bin")
        assert (r.status_code, r.content == DATA) == (200, True)


async def test_bytes_published_by_a_failed_complete_go_when_the_upload_expires(
    files_server: RunningServer, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``complete`` published the bytes and failed before recording; the client never
    sent it again. When the upload expires its folder (or ``uploads/<id>``) goes, and the
    published bytes, which no row names, are marked for deletion: the next sweep removes
    them. Before, they stayed in the store for ever."""
    server = files_server
    files = server.services.files
    real_record = files._record

    async def record_failing(*args: Any, **kwargs: Any) -> Any:
        raise OSError("the database went away")

    monkeypatch.setattr(files, "_record", record_failing)
    async with HeaperClient(server.url) as client:
        await client.login()
        heap = await new_heap(client)
        base = f"{heap['id']}/blk-1/{H}"
        r = await client.post(
            f"/api/upload/init/{heap['id']}/blk-1",
            json={"hash": H, "size": len(DATA), "chunk_size": MiB, "name": "x.bin"},
        )
        size, total = r.json()["chunk_size"], r.json()["total_chunks"]
        for i in range(total):
            r = await client.put(
                f"/api/upload/chunk/{base}/{i}", content=DATA[i * size : (i + 1) * size]
            )
            assert r.status_code == 200, r.text
        r = await client.post(f"/api/upload/complete/{base}")
        assert_error(r, 500)
    monkeypatch.setattr(files, "_record", real_record)
    assert await files._in_store(H)

    now = await files.storage.clock_ms()
    assert await files.expire(now + 365 * 24 * 3600 * 1000) == 1  # long after it expired
    assert await files._in_store(H)  # the sweep's to remove, under its turns
    assert await files.finish_interrupted_deletions() == 1
    assert not await files._in_store(H)
    assert (await rows(files.storage))[1] == set()
    if backend == "s3":
        s = server.services.settings
        assert keys(s.s3_endpoint, s.s3_bucket) == []


async def test_published_bytes_stay_while_another_upload_of_the_hash_lives(
    files_server: RunningServer, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two uploads of one hash whose ``complete`` both failed after publishing the bytes; the
    first then expired: the bytes stay for the second, whose retried ``complete`` finishes
    without a chunk sent again. Before (found by review), the first's expiry
    marked them stale and the sweep removed them, and the second had to send everything."""
    server = files_server
    files = server.services.files
    real_record = files._record

    async def record_failing(*args: Any, **kwargs: Any) -> Any:
        raise OSError("the database went away")

    async with HeaperClient(server.url) as client:
        await client.login()
        heap = await new_heap(client)
        bases = []
        for block in ("blk-1", "blk-2"):
            r = await client.post(
                f"/api/upload/init/{heap['id']}/{block}",
                json={"hash": H, "size": len(DATA), "chunk_size": MiB, "name": "x.bin"},
            )
            assert r.status_code == 200, r.text
            bases.append(f"{heap['id']}/{block}/{H}")
        size, total = r.json()["chunk_size"], r.json()["total_chunks"]
        for base in bases:
            for i in range(total):
                r = await client.put(
                    f"/api/upload/chunk/{base}/{i}", content=DATA[i * size : (i + 1) * size]
                )
                assert r.status_code == 200, r.text
        monkeypatch.setattr(files, "_record", record_failing)
        for base in bases:  # both publish (the second finds the bytes there) and fail
            r = await client.post(f"/api/upload/complete/{base}")
            assert_error(r, 500)
        monkeypatch.setattr(files, "_record", real_record)
        assert await files._in_store(H)
        first = await files.storage.get_upload(heap["id"], "blk-1", H)
        assert first is not None
        await files._discard(first)  # what expire does to the first alone
        await files._orphaned_bytes(H)
        await files.finish_interrupted_deletions()
        assert await files._in_store(H)
        r = await client.post(f"/api/upload/complete/{bases[1]}")
        assert r.status_code == 200 and r.json()["file_hash"] == H, r.text
        r = await client.get(f"/api/file/{H}/raw/x.bin")
        assert (r.status_code, r.content == DATA) == (200, True)
