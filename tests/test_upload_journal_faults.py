"""The upload journal under faults: a chunk whose one sync failed is not received (its record
is marked BAD: a later fdatasync on another descriptor succeeds on Linux, the error reported
once, and the bytes may never reach the disk), and with several workers nothing another one
vouched for meanwhile is trusted after it (a resend goes to a file of its own, complete
hashes from byte 0); a status after a restart reads the upload at most
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

from heaper_trio.errors import Conflict
from heaper_trio.records import UploadRecord
from heaper_trio.services import upload_hash, upload_journal, upload_layout
from heaper_trio.services.upload_disk import _write
from heaper_trio.services.upload_hash import UploadHashes
from heaper_trio.services.upload_journal import BAD

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
    with open(folder / upload_layout.DATA, "rb") as f:
        lengths = [CHUNK, CHUNK]
        assert upload_journal.read_records(f.fileno(), len(data), lengths)[0].kind == BAD
    # the resend, in another worker (nothing vouched for there): a file of its own
    _as_worker(monkeypatch, upload_journal.Verified())
    assert upload_layout.open_chunk(folder, upload, 0) is None


def _as_worker(monkeypatch: pytest.MonkeyPatch, verified: upload_journal.Verified) -> None:
    """What this process knows of the journal becomes another worker's (``--workers N``)."""
    monkeypatch.setattr(upload_journal, "VERIFIED", verified)
    monkeypatch.setattr(upload_hash, "VERIFIED", verified)


async def _fail_while_another_worker_vouches(
    monkeypatch: pytest.MonkeyPatch, folder: Path, upload: UploadRecord, chunk: bytes
) -> tuple[upload_journal.Verified, UploadHashes]:
    """Worker A writes chunk 0; its sync fails, and while it does, a status on worker B reads
    the record, vouches for the chunk and seeds B's running hash with its bytes."""
    a, b = upload_journal.Verified(), upload_journal.Verified()
    real = os.fdatasync
    failed: list[int] = []

    def fdatasync_failing_once(fd: int) -> None:
        if failed:
            return real(fd)
        failed.append(fd)
        _as_worker(monkeypatch, b)
        assert upload_layout.received(folder, upload) == [0]  # B vouches, seeds
        _as_worker(monkeypatch, a)
        raise OSError(errno.EIO, "Input/output error")

    _as_worker(monkeypatch, a)
    monkeypatch.setattr(os, "fdatasync", fdatasync_failing_once)
    with pytest.raises(OSError):
        await upload_layout.write_chunk(
            _io, _write, folder, upload, 0, _body(chunk), UploadHashes()
        )
    assert failed and b.has(upload.id, os.stat(folder / upload_layout.DATA).st_ino, 0)
    _as_worker(monkeypatch, b)
    hashes_b = UploadHashes()
    assert upload_layout.received(folder, upload) == []  # its sync failed: not received
    return b, hashes_b


async def test_a_resend_after_a_failed_sync_never_rewrites_what_another_worker_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(2 * CHUNK)
    upload = UploadRecord("u-3w", "me", "h", "b", sha(data), len(data), CHUNK, "", "", 0, 1)
    folder = tmp_path / upload.id
    b, hashes_b = await _fail_while_another_worker_vouches(
        monkeypatch, folder, upload, data[:CHUNK]
    )
    # worker C (vouched for nothing) takes the resend of chunk 0, of other bytes
    other = os.urandom(CHUNK)
    _as_worker(monkeypatch, upload_journal.Verified())
    written = await upload_layout.write_chunk(
        _io, _write, folder, upload, 0, _body(other), UploadHashes()
    )
    if written is None:  # a file of its own, as the service writes it
        (folder / "0.chunk").write_bytes(other)
    # worker B takes chunk 1 (hashed as written, after its seed) and the complete
    _as_worker(monkeypatch, b)
    await upload_layout.write_chunk(_io, _write, folder, upload, 1, _body(data[CHUNK:]), hashes_b)
    final = tmp_path / "store"
    actual = upload_layout.complete_in_place(folder, upload, _write, final, hashes_b)
    assert actual == sha(other + data[CHUNK:]), "complete trusted a hash of bytes not there"
    assert not final.exists()


async def test_complete_refuses_a_bad_chunk_not_resent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(2 * CHUNK)
    upload = UploadRecord("u-lost", "me", "h", "b", sha(data), len(data), CHUNK, "", "", 0, 1)
    folder = tmp_path / upload.id
    _, hashes_b = await _fail_while_another_worker_vouches(
        monkeypatch, folder, upload, data[:CHUNK]
    )
    with open(folder / upload_layout.DATA, "r+b") as f:  # the failed writeback lost them
        os.pwrite(f.fileno(), bytes(CHUNK), 0)
    # worker B took chunk 1 and the complete (its status had said chunk 0 was received)
    await upload_layout.write_chunk(_io, _write, folder, upload, 1, _body(data[CHUNK:]), hashes_b)
    final = tmp_path / "store"
    with pytest.raises(Conflict) as refused:  # not resent: its bytes may not be on the disk
        upload_layout.complete_in_place(folder, upload, _write, final, hashes_b)
    assert refused.value.code == "upload_incomplete" and not final.exists()
    (folder / "0.chunk").write_bytes(data[:CHUNK])  # resent: a file of its own
    actual = upload_layout.complete_in_place(folder, upload, _write, final, hashes_b)
    assert actual == sha(data) and final.read_bytes() == data


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
