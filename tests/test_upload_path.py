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
from heaper_trio.services import upload_journal, upload_layout

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


async def recorded(server: RunningServer, heap_id: str, block: str, data: bytes) -> set[int]:
    """The chunks with a record in the upload's ``data`` (``upload_journal``)."""
    upload = await server.services.storage.get_upload(heap_id, block, sha(data))
    assert upload is not None
    lengths = [upload_layout.chunk_length(upload, i) for i in range(upload.total_chunks)]
    with open(server.services.files.uploads / upload.id / upload_layout.DATA, "rb") as f:
        return set(upload_journal.read_records(f.fileno(), upload.size, lengths))


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
    writes: list[int] = []  # every chunk goes to the upload's one file, one at a time here
    lock = threading.Lock()

    def counting(out: Any, block: Any) -> None:
        with lock:
            writes.append(len(block))
        upload_disk._write(out, block)

    monkeypatch.setattr(files_module, "_write", counting)
    path = await start(admin, heap_id, "blk-b", data)
    await dribble(server, admin, f"{path}1", data[CHUNK : 2 * CHUNK])
    assert writes == [BLOCK, BLOCK, BLOCK, 5]  # not one write per network read
    for i, size in ((2, BLOCK + 7), (0, CHUNK)):  # any order
        writes.clear()
        await put(admin, path, data, i)
        assert sum(writes) == size
    writes.clear()
    await complete(admin, server, heap_id, "blk-b", data)
    assert writes == []  # complete hashes the upload's file and renames it: no byte copied


async def test_a_client_gone_mid_chunk_leaves_nothing_and_the_chunk_goes_again(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    heap_id = (await new_heap(admin))["id"]
    data = os.urandom(2 * CHUNK)
    path = await start(admin, heap_id, "blk-d", data)
    await put(admin, path, data, 1)
    written = 0

    def counting(out: Any, block: Any) -> None:
        nonlocal written
        written += len(block)
        upload_disk._write(out, block)

    monkeypatch.setattr(files_module, "_write", counting)
    for index in (0, 1):  # a new chunk (into the upload's file), a resend (a file of its own)
        written = 0
        conn = await RawConnection.open(server)
        head = request(
            "PUT", f"{path}{index}", CHUNK, f"Authorization: Bearer {admin.access_token}"
        )
        await conn.send(head + data[index * CHUNK : index * CHUNK + 2 * BLOCK + 1])
        folder = server.services.files.uploads
        with trio.fail_after(5):  # blocks of it reach the disk before the cut
            while written < BLOCK:
                await trio.sleep(0.01)
        await conn.stream.aclose()
        with trio.fail_after(5):
            while temp_files(server) or server.services.files.slots.held(admin.user_id):
                await trio.sleep(0.01)
        assert await received(admin, heap_id, "blk-d", data) == [1]  # the stored one is whole
        assert not server.services.files.store_path(sha(data)).exists()
        assert await recorded(server, heap_id, "blk-d", data) == {1}
        assert not list(folder.glob("*/*.done"))
        assert not list(folder.glob("*/*.chunk"))
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
    (whole,) = server.services.files.uploads.glob("*/data")
    laid = bytearray(whole.read_bytes()[: len(data)])  # past it: the chunks' records
    for extra in whole.parent.glob("*.chunk"):  # a resend after the first was marked
        at = int(extra.name.split(".")[0]) * CHUNK
        laid[at : at + extra.stat().st_size] = extra.read_bytes()
    assert bytes(laid) == data
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
    for _ in range(2):  # the second time, resends: files of their own, copied in at complete
        for i in range(3):
            await put(admin, path, data, i)
    await complete(admin, server, heap_id, "blk-x", data)
    assert len(tried) == 3  # one try per chunk, then the bytes went through Python
