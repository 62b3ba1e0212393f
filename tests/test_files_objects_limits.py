"""Transfers with a bucket that cannot stall the server (issue 14 review): whole objects move
in bounded pieces that a cancel stops within one, interactive requests never wait behind bulk
transfers, one user's bulk work waits for its own turns, concurrent stagings of one file
download it once, and ``complete`` never writes the whole file to local disk. The store is
moto's server on loopback; GETs are counted (and slowed, where a test needs time to act in)
through botocore's event hooks on the server's own client."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.errors import HeaperError
from heaper_trio.records import FileRecord
from heaper_trio.services import files as files_module
from heaper_trio.services.file_store import FileStore
from heaper_trio.settings import load_settings
from heaper_trio.storage.blobs.base import ObjectChanged
from heaper_trio.storage.blobs.pieces import MAX_PARTS, PieceBody, part_size, spans
from heaper_trio.storage.blobs.s3 import S3Objects

from .objects_support import bucket, open_multipart, s3_client, s3_endpoint, s3_settings
from .test_files_objects import upload_chunks
from .test_sync import new_heap

__all__ = ["bucket", "s3_endpoint"]  # fixtures, used by name

KiB, MiB = 1024, 1024 * 1024
PIECE = 256 * KiB  # small pieces: many of them in little data


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Calls:
    """The store client's calls of one operation, counted per key, and slowed (in the
    worker thread, as a slow store would be) by ``delay``."""

    def __init__(self, store: S3Objects, op: str = "GetObject", delay: float = 0.0) -> None:
        self.count: Counter[str] = Counter()
        self.first: dict[str, float] = {}
        self.delay = delay
        store.client.meta.events.register(f"before-parameter-build.s3.{op}", self)

    def __call__(self, params: dict[str, Any], **_: Any) -> None:
        key = params["Key"]
        self.count[key] += 1
        self.first.setdefault(key, time.monotonic())
        time.sleep(self.delay)


class Reads:
    """Every piece read from a GET's body (its size), slowed for bulk-sized ones (``PIECE``:
    never an interactive read of these tests), so a test has time to act mid-transfer."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, delay: float = 0.0) -> None:
        self.sizes: list[int] = []
        original = PieceBody.read

        def read(body: PieceBody, n: int) -> bytes:
            self.sizes.append(n)
            if n == PIECE:
                time.sleep(delay)
            return original(body, n)

        monkeypatch.setattr(PieceBody, "read", read)


def store_of(endpoint: str, name: str, **kw: Any) -> S3Objects:
    store = S3Objects(name, endpoint=endpoint, **kw)
    store.piece = PIECE
    return store


def put(endpoint: str, name: str, data: bytes) -> FileRecord:
    s3_client(endpoint).put_object(Bucket=name, Key=f"files/{sha(data)}", Body=data)
    return FileRecord(sha(data), sha(data)[:16], len(data), "video/mp4", "v.mp4", None, {}, 0)


def file_store(tmp_path: Path, store: S3Objects, per_user: int = 2) -> FileStore:
    settings = load_settings(
        environ={},
        overrides={
            "data_dir": str(tmp_path / "data"),
            "files_backend": "s3",
            "s3_bucket": store.bucket,
            "s3_bulk_per_user": per_user,
        },
    )
    no_database = SimpleNamespace(shares_processes=False)  # these tests never reach it
    return FileStore(no_database, None, settings, lambda *_: None, objects=store)  # type: ignore[arg-type]


def temp_files(files: FileStore) -> list[Path]:
    uploads = files.settings.data_path / "uploads"
    return sorted(uploads.glob("*.part")) if uploads.exists() else []


async def until(check: Callable[[], bool], within: float = 20.0) -> float:
    """Seconds until ``check`` holds (polled; a generous bound, never a tight timing)."""
    start = time.monotonic()
    with trio.fail_after(within):
        while not check():
            await trio.sleep(0.01)
    return time.monotonic() - start


def test_pieces_cover_a_range_and_grow() -> None:
    assert list(spans(10, 0, start=4, most=16)) == []
    assert list(spans(10, 3, start=4, most=16)) == [(10, 3)]
    assert list(spans(0, 60, start=4, most=16)) == [
        (0, 4),
        (4, 8),
        (12, 16),
        (28, 16),
        (44, 16),
    ]
    assert list(spans(5, 20, start=8, most=8)) == [(5, 8), (13, 8), (21, 4)]
    assert part_size(10 * MiB) == 8 * MiB
    big = 200 * 1024 * MiB  # past 10,000 parts of 8 MiB: larger parts
    assert part_size(big) * MAX_PARTS >= big and part_size(big) > 8 * MiB


async def test_concurrent_stagings_of_one_file_download_it_once(
    s3_endpoint: str, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_of(s3_endpoint, bucket)
    gets, reads = Calls(store), Reads(monkeypatch, delay=0.05)
    data = os.urandom(MiB + 5)
    record = put(s3_endpoint, bucket, data)
    key = f"files/{record.hash}"
    files = file_store(tmp_path, store)
    inside, release = [], trio.Event()

    async def thumbnail(user: str) -> None:
        async with files.staged(record, owner=user) as path:
            assert path.read_bytes() == data
            inside.append(user)
            await release.wait()

    async with trio.open_nursery() as nursery:
        for i in range(6):
            nursery.start_soon(thumbnail, f"user{i % 3}")
        waiter = trio.CancelScope()

        async def cancelled_waiter() -> None:
            with waiter:
                await thumbnail("gone")

        await until(lambda: len(reads.sizes) >= 1)  # downloading: "gone" is a waiter
        nursery.start_soon(cancelled_waiter)
        await trio.sleep(0.02)
        waiter.cancel()  # one waiter gone: the others are not disturbed
        await until(lambda: len(inside) == 6)
        assert len(temp_files(files)) == 1  # one shared copy
        release.set()
    assert gets.count[key] == 1 and files.stages.downloads == 1, (gets.count, reads.sizes)
    assert reads.sizes == [PIECE] * 4 + [5]
    assert temp_files(files) == [] and files.stages._stages == {}

    # the one downloading is cancelled (its client went away): a waiter takes over
    leader, got = trio.CancelScope(), []

    async def first() -> None:
        with leader:
            async with files.staged(record, owner="a"):
                pass

    async def second() -> None:
        async with files.staged(record, owner="b") as path:
            got.append(path.read_bytes())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        await until(lambda: len(reads.sizes) >= 6)
        nursery.start_soon(second)
        await trio.sleep(0.02)
        leader.cancel()
    assert got == [data] and files.stages.downloads == 3 and gets.count[key] == 3
    assert temp_files(files) == []


async def test_a_cancelled_transfer_stops_within_a_piece_and_leaves_nothing(
    s3_endpoint: str, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_of(s3_endpoint, bucket, bulk_threads=1)
    reads = Reads(monkeypatch, delay=0.1)
    record = put(s3_endpoint, bucket, os.urandom(8 * PIECE))
    files = file_store(tmp_path, store)
    scope = trio.CancelScope()
    ended = trio.Event()

    async def staging() -> None:
        with scope:
            async with files.staged(record, owner="u"):
                raise AssertionError("cancelled before it was staged")
        ended.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(staging)
        await until(lambda: len(reads.sizes) >= 2)
        scope.cancel()
        cancelled_at = time.monotonic()
        await ended.wait()
        to_end = time.monotonic() - cancelled_at
        to_free = to_end + await until(lambda: store._bulk.borrowed_tokens == 0)
    await trio.sleep(0.3)  # three pieces' time: no further read was started
    assert len(reads.sizes) <= 4, reads.sizes  # 8 pieces had it run on
    assert temp_files(files) == [] and files.stages._stages == {}
    print(f"cancel: ended after {to_end * 1000:.0f} ms, slot free after {to_free * 1000:.0f} ms")
    assert to_free < 5.0  # one piece is 0.1 s; generous for a loaded machine

    # a multipart PUT cancelled between parts aborts its parts: nothing under the key
    store.piece = 5 * MiB  # S3's smallest part
    parts = Calls(store, "UploadPart", delay=0.2)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(11 * MiB))
    with trio.move_on_after(0.1):
        await store.put_file("files/partial", source)
    assert sum(parts.count.values()) == 1
    assert open_multipart(s3_endpoint, bucket) == [] and await store.size("files/partial") is None


async def test_interactive_reads_and_other_users_go_on_while_bulk_transfers_run(
    s3_endpoint: str, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_of(s3_endpoint, bucket, threads=2, bulk_threads=2)
    gets, _ = Calls(store), Reads(monkeypatch, delay=0.15)
    a1, a2, b1 = (put(s3_endpoint, bucket, os.urandom(4 * PIECE)) for _ in range(3))
    small = os.urandom(3000)
    s3_client(s3_endpoint).put_object(Bucket=bucket, Key="small", Body=small)
    files = file_store(tmp_path, store, per_user=1)
    staged_at: dict[str, float] = {}

    async def thumbnail(name: str, record: FileRecord, user: str) -> None:
        async with files.staged(record, owner=user):
            staged_at[name] = time.monotonic()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(thumbnail, "a1", a1, "alice")
        await until(lambda: f"files/{a1.hash}" in gets.first)
        nursery.start_soon(thumbnail, "a2", a2, "alice")  # her second: waits for her turn
        nursery.start_soon(thumbnail, "b1", b1, "bob")  # another user's: goes on
        await until(lambda: store._bulk.borrowed_tokens == 2)  # every bulk slot taken
        t = time.monotonic()
        assert await store.size("small") == 3000
        body = b"".join([d async for d in await store.read_range("small", 100, 2000)])
        interactive_s = time.monotonic() - t
        assert body == small[100:2100]
        done_at = time.monotonic()
    print(f"interactive HEAD + Range GET behind busy bulk slots: {interactive_s * 1000:.0f} ms")
    assert done_at < staged_at["a1"] and done_at < staged_at["b1"]  # did not queue behind them
    assert gets.first[f"files/{b1.hash}"] < staged_at["a1"]  # bob did not wait for alice
    assert gets.first[f"files/{a2.hash}"] >= staged_at["a1"]  # alice's second waited for her turn
    assert temp_files(files) == []


async def test_large_objects_go_in_parts_and_ranges_in_growing_pieces(
    s3_endpoint: str, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_of(s3_endpoint, bucket)
    store.piece = store.copy_piece = 5 * MiB  # S3's smallest part: 2 parts of 6 MiB
    parts, copies = Calls(store, "UploadPart"), Calls(store, "UploadPartCopy")
    gets, reads = Calls(store), Reads(monkeypatch)
    data = os.urandom(6 * MiB)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    await store.put_file("uploads/x", source)
    assert parts.count["uploads/x"] == 2
    digest, etag = await store.read_into_tagged("uploads/x", None)
    assert digest == sha(data) and gets.count["uploads/x"] == 1  # hashed, nothing written
    assert reads.sizes == [5 * MiB, MiB]
    with pytest.raises(ObjectChanged):
        await store.copy("uploads/x", "files/y", if_match='"not-this-version"')
    await store.copy("uploads/x", "files/y", if_match=etag)
    assert copies.count["files/y"] == 2 and await store.size("files/y") == len(data)
    first, length = 3, len(data) - 10  # one ranged GET, read in pieces of 1, 2, 3 MiB
    reads.sizes.clear()
    got = b"".join([d async for d in await store.read_range("files/y", first, length)])
    assert got == data[first : first + length] and gets.count["files/y"] == 1
    assert reads.sizes == [MiB, 2 * MiB, length - 3 * MiB]
    assert open_multipart(s3_endpoint, bucket) == []


async def test_complete_hashes_a_large_upload_without_a_local_copy(
    start_server: Any, s3_endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The assembled upload is hashed as it streams; only its first and last PROBE_HEAD
    bytes reach the disk (a sparse file of the file's size, for the media probe)."""
    server: RunningServer = await start_server(**s3_settings(s3_endpoint, bucket))
    keep = 256 * KiB
    monkeypatch.setattr(files_module, "PROBE_HEAD", keep)
    data = os.urandom(5 * MiB + 300 * KiB)  # two parts
    seen: list[tuple[int, int, bytes]] = []
    remove = files_module._close_and_remove

    def look(f: Any, temp: Path) -> None:
        if f is not None and temp.name.startswith("assemble-"):
            f.flush()
            st = os.stat(temp)
            seen.append((st.st_size, st.st_blocks * 512, temp.read_bytes()))
        remove(f, temp)

    monkeypatch.setattr(files_module, "_close_and_remove", look)
    async with HeaperClient(server.url) as client:
        await client.login()
        heap = await new_heap(client)
        r = await upload_chunks(client, heap["id"], "blk", data, chunk_size=5 * MiB)
        assert isinstance(r, httpx.Response) and r.status_code == 200, r.text
        r = await client.get(f"/api/file/{sha(data)}/raw/b.bin")
        assert r.status_code == 200 and r.content == data
    [(size, used, held)] = seen
    assert size == len(data) and used <= 2 * keep + 128 * KiB  # sparse: the two ends
    assert held[:keep] == data[:keep] and held[-keep:] == data[-keep:]
    assert held[keep:-keep] == bytes(len(data) - 2 * keep)  # never written
    files = server.services.files
    assert temp_files(files) == [] and open_multipart(s3_endpoint, bucket) == []


async def test_a_damaged_bucket_copy_fails_every_waiter_alike(
    s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    store = store_of(s3_endpoint, bucket)
    record = put(s3_endpoint, bucket, os.urandom(3 * PIECE))
    s3_client(s3_endpoint).put_object(Bucket=bucket, Key=f"files/{record.hash}", Body=b"other")
    files = file_store(tmp_path, store)
    codes: list[str] = []

    async def thumbnail() -> None:
        try:
            async with files.staged(record, owner="u"):
                pass
        except HeaperError as e:
            codes.append(e.code)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(thumbnail)
    assert codes == ["file_missing"] * 3 and files.stages.downloads == 1
    assert temp_files(files) == []


@pytest.mark.engines("sqlite")  # the routes' part; the complete test runs on both engines
async def test_a_staging_thumbnail_does_not_hold_up_another_users_range_read(
    start_server: Any, s3_endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the routes: Alice's thumbnail request stages a large file (slowed reads);
    Bob's Range read of his small file answers before it is done."""
    from heaper_trio.client import LoginPending
    from heaper_trio.services.accounts import find_user

    server: RunningServer = await start_server(**s3_settings(s3_endpoint, bucket))
    big, small = os.urandom(8 * PIECE), os.urandom(5000)
    async with HeaperClient(server.url) as alice, HeaperClient(server.url) as bob:
        await alice.login()
        with pytest.raises(LoginPending):
            await bob.login()
        user = await find_user(server.services.storage, bob.public_key)
        await server.services.storage.set_user_state(user.id, "approved", 1)
        await bob.login()
        for client, data in ((alice, big), (bob, small)):
            heap = await new_heap(client)
            r = await client.post(
                f"/api/upload/file/{heap['id']}/blk-{sha(data)[:8]}",
                files={"file": ("f.bin", data, "application/octet-stream")},
            )
            assert r.status_code == 200, r.text
        store = server.services.files.objects
        assert store is not None
        store.piece = PIECE
        reads = Reads(monkeypatch, delay=0.1)  # 8 pieces: the staging takes 0.8 s at least
        done: dict[str, float] = {}

        async def thumbnail() -> None:
            r = await alice.get(f"/api/file/{sha(big)}/thumbnail/small/f.webp")
            assert r.status_code in (415, 422), r.text  # random bytes: staged, then refused
            done["thumbnail"] = time.monotonic()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(thumbnail)
            await until(lambda: len(reads.sizes) >= 1)
            t = time.monotonic()
            r = await bob.get(
                f"/api/file/{sha(small)}/raw/f.bin", headers={"Range": "bytes=10-4009"}
            )
            done["range"] = time.monotonic()
            assert r.status_code == 206 and r.content == small[10:4010]
    print(f"Bob's Range read while Alice's file was staged: {(done['range'] - t) * 1000:.0f} ms")
    assert done["range"] < done["thumbnail"] and reads.sizes.count(PIECE) == 8
    assert temp_files(server.services.files) == []


@pytest.mark.engines("sqlite")  # the probe's part; complete runs on both engines above
async def test_the_probe_after_complete_times_a_file_from_its_ends(
    start_server: Any,
    s3_endpoint: str,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """An MP3 without a Xing header is timed from its size: from the head alone ffprobe
    said 8 s of these 32; from the two ends kept (a sparse file of the file's size), 32."""
    server: RunningServer = await start_server(**s3_settings(s3_endpoint, bucket))
    monkeypatch.setattr(files_module, "PROBE_HEAD", 128 * KiB)
    mp3 = tmp_path / "long.mp3"
    encode = ["-f", "lavfi", "-i", "sine=frequency=440:duration=32", "-b:a", "128k"]
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *encode, "-write_xing", "0", str(mp3)],
        check=True,
    )
    data = mp3.read_bytes()
    async with HeaperClient(server.url) as client:
        await client.login()
        heap = await new_heap(client)
        r = await upload_chunks(client, heap["id"], "blk", data, chunk_size=len(data))
        assert isinstance(r, httpx.Response) and r.status_code == 200, r.text
    record = await server.services.storage.get_file(sha(data))
    assert record is not None and record.mime_type == "audio/mpeg"
    assert abs(record.meta["duration"] - 32) < 1, record.meta
