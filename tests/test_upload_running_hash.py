"""The running hash of resumable uploads (``services/upload_hash``, issue 12 item 5): chunks
are hashed as they arrive in order, those that came ahead once the gap fills, and
``complete`` reads only what it does not cover; it trusts nothing it cannot vouch for: a write
cut off, a resend (the received bytes count), a lost hash (a restart), another file under the
name, the same chunk written twice at once (its byte range is locked, the second goes to a
file of its own)."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.records import UploadRecord
from heaper_trio.services import upload_disk, upload_journal, upload_layout
from heaper_trio.services.upload_hash import UploadHashes

from .conftest import assert_error
from .test_harden_uploads import init, send_chunks
from .test_sync import new_heap
from .test_uploads import CHUNK, sha

SIZE = 3 * CHUNK - 7


def laid_out(tmp_path: Path, data: bytes, marked: list[int]) -> tuple[Path, Any, int]:
    folder = tmp_path / "u1"
    f = upload_layout.open_data(folder, len(data), fcntl.LOCK_SH)
    f.write(data)
    f.flush()
    for i in marked:
        (folder / f"{i}.done").touch()
    return folder, f, os.fstat(f.fileno()).st_ino


def test_the_hash_follows_the_chunks_marked_in_order(tmp_path: Path) -> None:
    data = os.urandom(SIZE)
    folder, f, ino = laid_out(tmp_path, data, [])
    hashes = UploadHashes()
    first = hashes.claim("u1", ino, 0)
    assert first is not None
    assert hashes.claim("u1", ino, 0) is None  # hashed by one writer at a time
    assert hashes.claim("u1", ino, 1) is None  # not next
    first.update(b"cut off")
    hashes.settle(first, marked=False)  # a write cut off: dropped
    assert hashes.start("u1", ino)[1] == 0
    again = hashes.claim("u1", ino, 0)
    assert again is not None
    again.update(data[:CHUNK])
    hashes.settle(again, marked=True)
    hashes.settle(again, marked=True)  # once only
    digest, chunks = hashes.start("u1", ino)
    assert chunks == 1 and digest.hexdigest() == sha(data[:CHUNK])

    def marked(index: int) -> bool:
        return (folder / f"{index}.done").exists()

    (folder / "2.done").touch()  # came ahead: waits for chunk 1
    assert hashes.catch_up("u1", f, marked, CHUNK, SIZE, 1 << 30) == 0
    (folder / "1.done").touch()
    assert hashes.catch_up("u1", f, marked, CHUNK, SIZE, 1) == CHUNK  # about the budget
    assert hashes.catch_up("u1", f, marked, CHUNK, SIZE, 1 << 30) == SIZE - 2 * CHUNK
    digest, chunks = hashes.start("u1", ino)
    assert chunks == 3 and digest.hexdigest() == sha(data)
    assert hashes.start("u1", ino + 1)[1] == 0  # another file under the name: not used
    hashes.drop("u1")
    assert hashes.start("u1", ino)[1] == 0 and len(hashes) == 0
    f.close()


def test_a_chunk_that_comes_next_while_written_is_hashed_from_where_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(SIZE)
    folder = tmp_path / "u1"
    f = upload_layout.open_data(folder, SIZE, fcntl.LOCK_SH)
    ino = os.fstat(f.fileno()).st_ino
    hashes = UploadHashes()
    second = upload_layout.ChunkHashing(hashes, "u1", ino, 1, CHUNK)
    f.seek(CHUNK)
    half = CHUNK // 2
    second.write(upload_disk._write, f, memoryview(data[CHUNK : CHUNK + half]))
    assert second.claim is None  # chunk 0 is not hashed yet
    first = hashes.claim("u1", ino, 0)
    assert first is not None
    first.update(data[:CHUNK])
    hashes.settle(first, marked=True)
    second.write(upload_disk._write, f, memoryview(data[CHUNK + half : 2 * CHUNK]))
    assert second.claim is not None  # next now: what it wrote so far is read back
    hashes.settle(second.claim, marked=True)
    digest, chunks = hashes.start("u1", ino)
    assert chunks == 2 and digest.hexdigest() == sha(data[: 2 * CHUNK])

    def unreadable(*args: Any) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    third = upload_layout.ChunkHashing(hashes, "u1", ino, 2, 2 * CHUNK)
    third.claim = None
    f.seek(2 * CHUNK + 1)  # one byte written before it came next
    monkeypatch.setattr(upload_layout, "hash_range", unreadable)
    third.write(upload_disk._write, f, memoryview(data[2 * CHUNK + 1 :]))  # written all the same
    assert third.claim is None and third.given_up and hashes.start("u1", ino)[1] == 2
    f.close()


def test_only_so_many_hashes_are_kept() -> None:
    hashes = UploadHashes(keep=2)
    for upload_id in ("a", "b", "c"):
        hashes.settle(hashes.claim(upload_id, 1, 0), marked=False)
    assert len(hashes) == 2 and hashes.claim("a", 1, 0) is not None  # "a" went first


def test_a_chunk_is_written_by_one_writer_and_never_once_marked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload = UploadRecord("u1", "me", "h", "b", "0" * 64, SIZE, CHUNK, "", "", 0, 1)
    folder = tmp_path / "u1"
    first = upload_layout.open_chunk(folder, upload, 1)
    assert first is not None
    assert upload_layout.open_chunk(folder, upload, 1) is None  # the same chunk at once
    other = upload_layout.open_chunk(folder, upload, 2)
    assert other is not None
    other.close()
    upload_layout.mark_received(first, upload, 1, upload_journal.SYNCED, b"\0" * 32)
    first.close()
    assert upload_layout.open_chunk(folder, upload, 1) is None  # received: a file of its own

    # a chunk a status vouched for (its read may seed the running hash) whose record a
    # writer then erased (its sync failed): a resend must not change the bytes in ``data``
    second = upload_layout.open_chunk(folder, upload, 2)
    assert second is not None
    ino = os.fstat(second.fileno()).st_ino
    second.close()
    upload_journal.VERIFIED.add("u1", ino, [2])
    try:
        assert upload_layout.open_chunk(folder, upload, 2) is None
    finally:
        upload_journal.VERIFIED.drop("u1")

    def no_range_locks(*args: Any) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(upload_layout.fcntl, "fcntl", no_range_locks)
    assert upload_layout.open_chunk(folder, upload, 0) is None  # never written unlocked


async def test_complete_reads_only_what_the_running_hash_does_not_cover(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = server.services.files
    heap_id = (await new_heap(admin))["id"]
    read: list[tuple[int, int]] = []
    real_hash_range = upload_layout.hash_range

    def counting(fd: int, digest: Any, start: int, end: int) -> int:
        read.append((start, end))
        return real_hash_range(fd, digest, start, end)

    monkeypatch.setattr(upload_layout, "hash_range", counting)

    async def upload(block: str, data: bytes, order: list[int], *, lose: bool = False) -> Any:
        read.clear()
        await init(admin, heap_id, block, data)
        for i in order:
            await send_chunks(admin, heap_id, block, sha(data), data, [i])
        if lose:  # a restart, or chunks that went to another process
            row = await files.storage.get_upload(heap_id, block, sha(data))
            assert row is not None
            files.hashes.drop(row.id)
        return await admin.post(f"/api/upload/complete/{heap_id}/{block}/{sha(data)}")

    for block, order in (("in-order", [0, 1, 2]), ("ahead", [2, 1, 0])):
        data = os.urandom(SIZE)
        r = await upload(block, data, order)
        assert r.status_code == 200 and r.json()["file_hash"] == sha(data), r.text
        assert read == [(SIZE, SIZE)]  # nothing left to read
        assert files.store_path(sha(data)).read_bytes() == data

    data = os.urandom(SIZE)
    r = await upload("lost", data, [0, 1, 2], lose=True)
    assert r.status_code == 200, r.text
    # the check of the records it did not write (upload_journal.verify) read it from byte 0
    # and seeded the hash: complete reads nothing more (it was read twice)
    assert read == [(SIZE, SIZE)] and files.store_path(sha(data)).read_bytes() == data
    assert len(files.hashes) == 0  # dropped with each upload

    # a resend of a hashed chunk with other bytes: the received bytes count, read again
    data = os.urandom(SIZE)
    wrong = bytes(CHUNK)
    await init(admin, heap_id, "resent", data)
    await send_chunks(admin, heap_id, "resent", sha(data), wrong + data[CHUNK:], [0, 1, 2])
    read.clear()
    r = await admin.put(f"/api/upload/chunk/{heap_id}/resent/{sha(data)}/0", content=data[:CHUNK])
    assert r.status_code == 200, r.text
    r = await admin.post(f"/api/upload/complete/{heap_id}/resent/{sha(data)}")
    assert r.status_code == 200 and read == [(0, SIZE)], r.text
    assert files.store_path(sha(data)).read_bytes() == data
    # ... and the other way round: right bytes hashed, then wrong ones sent again
    data = os.urandom(SIZE)
    await init(admin, heap_id, "spoilt", data)
    await send_chunks(admin, heap_id, "spoilt", sha(data), data, [0, 1, 2])
    r = await admin.put(f"/api/upload/chunk/{heap_id}/spoilt/{sha(data)}/1", content=wrong)
    assert r.status_code == 200, r.text
    r = await admin.post(f"/api/upload/complete/{heap_id}/spoilt/{sha(data)}")
    assert_error(r, 422, "hash_mismatch")
    assert (
        r.json()["actual_hash"]
        == hashlib.sha256(data[:CHUNK] + wrong + data[2 * CHUNK :]).hexdigest()
    )
    assert not files.store_path(sha(data)).exists()
