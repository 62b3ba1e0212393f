"""One durability point per chunk (``services/upload_journal``, issue 12): a chunk's bytes and
its record go to ``data`` and one ``fdatasync`` covers both, no marker file, no folder sync; a
server killed (SIGKILL, a real process) between a chunk's bytes and its record loses only that
chunk and the upload resumes after the restart; a record whose bytes did not reach the disk,
or a torn one, is not received (and not fatal); an upload begun with ``.done`` markers resumes
and completes; a ``complete`` that died between cutting the records and its rename leaves an
upload that completes."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient, KeyPair
from heaper_trio.records import UploadRecord
from heaper_trio.services import upload_journal, upload_layout

from .process_support import wait_healthy
from .test_cli import _env, _free_port
from .test_harden_uploads import init, send_chunks
from .test_sync import new_heap
from .test_uploads import CHUNK, sha


async def status(client: HeaperClient, heap_id: str, block: str, h: str) -> list[int]:
    r = await client.get(f"/api/upload/status/{heap_id}/{block}/{h}")
    assert r.status_code == 200, r.text
    return list(r.json()["received"])


async def the_upload(server: RunningServer, heap_id: str, block: str, h: str) -> UploadRecord:
    upload = await server.services.storage.get_upload(heap_id, block, h)
    assert upload is not None
    return upload


def restarted(server: RunningServer, upload: UploadRecord) -> None:
    """What a new process knows of the upload: no running hash, and of its records nothing it
    did not check itself."""
    server.services.files.hashes.drop(upload.id)
    assert not upload_journal.VERIFIED.among(
        upload.id, os.stat(data_of(server, upload)).st_ino, [0]
    )


def data_of(server: RunningServer, upload: UploadRecord) -> Path:
    return server.services.files.uploads / upload.id / upload_layout.DATA


def kinds(server: RunningServer, upload: UploadRecord) -> dict[int, int]:
    lengths = [upload_layout.chunk_length(upload, i) for i in range(upload.total_chunks)]
    with open(data_of(server, upload), "rb") as f:
        records = upload_journal.read_records(f.fileno(), upload.size, lengths)
    return {i: r.kind for i, r in records.items()}


async def test_a_chunk_in_order_is_one_sync_and_no_marker(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    heap_id = (await new_heap(admin))["id"]
    data = os.urandom(4 * CHUNK - 1)
    h = sha(data)
    await init(admin, heap_id, "b1", data)
    syncs: list[str] = []
    real_fdatasync, real_fsync = os.fdatasync, os.fsync

    def fdatasync(fd: int) -> None:
        syncs.append("fdatasync")
        real_fdatasync(fd)

    def fsync(fd: int) -> None:
        syncs.append("fsync")
        real_fsync(fd)

    monkeypatch.setattr(upload_layout.os, "fdatasync", fdatasync)
    monkeypatch.setattr(upload_layout.os, "fsync", fsync)
    await send_chunks(admin, heap_id, "b1", h, data, [0, 1])  # one at a time, in order
    assert syncs == ["fdatasync"] * 2
    await send_chunks(admin, heap_id, "b1", h, data, [3])  # ahead: synced, then its record
    assert syncs == ["fdatasync"] * 4
    await send_chunks(admin, heap_id, "b1", h, data, [2])
    assert syncs == ["fdatasync"] * 5
    monkeypatch.undo()
    upload = await the_upload(server, heap_id, "b1", h)
    folder = server.services.files.uploads / upload.id
    assert sorted(p.name for p in folder.iterdir()) == [upload_layout.DATA]
    prefix, synced = upload_journal.PREFIX, upload_journal.SYNCED
    assert kinds(server, upload) == {0: prefix, 1: prefix, 2: prefix, 3: synced}
    restarted(server, upload)  # a new process: checks each record against its bytes
    assert await status(admin, heap_id, "b1", h) == [0, 1, 2, 3]
    r = await admin.post(f"/api/upload/complete/{heap_id}/b1/{h}")
    assert r.status_code == 200 and r.json()["file_hash"] == h, r.text
    assert server.services.files.store_path(h).read_bytes() == data  # the records cut off


async def test_records_whose_bytes_are_not_there_or_torn_are_not_received(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap_id = (await new_heap(admin))["id"]
    data = os.urandom(4 * CHUNK - 9)
    h = sha(data)
    await init(admin, heap_id, "b2", data)
    await send_chunks(admin, heap_id, "b2", h, data, [0, 1, 3])
    upload = await the_upload(server, heap_id, "b2", h)
    with open(data_of(server, upload), "r+b") as f:
        f.seek(CHUNK + 5)  # chunk 1 (a PREFIX record): its bytes never reached the disk
        f.write(b"\0" * 100)
        # chunk 2's record torn: a crash cut its write short
        record = upload_journal.pack(
            2, CHUNK, upload_journal.PREFIX, hashlib.sha256(data[: 3 * CHUNK]).digest()
        )
        f.seek(upload_journal.slot(len(data), 2))
        f.write(record[:30])
    restarted(server, upload)
    assert await status(admin, heap_id, "b2", h) == [0, 3]  # 3 came ahead: synced first
    await send_chunks(admin, heap_id, "b2", h, data, [1, 2, 3])  # sent again: files of their own
    assert await status(admin, heap_id, "b2", h) == [0, 1, 2, 3]
    r = await admin.post(f"/api/upload/complete/{heap_id}/b2/{h}")
    assert r.status_code == 200 and r.json()["file_hash"] == h, r.text
    assert server.services.files.store_path(h).read_bytes() == data


async def test_after_a_restart_only_the_last_prefix_record_is_read(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    heap_id = (await new_heap(admin))["id"]
    data = os.urandom(4 * CHUNK - 2)
    h = sha(data)
    await init(admin, heap_id, "b5", data)
    await send_chunks(admin, heap_id, "b5", h, data, [0, 1, 2])
    upload = await the_upload(server, heap_id, "b5", h)
    reads: list[int] = []
    real = upload_journal._hash_into

    def counting(fd: int, digests: Any, start: int, length: int, view: Any) -> bool:
        reads.append(length)
        return real(fd, digests, start, length, view)

    monkeypatch.setattr(upload_journal, "_hash_into", counting)
    restarted(server, upload)
    monkeypatch.setattr(upload_journal, "WALK_BYTES", 2 * CHUNK)  # the last one is past it
    # 0 and 1 are proven by the record after them (each was hashed as written only once the
    # chunk before it was synced); 2 is not checked: sent again, it is received
    assert await status(admin, heap_id, "b5", h) == [0, 1]
    assert reads == []
    monkeypatch.setattr(upload_journal, "WALK_BYTES", 3 * CHUNK)
    assert await status(admin, heap_id, "b5", h) == [0, 1, 2]  # read from byte 0: it matches
    assert reads == [CHUNK] * 3
    await send_chunks(admin, heap_id, "b5", h, data, [3])
    r = await admin.post(f"/api/upload/complete/{heap_id}/b5/{h}")
    assert r.status_code == 200 and r.json()["file_hash"] == h, r.text


async def test_an_upload_begun_with_done_markers_resumes_and_completes(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap_id = (await new_heap(admin))["id"]
    data = os.urandom(3 * CHUNK + 17)
    h = sha(data)
    await init(admin, heap_id, "b3", data)
    upload = await the_upload(server, heap_id, "b3", h)
    folder = server.services.files.uploads / upload.id
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / upload_layout.DATA, "wb") as f:  # what the previous version left
        f.truncate(len(data))
        f.seek(CHUNK)
        f.write(data[CHUNK : 2 * CHUNK])
    (folder / "1.done").touch()
    assert await status(admin, heap_id, "b3", h) == [1]
    await send_chunks(admin, heap_id, "b3", h, data, [1])  # a resend: a file of its own
    await send_chunks(admin, heap_id, "b3", h, data, [3, 0, 2])
    restarted(server, upload)
    assert await status(admin, heap_id, "b3", h) == [0, 1, 2, 3]
    r = await admin.post(f"/api/upload/complete/{heap_id}/b3/{h}")
    assert r.status_code == 200 and r.json()["file_hash"] == h, r.text
    assert server.services.files.store_path(h).read_bytes() == data
    assert not folder.exists()


async def test_a_complete_that_died_after_cutting_the_records_completes_again(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap_id = (await new_heap(admin))["id"]
    data = os.urandom(2 * CHUNK + 3)
    h = sha(data)
    await init(admin, heap_id, "b4", data)
    await send_chunks(admin, heap_id, "b4", h, data)
    upload = await the_upload(server, heap_id, "b4", h)
    folder = server.services.files.uploads / upload.id
    (folder / upload_layout.CUT).touch()
    restarted(server, upload)
    os.truncate(folder / upload_layout.DATA, len(data))  # the cut, then the process died
    assert await status(admin, heap_id, "b4", h) == [0, 1, 2]
    with open(folder / upload_layout.DATA, "r+b") as f:  # ... unless its bytes are not whole
        f.write(b"\0")
    restarted(server, upload)  # (a process hashes it once: this one knows it whole)
    assert await status(admin, heap_id, "b4", h) == []
    with open(folder / upload_layout.DATA, "r+b") as f:
        f.write(data[:1])
    r = await admin.post(f"/api/upload/complete/{heap_id}/b4/{h}")
    assert r.status_code == 200 and r.json()["file_hash"] == h, r.text
    assert server.services.files.store_path(h).read_bytes() == data


def test_a_record_is_its_chunk_s_only() -> None:
    digest = hashlib.sha256(b"x").digest()
    raw = upload_journal.pack(7, 100, upload_journal.PREFIX, digest)
    assert len(raw) == upload_journal.RECORD
    assert upload_journal.unpack(raw, 7, 100) == upload_journal.Record(7, 100, 2, digest)
    assert upload_journal.unpack(raw, 6, 100) is None  # another slot's
    assert upload_journal.unpack(raw, 7, 99) is None
    assert upload_journal.unpack(raw[:40] + b"\0" * 24, 7, 100) is None  # torn
    flipped = bytearray(raw)
    flipped[20] ^= 1
    assert upload_journal.unpack(bytes(flipped), 7, 100) is None
    assert upload_journal.unpack(b"\0" * 64, 7, 100) is None  # a hole


# A server that dies (SIGKILL, by its own hand) when it is about to write the record of chunk
# KILL_AT: the chunk's bytes are in ``data``, its record is not.
DYING_SERVER = """
import os, signal, sys
from heaper_trio.services import upload_journal
real = upload_journal.write_record
def dying(fd, size, index, *rest):
    if index == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
    real(fd, size, index, *rest)
upload_journal.write_record = dying
sys.argv = ["heaper_trio", *sys.argv[1:]]
import runpy
runpy.run_module("heaper_trio", run_name="__main__")
"""


class Process:
    def __init__(self, code: list[str], data_dir: Path, database_url: str, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        args = [sys.executable, *code, "--port", str(self.port), "--data-dir", str(data_dir)]
        args += ["--workers", "1"]  # one process: the one that dies
        if database_url:
            args += ["--database-url", database_url]
        env = _env(HEAPER_AUTH_RATE_LIMIT="10000", KILL_AT="2")
        env["PYTHONPATH"] = os.pathsep.join(sys.path)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_a_server_killed_between_a_chunk_and_its_record_loses_only_that_chunk(
    tmp_path: Path, database_url: str
) -> None:
    data_dir = tmp_path / "data"
    key = KeyPair.generate()
    content = os.urandom(4 * CHUNK)
    h = sha(content)
    first = Process(["-c", DYING_SERVER], data_dir, database_url, tmp_path / "first.log")
    second: Process | None = None
    try:
        await wait_healthy(first.url, first.proc, first.output)
        async with HeaperClient(first.url, key) as client:
            await client.login()
            heap_id = (await new_heap(client, "Killed"))["id"]
            assert (await init(client, heap_id, "bk", content)).status_code == 200
            await send_chunks(client, heap_id, "bk", h, content, [0, 1, 3])
            with pytest.raises(Exception):  # noqa: B017 (the server dies mid-request)
                await send_chunks(client, heap_id, "bk", h, content, [2])
        await trio.to_thread.run_sync(first.proc.wait, 30)
        assert first.proc.returncode == -signal.SIGKILL, first.output()
        folder = data_dir / "uploads"
        assert not list(folder.glob("**/*.done"))  # ... and no marker of any kind

        second = Process(["-m", "heaper_trio"], data_dir, database_url, tmp_path / "second.log")
        await wait_healthy(second.url, second.proc, second.output)
        async with HeaperClient(second.url, key) as client:
            await client.login()
            assert await status(client, heap_id, "bk", h) == [0, 1, 3]  # chunk 2 only is lost
            await send_chunks(client, heap_id, "bk", h, content, [2])
            r = await client.post(f"/api/upload/complete/{heap_id}/bk/{h}")
            assert r.status_code == 200 and r.json()["file_hash"] == h, r.text
            r = await client.get(f"/api/file/{h}/raw/f.bin")
            assert r.status_code == 200 and r.content == content
    finally:
        first.stop()
        if second is not None:
            second.stop()


async def test_after_a_restart_the_status_read_seeds_the_running_hash(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from heaper_trio.services import upload_hash

    heap_id = (await new_heap(admin))["id"]
    data = os.urandom(4 * CHUNK - 2)
    h = sha(data)
    await init(admin, heap_id, "b6", data)
    await send_chunks(admin, heap_id, "b6", h, data, [0, 1, 2])
    upload = await the_upload(server, heap_id, "b6", h)
    restarted(server, upload)
    assert await status(admin, heap_id, "b6", h) == [0, 1, 2]  # read from byte 0 once
    reads: list[tuple[int, int]] = []

    def counting(real: Any) -> Any:
        def hash_range(fd: int, digest: Any, start: int, end: int) -> int:
            reads.append((start, end))
            return int(real(fd, digest, start, end))

        return hash_range

    monkeypatch.setattr(upload_hash, "hash_range", counting(upload_hash.hash_range))
    monkeypatch.setattr(upload_layout, "hash_range", counting(upload_layout.hash_range))
    await send_chunks(admin, heap_id, "b6", h, data, [3])  # hashed as written: it comes next
    assert kinds(server, upload)[3] == upload_journal.PREFIX
    r = await admin.post(f"/api/upload/complete/{heap_id}/b6/{h}")
    assert r.status_code == 200 and r.json()["file_hash"] == h, r.text
    assert reads == [(len(data), len(data))]  # the first three chunks were not read again
    assert server.services.files.store_path(h).read_bytes() == data
