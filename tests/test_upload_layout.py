"""One file per upload (``services/upload_layout``), over a real server on both engines: an
upload begun in the old layout (a file per chunk) completes after the upgrade; a process
killed (SIGKILL) after writing a chunk but before marking it leaves that chunk not received;
bytes changed under a marker are refused by the hash, never published; a chunk writer that
waited for its lock while ``complete`` renamed the file into the store writes nothing."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.errors import NotFound
from heaper_trio.records import UploadRecord
from heaper_trio.services import upload_layout

from .conftest import assert_error
from .test_harden_uploads import init, send_chunks
from .test_sync import new_heap
from .test_uploads import CHUNK, sha


def folder_of(server: RunningServer) -> Path:
    (folder,) = [p for p in server.services.files.uploads.iterdir() if p.is_dir()]
    return folder


async def status(client: HeaperClient, heap_id: str, block: str, h: str) -> list[int]:
    r = await client.get(f"/api/upload/status/{heap_id}/{block}/{h}")
    return list(r.json()["received"])


async def test_an_upload_begun_in_the_old_layout_completes_after_the_upgrade(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap_id = (await new_heap(admin))["id"]
    data = os.urandom(3 * CHUNK + 17)
    h = sha(data)
    assert (await init(admin, heap_id, "blk-old", data)).status_code == 200
    upload = await server.services.storage.get_upload(heap_id, "blk-old", h)
    assert upload is not None
    folder = server.services.files.uploads / upload.id
    folder.mkdir(parents=True, exist_ok=True)
    for i in (0, 2):  # what the old version left: whole chunk files, no data file
        (folder / f"{i}.chunk").write_bytes(data[i * CHUNK : (i + 1) * CHUNK])
    assert await status(admin, heap_id, "blk-old", h) == [0, 2]
    await send_chunks(admin, heap_id, "blk-old", h, data, [1, 3])  # the rest, after the upgrade
    assert await status(admin, heap_id, "blk-old", h) == [0, 1, 2, 3]
    r = await admin.post(f"/api/upload/complete/{heap_id}/blk-old/{h}")
    assert r.status_code == 200 and r.json()["file_hash"] == h, r.text
    assert server.services.files.store_path(h).read_bytes() == data
    assert not folder.exists()


WRITER = """
import os, signal, sys
from pathlib import Path
from typing import Any
import fcntl
from heaper_trio.services.upload_layout import open_data
folder, size, at, n = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
f = open_data(folder, size, fcntl.LOCK_SH)
f.seek(at)
f.write(b"x" * n)
f.flush()
os.kill(os.getpid(), signal.SIGKILL)  # between the chunk's bytes and its marker
"""


async def test_a_chunk_killed_before_its_marker_is_not_received_and_nothing_unverified_is_published(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap_id = (await new_heap(admin))["id"]
    data = os.urandom(2 * CHUNK)
    h = sha(data)
    await init(admin, heap_id, "blk-k", data)
    await send_chunks(admin, heap_id, "blk-k", h, data, [0])
    folder = folder_of(server)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = [str(folder), str(len(data)), str(CHUNK), str(CHUNK)]
    done = await trio.to_thread.run_sync(
        lambda: subprocess.run([sys.executable, "-c", WRITER, *args], env=env, check=False)
    )
    assert done.returncode == -9
    assert await status(admin, heap_id, "blk-k", h) == [0]  # chunk 1 is not received
    r = await admin.post(f"/api/upload/complete/{heap_id}/blk-k/{h}")
    assert_error(r, 409, "upload_incomplete")
    # bytes under a marker changed (a disk, or a writer, gone wrong): refused, never published
    (folder / "1.done").touch()
    r = await admin.post(f"/api/upload/complete/{heap_id}/blk-k/{h}")
    assert_error(r, 422, "hash_mismatch")
    assert not server.services.files.store_path(h).exists() and not folder.exists()


def test_a_writer_that_waited_for_complete_writes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "u1"
    whole = upload_layout.open_data(folder, 10, fcntl.LOCK_EX)  # complete holds the file
    with pytest.raises(BlockingIOError):  # a writer waits (in trio, not in a thread)
        upload_layout.open_data(folder, 10, fcntl.LOCK_SH)
    early = open(folder / upload_layout.DATA, "r+b")  # noqa: SIM115 (opened before the rename)
    store = tmp_path / "store"
    os.replace(folder / upload_layout.DATA, store)  # published, still locked
    whole.close()
    with early, pytest.raises(NotFound) as gone:
        upload_layout.lock_named(early, folder / upload_layout.DATA, fcntl.LOCK_SH)
    assert gone.value.code == "upload_not_found"
    assert store.stat().st_size == 10


def test_received_needs_the_data_file(tmp_path: Path) -> None:
    upload = UploadRecord("u", "me", "h", "b", "0" * 64, 3 * CHUNK, CHUNK, "", "", 0, 1)
    (tmp_path / "1.done").touch()
    (tmp_path / "2.chunk").write_bytes(b"x" * CHUNK)
    (tmp_path / "0.chunk").write_bytes(b"short")  # a chunk file of the wrong size
    assert upload_layout.received(tmp_path, upload) == [2]
    (tmp_path / upload_layout.DATA).touch()
    assert upload_layout.received(tmp_path, upload) == [1, 2]


async def test_waiting_for_the_lock_holds_no_upload_thread(tmp_path: Path) -> None:
    """Writers and complete wait for each other in trio: with every upload thread taken by
    waiters, the holder could never finish (a deadlock under load)."""
    limiter = trio.CapacityLimiter(1)

    async def io(fn: Any, *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=limiter)

    folder = tmp_path / "u1"
    holder = upload_layout.open_data(folder, 10, fcntl.LOCK_EX)
    got: list[Any] = []

    async def writer() -> None:
        got.append(
            await upload_layout.locked(io, upload_layout.open_data, folder, 10, fcntl.LOCK_SH)
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.sleep(0.2)
        with trio.fail_after(2):
            await io(lambda: None)  # the one thread is free while the writer waits
        assert not got
        holder.close()
    got[0].close()
