"""``upload_disk.receive_body`` hands a chunk's last block to ``last`` once the body has
ended (the chunk path writes, syncs and marks it in one thread job): exact whatever the block
edges, never for a body longer or shorter than said; over a real server a chunk then takes one
thread job fewer than one per block plus the mark."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.errors import BadRequest
from heaper_trio.services import upload_disk

from .test_harden_uploads import init, send_chunks
from .test_sync import new_heap
from .test_uploads import CHUNK, sha

BLOCK = 1000


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def receive(data: bytes, piece: int, expected: int) -> tuple[list[bytes], list[bytes]]:
    blocks: list[bytes] = []
    lasts: list[bytes] = []

    async def write(b: memoryview) -> None:
        blocks.append(bytes(b))

    async def last(b: memoryview) -> None:
        assert not lasts
        lasts.append(bytes(b))

    await upload_disk.receive_body(pieces(data, piece), expected, "chunk", write, last)
    return blocks, lasts


@pytest.mark.parametrize("size", [1, 999, 1000, 1001, 3000, 3001, 2999])
@pytest.mark.parametrize("piece", [1, 7, 1000, 1500, 4096])
async def test_the_last_block_comes_last_and_whole(
    monkeypatch: pytest.MonkeyPatch, size: int, piece: int
) -> None:
    monkeypatch.setattr(upload_disk, "WRITE_BLOCK", BLOCK)
    data = os.urandom(size)
    blocks, lasts = await receive(data, piece, size)
    assert b"".join(blocks + lasts) == data
    assert len(lasts) == 1 and len(lasts[0]) == (size % BLOCK or BLOCK)
    assert all(len(b) == BLOCK for b in blocks)


@pytest.mark.parametrize("size", [1000, 1500])
async def test_no_last_block_for_a_body_of_another_length(
    monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    monkeypatch.setattr(upload_disk, "WRITE_BLOCK", BLOCK)
    data = os.urandom(size + 1)
    got: list[Any] = []

    async def last(b: memoryview) -> None:
        got.append(b)

    async def write(b: memoryview) -> None:
        pass

    for body, expected in ((data, size), (data[: size - 1], size)):
        with pytest.raises(BadRequest):
            await upload_disk.receive_body(pieces(body, 250), expected, "chunk", write, last)
        assert got == []  # neither a longer nor a shorter body hands on a last block


async def test_a_chunk_takes_one_thread_job_per_block_and_its_mark_shares_the_last(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upload_disk, "WRITE_BLOCK", CHUNK // 4)
    files = server.services.files
    heap_id = (await new_heap(admin))["id"]
    data = os.urandom(2 * CHUNK)
    await init(admin, heap_id, "b1", data)
    jobs: list[str] = []
    real_io = files._io

    async def counting(fn: Any, *args: Any) -> Any:
        jobs.append(getattr(fn, "__name__", "?"))
        return await real_io(fn, *args)

    monkeypatch.setattr(files, "_io", counting)
    await send_chunks(admin, heap_id, "b1", sha(data), data, [0])
    # open, three blocks, then the fourth written, synced and marked together
    assert jobs == ["open_chunk", "write", "write", "write", "write_mark_and_hash"], jobs
    monkeypatch.undo()
    await send_chunks(admin, heap_id, "b1", sha(data), data, [1])
    r = await admin.post(f"/api/upload/complete/{heap_id}/b1/{sha(data)}")
    assert r.status_code == 200 and r.json()["file_hash"] == sha(data), r.text
