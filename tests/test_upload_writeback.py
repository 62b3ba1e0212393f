"""services/writeback.py: every block of a chunk written to ``data`` is handed to the disk as
it is written, and the blocks before it waited for (the chunk's one sync then waits for its
last block only), and the chunk is marked only with its sync."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.services import upload_disk, upload_layout, writeback

from .test_harden_uploads import init, send_chunks
from .test_sync import new_heap
from .test_uploads import CHUNK, sha


def test_writeback_is_asked_of_the_kernel(tmp_path: Path) -> None:
    with open(tmp_path / "f", "wb") as f:
        f.write(b"x" * 8192)
        f.flush()
        if not writeback.available():
            pytest.skip("no sync_file_range here (not Linux)")
        assert writeback.start_writeback(f.fileno(), 0, 8192)
        assert not writeback.start_writeback(f.fileno(), 0, 0)  # nothing to write
        assert writeback.wait_written(f.fileno(), 0, 8192)
        assert not writeback.wait_written(f.fileno(), 0, 0)


async def test_each_block_of_a_chunk_goes_to_the_disk_before_its_sync(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    heap_id = (await new_heap(admin))["id"]
    events: list[tuple[str, int, int]] = []
    real_start, real_mark = upload_layout.start_writeback, upload_layout.mark_received

    def started(fd: int, offset: int, length: int) -> bool:
        events.append(("writeback", offset, length))
        return real_start(fd, offset, length)

    def marked(f: object, upload: object, index: int, kind: int, digest: bytes) -> None:
        events.append(("marked", index, 0))
        real_mark(f, upload, index, kind, digest)  # type: ignore[arg-type]

    monkeypatch.setattr(upload_layout, "start_writeback", started)
    monkeypatch.setattr(upload_layout, "mark_received", marked)
    data = os.urandom(2 * CHUNK - 5)
    await init(admin, heap_id, "b1", data)
    await send_chunks(admin, heap_id, "b1", sha(data), data, [1, 0])
    assert events == [
        ("writeback", CHUNK, CHUNK - 5),
        ("marked", 1, 0),
        ("writeback", 0, CHUNK),
        ("marked", 0, 0),
    ]
    r = await admin.post(f"/api/upload/complete/{heap_id}/b1/{sha(data)}")
    assert r.status_code == 200 and r.json()["file_hash"] == sha(data), r.text
    assert server.services.files.store_path(sha(data)).read_bytes() == data


async def test_the_blocks_before_the_last_are_written_before_the_sync(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each block's job waits for the writeback of the chunk's blocks before it (while the
    next block comes from the network), so the sync waits for the last block only."""
    heap_id = (await new_heap(admin))["id"]
    block = CHUNK // 4
    monkeypatch.setattr(upload_disk, "WRITE_BLOCK", block)
    events: list[tuple[str, int, int]] = []
    real_wait, real_mark = upload_layout.wait_written, upload_layout.mark_received

    def waited(fd: int, offset: int, length: int) -> bool:
        if length:
            events.append(("waited", offset, length))
        return real_wait(fd, offset, length)

    def marked(f: object, upload: object, index: int, kind: int, digest: bytes) -> None:
        events.append(("marked", index, 0))
        real_mark(f, upload, index, kind, digest)  # type: ignore[arg-type]

    monkeypatch.setattr(upload_layout, "wait_written", waited)
    monkeypatch.setattr(upload_layout, "mark_received", marked)
    data = os.urandom(2 * CHUNK)
    await init(admin, heap_id, "b2", data)
    await send_chunks(admin, heap_id, "b2", sha(data), data, [1])
    assert events == [
        ("waited", CHUNK, block),
        ("waited", CHUNK, 2 * block),
        ("waited", CHUNK, 3 * block),
        ("marked", 1, 0),
    ]
