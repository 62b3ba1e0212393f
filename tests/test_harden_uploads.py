"""Hardening of uploads (issue 9, items 2, 6 and 12), over real HTTP on both engines.

- A hash alone grants nothing: another user's init with a known hash has to send the bytes,
  which complete checks; no file id or bytes leak before that.
- Bounded work: chunk sizes below 64 KiB and more than 10,000 chunks are refused; file-system
  work of uploads never takes more than its own few threads.
- A full disk is a 507 envelope, nothing half-written stays, the upload resumes; temp files a
  killed process left are gone at start-up, a live writer's are not.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio

import heaper_trio.services.files as files_module
from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.records import UploadRecord
from heaper_trio.services.file_store import IO_THREADS
from heaper_trio.services.upload_rules import MAX_CHUNKS, MIN_CHUNK_BYTES

from .conftest import assert_error
from .live_client import UNCLOSED_SOCKETS, collect_closed_sockets  # noqa: F401 (autouse)
from .test_sync import new_heap
from .test_uploads import CHUNK, files_v0, sha

# Chunk PUTs cut off by the server's caps leave their client sockets to the garbage collector.
pytestmark = [*UNCLOSED_SOCKETS]

real_write = files_module._write


async def init(
    client: HeaperClient,
    heap_id: str,
    block_id: str,
    data: bytes,
    chunk_size: int = CHUNK,
    size: int | None = None,
) -> Any:
    return await client.post(
        f"/api/upload/init/{heap_id}/{block_id}",
        json={
            "hash": sha(data),
            "size": len(data) if size is None else size,
            "chunk_size": chunk_size,
            "name": "f.bin",
        },
    )


async def send_chunks(
    client: HeaperClient,
    heap_id: str,
    block_id: str,
    h: str,
    data: bytes,
    indexes: list[int] | None = None,
) -> None:
    total = max(1, -(-len(data) // CHUNK))
    for i in indexes if indexes is not None else range(total):
        r = await client.put(
            f"/api/upload/chunk/{heap_id}/{block_id}/{h}/{i}",
            content=data[i * CHUNK : (i + 1) * CHUNK],
        )
        assert r.status_code == 200, r.text


def temp_files(server: RunningServer) -> list[Path]:
    return sorted(server.services.files.uploads.glob("**/*.part"))


# -- item 2: knowing a hash hands over nothing ----------------------------------------------------


async def test_a_known_hash_makes_another_user_send_the_bytes(
    admin: HeaperClient, eve: HeaperClient, server: RunningServer
) -> None:
    mine = await new_heap(admin)
    data = os.urandom(CHUNK * 2 + 100)
    h = sha(data)
    r = await admin.post(
        f"/api/upload/file/{mine['id']}/blk-a", files={"file": ("secret.bin", data)}
    )
    assert r.status_code == 200, r.text
    file_id = r.json()["file_id"]
    store = server.services.files.store_path(h)
    inode = store.stat().st_ino

    theirs = await new_heap(eve)
    r = await init(eve, theirs["id"], "blk-e", data)
    answer = r.json()
    assert r.status_code == 200 and answer["status"] == "ready", r.text
    assert answer["received"] == [] and file_id not in r.text
    # another size for the same hash: still `ready`, no hint that the hash is known
    r = await init(eve, theirs["id"], "blk-e2", data, size=len(data) + 1)
    assert r.status_code == 200 and r.json()["status"] == "ready", r.text

    async def eve_cannot_read() -> None:
        for key in (h, file_id):
            assert_error(await eve.get(f"/api/file/{key}/raw/x"), 404)
        status = (await eve.get(f"/api/status/file/{theirs['id']}/blk-e/{h}")).json()
        assert status["status"] == "uploading" and file_id not in str(status)
        assert (await eve.post("/api/block/blk-e")).status_code == 404  # nothing recorded

    await eve_cannot_read()
    # the direct upload claiming the hash with other content
    other = os.urandom(len(data))
    r = await eve.post(
        f"/api/upload/file/{theirs['id']}/blk-d", files={"file": ("x.bin", other)}, data={"hash": h}
    )
    assert_error(r, 422, "hash_mismatch")
    assert file_id not in r.text
    await eve_cannot_read()
    # chunks of other content of the right size: complete checks them against the hash
    await send_chunks(eve, theirs["id"], "blk-e", h, other)
    r = await eve.post(f"/api/upload/complete/{theirs['id']}/blk-e/{h}")
    assert_error(r, 422, "hash_mismatch")
    assert file_id not in r.text
    for key in (h, file_id):
        assert_error(await eve.get(f"/api/file/{key}/raw/x"), 404)
    assert store.read_bytes() == data  # the stored copy was never touched

    # the real bytes: verified against the copy in the store, which is not written again
    r = await init(eve, theirs["id"], "blk-e", data)
    assert r.json()["status"] == "ready", r.text
    await send_chunks(eve, theirs["id"], "blk-e", h, data)
    r = await eve.post(f"/api/upload/complete/{theirs['id']}/blk-e/{h}")
    assert r.status_code == 200 and r.json()["file_hash"] == h, r.text
    got = await eve.get(f"/api/file/{h}/raw/x")
    assert got.status_code == 200 and got.content == data
    assert store.stat().st_ino == inode and store.read_bytes() == data
    assert not temp_files(server)

    # the owner's own re-init is deduplicated, as is eve's now that she holds the bytes
    r = await init(admin, mine["id"], "blk-a2", data)
    assert r.json()["status"] == "exists" and r.json()["file_id"] == file_id, r.text
    r = await init(eve, theirs["id"], "blk-e3", data)
    assert r.json()["status"] == "exists", r.text


async def test_direct_upload_of_a_known_hash_is_verified(
    admin: HeaperClient, eve: HeaperClient, server: RunningServer
) -> None:
    mine = await new_heap(admin)
    data = b"admin's private notes\n" * 50
    h = sha(data)
    r = await admin.post(
        f"/api/upload/file/{mine['id']}/blk-a", files={"file": ("admins-plans.txt", data)}
    )
    file_id = r.json()["file_id"]
    theirs = await new_heap(eve)
    r = await eve.post(
        f"/api/upload/file/{theirs['id']}/blk-d",
        files={"file": ("n.txt", b"x" * len(data))},
        data={"hash": h},
    )
    assert_error(r, 422, "hash_mismatch")
    assert_error(await eve.get(f"/api/file/{file_id}/raw/x"), 404)
    assert (await eve.post("/api/block/blk-d")).status_code == 404  # nothing recorded
    r = await eve.post(
        f"/api/upload/file/{theirs['id']}/blk-d", files={"file": ("n.txt", data)}, data={"hash": h}
    )
    assert r.status_code == 200, r.text
    assert (await eve.get(f"/api/file/{h}/raw/x")).content == data
    assert not temp_files(server)
    # proving the bytes gives the bytes, not the first uploader's file name
    r = await eve.post(
        f"/api/upload/init/{theirs['id']}/blk-m",
        json={"hash": h, "size": len(data), "chunk_size": CHUNK},
    )
    assert r.json()["status"] == "exists", r.text
    entry = (await files_v0(eve, "blk-m"))[f"{h}:{len(data)}"]
    assert entry["name"] == "" and "admins-plans" not in r.text


# -- item 6: bounded work per upload --------------------------------------------------------------


async def test_chunking_is_bounded(admin: HeaperClient, server: RunningServer) -> None:
    heap = await new_heap(admin)
    big = os.urandom(10 * 1024 * 1024)
    r = await init(admin, heap["id"], "blk-1", big, chunk_size=1)
    assert assert_error(r, 400, "invalid_value")["field"] == "body.chunk_size"
    r = await init(admin, heap["id"], "blk-1", big, chunk_size=MIN_CHUNK_BYTES - 1)
    assert_error(r, 400, "invalid_value")
    # a stored file of the caller: the `exists` answer is bounded the same way
    await admin.post(f"/api/upload/file/{heap['id']}/blk-0", files={"file": ("b", big)})
    assert_error(await init(admin, heap["id"], "blk-1", big, chunk_size=1), 400, "invalid_value")
    r = await init(admin, heap["id"], "blk-1", big)
    assert r.json()["status"] == "exists" and len(r.json()["received"]) == 160, r.text

    # more than MAX_CHUNKS chunks: refused with the limits
    huge = MIN_CHUNK_BYTES * MAX_CHUNKS + 1
    r = await init(admin, heap["id"], "blk-2", b"whatever", size=huge)
    err = assert_error(r, 400, "invalid_value")
    assert err["max_chunks"] == MAX_CHUNKS and err["min_chunk_size"] == MIN_CHUNK_BYTES
    assert err["needed_chunk_size"] * MAX_CHUNKS >= huge
    r = await init(
        admin, heap["id"], "blk-2", b"whatever", size=huge, chunk_size=err["needed_chunk_size"]
    )
    assert r.json()["total_chunks"] == MAX_CHUNKS, r.text

    # exactly MAX_CHUNKS: accepted, and status answers at once from one directory listing
    data = os.urandom(1000)
    h = sha(data)
    r = await init(admin, heap["id"], "blk-3", data, size=MIN_CHUNK_BYTES * MAX_CHUNKS)
    assert r.json()["total_chunks"] == MAX_CHUNKS, r.text
    await admin.put(
        f"/api/upload/chunk/{heap['id']}/blk-3/{h}/7", content=os.urandom(MIN_CHUNK_BYTES)
    )
    await admin.put(
        f"/api/upload/chunk/{heap['id']}/blk-3/{h}/{MAX_CHUNKS - 1}",
        content=os.urandom(MIN_CHUNK_BYTES),
    )
    started = time.monotonic()
    status = (await admin.get(f"/api/upload/status/{heap['id']}/blk-3/{h}")).json()
    assert time.monotonic() - started < 1.0
    assert status["received"] == [7, MAX_CHUNKS - 1]
    assert status["bytes_received"] == 2 * MIN_CHUNK_BYTES

    # a file smaller than the minimum is one chunk, the last chunk may be shorter
    small = b"tiny file"
    r = await init(admin, heap["id"], "blk-4", small)
    assert r.json()["total_chunks"] == 1, r.text
    await send_chunks(admin, heap["id"], "blk-4", sha(small), small)
    r = await admin.post(f"/api/upload/complete/{heap['id']}/blk-4/{sha(small)}")
    assert r.status_code == 200, r.text
    odd = os.urandom(CHUNK * 2 + 3)
    r = await init(admin, heap["id"], "blk-5", odd)
    assert r.json()["total_chunks"] == 3
    await send_chunks(admin, heap["id"], "blk-5", sha(odd), odd)
    r = await admin.post(f"/api/upload/complete/{heap['id']}/blk-5/{sha(odd)}")
    assert r.status_code == 200, r.text

    # an upload left from before the limits (chunk_size 1) is started afresh, not walked
    assert admin.user_id
    now = int(time.time() * 1000)
    size = 10 * 1024 * 1024
    await server.services.storage.save_upload(
        UploadRecord(
            "legacy",
            admin.user_id,
            heap["id"],
            "blk-6",
            h,
            size,
            1,
            "old.bin",
            "application/octet-stream",
            now,
            now + 3_600_000,
        )
    )
    r = await init(admin, heap["id"], "blk-6", data, size=size)
    answer = r.json()
    assert (answer["status"], answer["chunk_size"], answer["total_chunks"]) == (
        "ready",
        CHUNK,
        160,
    ), r.text


async def test_upload_disk_work_keeps_to_its_own_threads(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes that hang (a stalled disk) hold at most IO_THREADS threads; the database's
    threads stay free, so other requests are answered meanwhile."""
    heap = await new_heap(admin)
    data = os.urandom(CHUNK * 8)  # 8 at once: max_uploads_per_user, twice IO_THREADS
    h = sha(data)
    await init(admin, heap["id"], "blk-s", data)
    release = threading.Event()
    busy = 0
    most = 0
    lock = threading.Lock()

    def stalled_write(out: Any, chunk: bytes) -> None:
        nonlocal busy, most
        with lock:
            busy += 1
            most = max(most, busy)
        try:
            release.wait(20)
            real_write(out, chunk)
        finally:
            with lock:
                busy -= 1

    monkeypatch.setattr(files_module, "_write", stalled_write)

    async def put(i: int) -> None:
        r = await admin.put(
            f"/api/upload/chunk/{heap['id']}/blk-s/{h}/{i}",
            content=data[i * CHUNK : (i + 1) * CHUNK],
        )
        assert r.status_code == 200, r.text

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(put, i)
        with trio.fail_after(10):
            while most < IO_THREADS:
                await trio.sleep(0.05)
        await trio.sleep(0.3)
        assert most == IO_THREADS  # the other writes wait for a thread of their own limiter
        with trio.fail_after(5):  # the database and probes are not starved
            assert (await admin.post("/api/me")).status_code == 200
            status = (await admin.get(f"/api/upload/status/{heap['id']}/blk-s/{h}")).json()
            assert status["received"] == []
        release.set()
    r = await admin.post(f"/api/upload/complete/{heap['id']}/blk-s/{h}")
    assert r.status_code == 200, r.text


# -- item 12: a full disk -------------------------------------------------------------------


def disk_full(out: Any, chunk: bytes) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


async def test_a_full_disk_is_507_and_the_upload_resumes(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    heap = await new_heap(admin)
    data = os.urandom(CHUNK * 2 + 5)
    h = sha(data)
    files = server.services.files
    await init(admin, heap["id"], "blk-f", data)

    monkeypatch.setattr(files_module, "_write", disk_full)
    r = await admin.put(f"/api/upload/chunk/{heap['id']}/blk-f/{h}/0", content=data[:CHUNK])
    assert_error(r, 507, "insufficient_storage")
    r = await admin.post(f"/api/upload/file/{heap['id']}/blk-g", files={"file": ("g.bin", data)})
    assert_error(r, 507, "insufficient_storage")
    assert not temp_files(server) and not files.store_path(h).exists()
    assert (await admin.post("/api/block/blk-g")).status_code == 404
    status = (await admin.get(f"/api/upload/status/{heap['id']}/blk-f/{h}")).json()
    assert status["received"] == []

    monkeypatch.setattr(files_module, "_write", real_write)
    await send_chunks(admin, heap["id"], "blk-f", h, data)  # space is back: it resumes
    r = await admin.put(f"/api/upload/chunk/{heap['id']}/blk-f/{h}/0", content=data[:CHUNK])
    assert r.status_code == 200, r.text  # sent again: a file of its own, copied in at complete

    monkeypatch.setattr(files_module, "_write", disk_full)  # full again while assembling
    r = await admin.post(f"/api/upload/complete/{heap['id']}/blk-f/{h}")
    assert_error(r, 507, "insufficient_storage")
    assert not temp_files(server) and not files.store_path(h).exists()
    status = (await admin.get(f"/api/upload/status/{heap['id']}/blk-f/{h}")).json()
    assert status["status"] == "uploading" and status["received"] == [0, 1, 2]

    monkeypatch.setattr(files_module, "_write", real_write)
    r = await admin.post(f"/api/upload/complete/{heap['id']}/blk-f/{h}")
    assert r.status_code == 200 and r.json()["file_hash"] == h, r.text
    assert files.store_path(h).read_bytes() == data and not temp_files(server)


async def test_temp_files_of_a_killed_process_go_at_start_up(
    start_server: Any, make_settings: Any
) -> None:
    uploads = Path(make_settings().data_dir) / "uploads"
    (uploads / "u1").mkdir(parents=True)
    dead = [uploads / "assemble-1.part", uploads / "direct-2.part", uploads / "u1" / "0.x.part"]
    for path in dead:
        path.write_bytes(b"half written")
    os.utime(dead[0], (time.time(), time.time()))  # young: age is not what tells
    chunk = uploads / "u1" / "1.chunk"
    chunk.write_bytes(b"a whole chunk")
    live = uploads / "assemble-live.part"  # a request of another process still writing it
    holder = open(live, "wb")  # noqa: SIM115 (held open across the sweep, closed in finally)
    fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
    holder.write(b"in progress")
    holder.flush()
    try:
        server = await start_server()
        with trio.fail_after(5):
            while any(p.exists() for p in dead):
                await trio.sleep(0.02)
        await server.services.files.expire(0)  # another sweep, deterministic: still spared
        assert live.exists() and chunk.exists()
    finally:
        holder.close()
    await server.services.files.expire(0)
    assert not live.exists() and chunk.exists()


async def test_a_full_disk_for_a_client_thumbnail_is_507(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import heaper_trio.services.media.client_thumbnails as thumbs_module

    heap = await new_heap(admin)
    data = b"a file with a thumbnail"
    await admin.post(f"/api/upload/file/{heap['id']}/blk-t", files={"file": ("t.txt", data)})
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(200)
    url = f"/api/upload/thumbnail/blk-t/{sha(data)}/small"

    def full(source: Any, out: Any, length: int = 0) -> None:
        out.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(thumbs_module.shutil, "copyfileobj", full)
    r = await admin.post(url, files={"thumbnail": ("s.png", png)}, data={"type": "image"})
    assert_error(r, 507, "insufficient_storage")
    root = server.services.client_thumbnails.root
    assert not [p for p in root.glob("**/*") if p.is_file()]
    monkeypatch.undo()
    r = await admin.post(url, files={"thumbnail": ("s.png", png)}, data={"type": "image"})
    assert r.status_code == 200, r.text
