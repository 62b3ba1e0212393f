"""The file store on both backends (``files_backend`` local and s3, the bucket a moto server
on loopback): uploads one-shot and resumable, Range on raw and stream, thumbnails, dedupe,
the last holder's deletion, a wrong hash and expiry leaving nothing behind, presigned
redirects. Two server processes on one database and one bucket sharing an upload are
``tests/test_cluster.py``'s. The rest of the file suite runs on the local disk; this is the set
that says the bucket behaves alike."""

from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.errors import StartupError
from heaper_trio.services.object_uploads import PART_MIN, part_chunk_size
from heaper_trio.settings import load_settings
from heaper_trio.storage.blobs.s3 import S3Objects

from .conftest import assert_error
from .objects_support import bucket, keys, open_multipart, s3_client, s3_endpoint, s3_settings
from .test_sync import new_heap

__all__ = ["bucket", "s3_endpoint"]  # fixtures, used by name

MiB = 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def png(green: int = 30) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (300, 200), (200, green, 30)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def files_server(
    start_server: Any, backend: str, request: pytest.FixtureRequest
) -> RunningServer:
    if backend == "local":
        return await start_server()  # type: ignore[no-any-return]
    endpoint = request.getfixturevalue("s3_endpoint")
    return await start_server(**s3_settings(endpoint, request.getfixturevalue("bucket")))  # type: ignore[no-any-return]


async def upload_chunks(
    client: HeaperClient,
    heap_id: str,
    block_id: str,
    data: bytes,
    *,
    chunk_size: int = MiB,
    hash: str | None = None,
    clients: list[HeaperClient] | None = None,
    complete: bool = True,
) -> httpx.Response | dict[str, Any]:
    """A resumable upload; chunk ``i`` goes through ``clients[i % len(clients)]``."""
    h = hash or sha(data)
    r = await client.post(
        f"/api/upload/init/{heap_id}/{block_id}",
        json={"hash": h, "size": len(data), "chunk_size": chunk_size, "name": "big.bin"},
    )
    assert r.status_code == 200, r.text
    init = r.json()
    size = init["chunk_size"]
    senders = clients or [client]
    for i in range(init["total_chunks"]):
        r = await senders[i % len(senders)].put(
            f"/api/upload/chunk/{heap_id}/{block_id}/{h}/{i}",
            content=data[i * size : (i + 1) * size],
        )
        assert r.status_code == 200, r.text
    if not complete:
        return dict(init)
    return await senders[-1].post(f"/api/upload/complete/{heap_id}/{block_id}/{h}")


@pytest.mark.engines("sqlite")  # s3 on PostgreSQL: the cluster and last-holder tests
async def test_upload_range_thumbnail_and_dedupe(files_server: RunningServer, backend: str) -> None:
    settings = files_server.services.settings
    async with HeaperClient(files_server.url) as client:
        await client.login()
        heap = await new_heap(client)
        # one-shot: a PNG, thumbnailed
        image = png()
        r = await client.post(
            f"/api/upload/file/{heap['id']}/blk-png",
            files={"file": ("red.png", image, "image/png")},
            data={"hash": sha(image)},
        )
        assert r.status_code == 200, r.text
        r = await client.get(f"/api/file/{sha(image)}/thumbnail/small/red.webp")
        assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
        assert Image.open(io.BytesIO(r.content)).size == (256, 171)
        # resumable: 5 chunks on disk, one part in a bucket (the cluster test has several)
        data = os.urandom(300_000)
        r = await upload_chunks(client, heap["id"], "blk-big", data, chunk_size=65536)
        assert isinstance(r, httpx.Response) and r.status_code == 200, r.text
        file_id = r.json()["file_id"]
        r = await client.get(
            f"/api/file/{file_id}/raw/big.bin", headers={"Range": "bytes=200000-250001"}
        )
        assert r.status_code == 206 and r.content == data[200_000:250_002]
        assert r.headers["content-range"] == f"bytes 200000-250001/{len(data)}"
        r = await client.get(f"/api/stream/{sha(data)}/big.bin", headers={"Range": "bytes=-10"})
        assert r.status_code == 206 and r.content == data[-10:]
        r = await client.request("HEAD", f"/api/file/{file_id}/raw/big.bin")
        assert r.status_code == 200 and r.headers["content-length"] == str(len(data))
        r = await client.post(  # held: the bytes are in the store (here: the bucket)
            "/api/ydoc/update",
            json={"operation": "add_file", "block_id": "blk-big", "file_hash": sha(image)},
        )
        assert r.status_code == 200 and r.json()["status"] == "ok", r.text
        r = await client.post("/api/regenerate_file", json={"file_hash": sha(image)})
        assert r.status_code == 200 and r.json()["mime_type"] == "image/png"  # staged in s3
        etag = (await client.get(f"/api/file/{file_id}/raw/big.bin")).headers["etag"]
        r = await client.get(f"/api/file/{file_id}/raw/big.bin", headers={"If-None-Match": etag})
        assert r.status_code == 304
        # dedupe: the same bytes into another block need no chunks
        r = await client.post(
            f"/api/upload/init/{heap['id']}/blk-again",
            json={"hash": sha(data), "size": len(data), "chunk_size": 65536, "name": "b"},
        )
        assert r.json()["status"] == "exists"
    if backend == "s3":
        endpoint, name = settings.s3_endpoint, settings.s3_bucket
        assert keys(endpoint, name, "files/") == sorted(
            [f"files/{sha(image)}", f"files/{sha(data)}"]
        )
        assert keys(endpoint, name, "uploads/") == [] and open_multipart(endpoint, name) == []
        assert keys(endpoint, name, "thumbnails/") == []  # regenerate_file dropped it
        store = Path(settings.data_dir) / "files"
        assert not store.exists() or not any(p.is_file() for p in store.rglob("*"))


@pytest.mark.engines("sqlite")
async def test_a_wrong_hash_and_expiry_leave_nothing(
    files_server: RunningServer, backend: str
) -> None:
    files = files_server.services.files
    async with HeaperClient(files_server.url) as client:
        await client.login()
        heap = await new_heap(client)
        data = os.urandom(200_000)
        wrong = sha(b"something else")
        r = await upload_chunks(client, heap["id"], "blk-w", data, hash=wrong)
        assert isinstance(r, httpx.Response)
        assert_error(r, 422, "hash_mismatch")
        assert_error(await client.get(f"/api/file/{wrong}/raw/x"), 404, "file_not_found")
        # an empty file, resumable: one empty part
        r = await upload_chunks(client, heap["id"], "blk-empty", b"")
        assert isinstance(r, httpx.Response) and r.status_code == 200, r.text
        r = await client.get(f"/api/file/{sha(b'')}/raw/e", headers={"Range": "bytes=0-"})
        assert r.status_code == 416
        assert (await client.get(f"/api/file/{sha(b'')}/raw/e")).content == b""
        # an upload left half-way: its parts go at expiry
        await upload_chunks(client, heap["id"], "blk-half", data + b"!", complete=False)
        if backend == "s3":  # and one a killed process left without its row
            s = files_server.services.settings
            s3_client(s.s3_endpoint).create_multipart_upload(Bucket=s.s3_bucket, Key="uploads/x")
        assert await files.expire(2**62) == 1
    if backend == "s3":
        s = files_server.services.settings
        assert keys(s.s3_endpoint, s.s3_bucket) == [f"files/{sha(b'')}"]
        assert open_multipart(s.s3_endpoint, s.s3_bucket) == []
    else:
        assert not any((files.uploads).glob("*/*.chunk"))


@pytest.mark.engines("postgres")
async def test_the_last_holder_takes_the_object_with_it(
    start_server: Any, s3_endpoint: str, bucket: str
) -> None:
    files_server = await start_server(**s3_settings(s3_endpoint, bucket))
    files = files_server.services.files
    async with HeaperClient(files_server.url) as client:
        await client.login()
        first, second = await new_heap(client, "A"), await new_heap(client, "B")
        data = b"kept while held\n" * 1000
        for heap in (first, second):
            r = await client.post(
                f"/api/upload/file/{heap['id']}/blk-{heap['name']}",
                files={"file": ("k.txt", data, "text/plain")},
            )
            assert r.status_code == 200, r.text
        assert (await client.delete(f"/api/heap/{first['id']}")).status_code == 200
        assert await files._in_store(sha(data))
        r = await client.get(f"/api/file/{sha(data)}/raw/k.txt", headers={"Range": "bytes=0-3"})
        assert r.content == b"kept"
        assert (await client.delete(f"/api/heap/{second['id']}")).status_code == 200
        assert not await files._in_store(sha(data))


@pytest.mark.engines("sqlite")
async def test_presigned_redirect_serves_ranges_from_the_store(
    start_server: Any, s3_endpoint: str, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await start_server(**s3_settings(s3_endpoint, bucket, files_presigned_redirect=True))
    async with HeaperClient(server.url) as client:
        await client.login()
        heap = await new_heap(client)
        data = os.urandom(100_000)
        r = await client.post(
            f"/api/upload/file/{heap['id']}/blk", files={"file": ("r.bin", data, "x/y")}
        )
        r = await client.get(f"/api/stream/{sha(data)}/r.bin")
        assert r.status_code == 307 and r.headers["cache-control"] == "no-store"
        location = r.headers["location"]
        assert location.startswith(s3_endpoint) and "X-Amz-Expires=300" in location
    async with httpx.AsyncClient() as plain:
        r = await plain.get(location, headers={"Range": "bytes=10-19"})
        assert r.status_code == 206 and r.content == data[10:20]
    server_side = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    logged = "\n".join(r.getMessage() for r in server_side)  # the test's client logs it
    assert "Signature" not in logged and os.environ["AWS_ACCESS_KEY_ID"] not in logged


async def test_a_bucket_setting_that_cannot_work_fails_at_start_in_one_line(
    s3_endpoint: str,
) -> None:
    with pytest.raises(StartupError, match="s3_bucket: required with files_backend = s3"):
        load_settings(environ={}, overrides={"files_backend": "s3"})
    with pytest.raises(StartupError, match="max_chunk_bytes: at least 5 MiB"):
        load_settings(
            environ={},
            overrides={"files_backend": "s3", "s3_bucket": "b", "max_chunk_bytes": 1 << 20},
        )
    with pytest.raises(StartupError, match="s3_bucket: 'no-such-bucket' is not reachable"):
        await S3Objects("no-such-bucket", endpoint=s3_endpoint).check()


def test_chunks_become_parts_of_at_least_five_mib() -> None:
    assert part_chunk_size(10 * MiB, 64 * 1024) == PART_MIN
    assert part_chunk_size(100, 64 * 1024) == 64 * 1024  # one chunk holds all: any size
    assert part_chunk_size(50 * MiB, 8 * MiB) == 8 * MiB


async def test_a_chunk_sent_again_during_complete_never_lands_under_the_hash(
    s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    """Process A joins and hashes an upload's parts; meanwhile the same upload's chunk is
    sent again (a new multipart upload on the same key) and completed by process B with
    other bytes. A must publish the version it hashed or nothing: before the ETag-pinned
    copy, files/<hash> ended up holding B's bytes, served to every later uploader of the
    hash (found in review)."""
    from heaper_trio.errors import Conflict
    from heaper_trio.records import UploadRecord
    from heaper_trio.services.object_uploads import ObjectUploads

    good, evil = b"G" * 1000, b"E" * 1000
    wanted = hashlib.sha256(good).hexdigest()
    store = S3Objects(bucket, endpoint=s3_endpoint)
    a, b = ObjectUploads(store), ObjectUploads(store)  # two server processes
    upload = UploadRecord(
        "u1", "user", "heap", "block", wanted, 1000, 1000, "x", "text/plain", 0, 2**50
    )
    (tmp_path / "good").write_bytes(good)
    (tmp_path / "evil").write_bytes(evil)
    await a.start(upload, created=True)
    await a.put_part(upload, 0, tmp_path / "good")
    assert await a.assemble(upload, io.BytesIO()) == wanted
    await b.put_part(upload, 0, tmp_path / "evil")  # the chunk again, through B
    assert await b.assemble(upload, io.BytesIO()) != wanted  # B's own check refuses it
    with pytest.raises(Conflict) as refused:
        await a.publish(upload, wanted)
    assert refused.value.code == "upload_incomplete"
    assert f"files/{wanted}" not in keys(s3_endpoint, bucket)
