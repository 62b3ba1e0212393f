"""The upload journal under faults: a chunk whose one sync failed is not received (its record
is erased: a later fdatasync on another descriptor succeeds on Linux, the error reported once,
and the bytes may never reach the disk); a status after a restart reads the upload at most
once for the same answer (a last PREFIX record found bad, a complete that died after its
cut), since statuses run in the few probe threads."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from heaper_trio.records import UploadRecord
from heaper_trio.services import upload_journal, upload_layout
from heaper_trio.services.upload_disk import _write
from heaper_trio.services.upload_hash import UploadHashes

from .test_uploads import CHUNK, sha


async def _io(fn: Any, *args: Any) -> Any:
    return await trio.to_thread.run_sync(fn, *args)


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_a_chunk_whose_sync_failed_is_not_received(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(2 * CHUNK)
    upload = UploadRecord("u-sync", "me", "h", "b", sha(data), len(data), CHUNK, "", "", 0, 1)
    folder = tmp_path / upload.id
    real = os.fdatasync
    failed: list[int] = []

    def fdatasync_failing_once(fd: int) -> None:
        if not failed:  # the chunk's one durability point fails
            failed.append(fd)
            raise OSError(errno.EIO, "Input/output error")
        real(fd)  # later syncs succeed (the kernel reported the error once)

    monkeypatch.setattr(os, "fdatasync", fdatasync_failing_once)
    with pytest.raises(OSError):
        await upload_layout.write_chunk(
            _io, _write, folder, upload, 0, _body(data[:CHUNK]), UploadHashes()
        )
    assert failed, "the chunk's sync was not reached"
    # the client asks what arrived before sending chunk 0 again
    assert upload_layout.received(folder, upload) == []


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    read: list[int] = []
    real = upload_journal._hash_into

    def counting(fd: int, digests: list[Any], start: int, length: int, view: Any) -> bool:
        read.append(length)
        return real(fd, digests, start, length, view)

    monkeypatch.setattr(upload_journal, "_hash_into", counting)
    return read


async def test_a_last_prefix_record_found_bad_is_not_read_at_every_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(3 * CHUNK)
    upload = UploadRecord("u-bad", "me", "h", "b", sha(data), len(data), CHUNK, "", "", 0, 1)
    folder, hashes = tmp_path / upload.id, UploadHashes()
    for i in (0, 1):  # in order: both PREFIX records
        await upload_layout.write_chunk(
            _io, _write, folder, upload, i, _body(data[i * CHUNK : (i + 1) * CHUNK]), hashes
        )
    with open(folder / upload_layout.DATA, "r+b") as f:  # chunk 1's bytes lost in a crash
        os.pwrite(f.fileno(), bytes(CHUNK), CHUNK)
    hashes.drop(upload.id)  # a new process
    read = _count_reads(monkeypatch)
    assert upload_layout.received(folder, upload) == [0]
    first = sum(read)
    assert first == 2 * CHUNK
    for _ in range(3):  # the client polls its status
        assert upload_layout.received(folder, upload) == [0]
    assert sum(read) == first, "each status hashed the upload from byte 0 again"


async def test_a_cut_upload_is_hashed_whole_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(3 * CHUNK)
    upload = UploadRecord("u-cut", "me", "h", "b", sha(data), len(data), CHUNK, "", "", 0, 1)
    folder, hashes = tmp_path / upload.id, UploadHashes()
    for i in range(3):
        await upload_layout.write_chunk(
            _io, _write, folder, upload, i, _body(data[i * CHUNK : (i + 1) * CHUNK]), hashes
        )
    (folder / upload_layout.CUT).touch()  # complete cut the records, then died
    os.truncate(folder / upload_layout.DATA, len(data))
    hashes.drop(upload.id)
    read = _count_reads(monkeypatch)
    assert upload_layout.received(folder, upload) == [0, 1, 2]
    once = sum(read)
    assert once == len(data)
    assert upload_layout.received(folder, upload) == [0, 1, 2]
    assert sum(read) == once, "a second status hashed the whole upload again"
