"""The chunk path over a real server (issue 12 item 5): a chunk's body goes to its file in
blocks of ``WRITE_BLOCK`` (one thread job each, never one per network read), exact for sizes
that are no multiple of it; a client that disconnects mid-chunk leaves nothing visible and the
chunk can be sent again; the same chunk sent several times at once ends as one whole chunk.
``WRITE_BLOCK`` is made small (and odd) so a few hundred KiB cross many block boundaries."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

import heaper_trio.services.files as files_module
import heaper_trio.services.upload_disk as upload_disk
from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient

from .test_harden_http import RawConnection, request
from .test_sync import new_heap
from .test_uploads import sha

BLOCK = 65_536 + 3  # odd: block edges fall anywhere in hypercorn's reads
CHUNK = 3 * BLOCK + 5  # three whole blocks and a short one per chunk


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upload_disk, "WRITE_BLOCK", BLOCK)


def temp_files(server: RunningServer) -> list[Path]:
    return sorted(server.services.files.uploads.glob("**/*.part"))


async def start(client: HeaperClient, heap_id: str, block: str, data: bytes) -> str:
    r = await client.post(
        f"/api/upload/init/{heap_id}/{block}",
        json={"hash": sha(data), "size": len(data), "chunk_size": CHUNK, "name": "f.bin"},
    )
    assert r.status_code == 200 and r.json()["status"] == "ready", r.text
    return f"/api/upload/chunk/{heap_id}/{block}/{sha(data)}/"


async def put(client: HeaperClient, path: str, data: bytes, i: int) -> None:
    r = await client.put(f"{path}{i}", content=data[i * CHUNK : (i + 1) * CHUNK])
    assert r.status_code == 200, r.text
    assert r.json()["size"] == len(data[i * CHUNK : (i + 1) * CHUNK])


async def received(client: HeaperClient, heap_id: str, block: str, data: bytes) -> list[int]:
    r = await client.get(f"/api/upload/status/{heap_id}/{block}/{sha(data)}")
    return list(r.json()["received"])


async def complete(
    client: HeaperClient, server: RunningServer, heap_id: str, block: str, data: bytes
) -> None:
    r = await client.post(f"/api/upload/complete/{heap_id}/{block}/{sha(data)}")
    assert r.status_code == 200 and r.json()["file_hash"] == sha(data), r.text
    assert server.services.files.store_path(sha(data)).read_bytes() == data
    assert not temp_files(server)


async def dribble(server: RunningServer, client: HeaperClient, url: str, body: bytes) -> None:
    """A PUT whose body comes in 10,000-byte pieces a moment apart: many network reads."""
    conn = await RawConnection.open(server)
    await conn.send(request("PUT", url, len(body), f"Authorization: Bearer {client.access_token}"))
    for at in range(0, len(body), 10_000):
        await conn.send(body[at : at + 10_000])
        await trio.sleep(0.002)
    status, _, answer = await conn.answer()
    assert status == 200, answer
    await conn.stream.aclose()


async def test_a_body_is_written_in_whole_blocks_and_exactly(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    heap_id = (await new_heap(admin))["id"]
    data = os.urandom(2 * CHUNK + BLOCK + 7)  # two whole chunks, then one of a block and 7 bytes
    writes: dict[str, list[int]] = {}  # by file name: a closed file's id() is reused
    lock = threading.Lock()

    def counting(out: Any, block: Any) -> None:
        with lock:
            writes.setdefault(str(out.name), []).append(len(block))
        upload_disk._write(out, block)

    monkeypatch.setattr(files_module, "_write", counting)
    path = await start(admin, heap_id, "blk-b", data)
    await dribble(server, admin, f"{path}1", data[CHUNK : 2 * CHUNK])
    ((sizes,),) = [writes.values()]
    assert sizes == [BLOCK, BLOCK, BLOCK, 5]  # not one write per network read
    for i in (2, 0):  # any order
        await put(admin, path, data, i)
    assert sorted(sum(w) for w in writes.values()) == [BLOCK + 7, CHUNK, CHUNK]
    writes.clear()
    await complete(admin, server, heap_id, "blk-b", data)
    (assembled,) = writes.values()  # each chunk copied whole (by the kernel), in order
    assert assembled == [CHUNK, CHUNK, BLOCK + 7]


async def test_a_client_gone_mid_chunk_leaves_nothing_and_the_chunk_goes_again(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap_id = (await new_heap(admin))["id"]
    data = os.urandom(2 * CHUNK)
    path = await start(admin, heap_id, "blk-d", data)
    await put(admin, path, data, 1)
    for index in (0, 1):  # a new chunk, and a resend of a stored one, both cut off
        conn = await RawConnection.open(server)
        head = request(
            "PUT", f"{path}{index}", CHUNK, f"Authorization: Bearer {admin.access_token}"
        )
        await conn.send(head + data[index * CHUNK : index * CHUNK + 2 * BLOCK + 1])
        folder = server.services.files.uploads
        with trio.fail_after(5):  # blocks of it reach the temp file before the cut
            while not any(p.stat().st_size >= BLOCK for p in temp_files(server)):
                await trio.sleep(0.01)
        await conn.stream.aclose()
        with trio.fail_after(5):
            while temp_files(server):
                await trio.sleep(0.01)
        assert await received(admin, heap_id, "blk-d", data) == [1]  # the stored one is whole
        assert server.services.files.slots.held(admin.user_id) == 0
        assert not server.services.files.store_path(sha(data)).exists()
        assert sorted(p.name for p in folder.glob("*/*.chunk")) == ["1.chunk"]
    await put(admin, path, data, 0)
    await complete(admin, server, heap_id, "blk-d", data)


async def test_the_same_chunk_sent_several_times_at_once_is_one_whole_chunk(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap_id = (await new_heap(admin))["id"]
    data = os.urandom(3 * CHUNK - 11)
    path = await start(admin, heap_id, "blk-c", data)
    async with trio.open_nursery() as nursery:
        for i in (0, 1, 1, 1, 2, 2):
            nursery.start_soon(put, admin, path, data, i)
    assert await received(admin, heap_id, "blk-c", data) == [0, 1, 2]
    assert not temp_files(server)
    chunks = sorted(server.services.files.uploads.glob("*/*.chunk"))
    assert b"".join(p.read_bytes() for p in chunks) == data
    await complete(admin, server, heap_id, "blk-c", data)


async def test_assembling_falls_back_to_reads_and_writes_where_the_kernel_cannot_copy(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    tried = []

    def cross_device(*args: Any) -> int:
        tried.append(args)
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(upload_disk.os, "copy_file_range", cross_device)
    heap_id = (await new_heap(admin))["id"]
    data = os.urandom(2 * CHUNK + 3)
    path = await start(admin, heap_id, "blk-x", data)
    for i in range(3):
        await put(admin, path, data, i)
    await complete(admin, server, heap_id, "blk-x", data)
    assert len(tried) == 3  # one try per chunk, then the bytes went through Python
