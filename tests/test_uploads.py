"""Uploads over real HTTP on both engines: direct (multipart) and resumable (shuffled,
parallel, repeated and cut-off chunks, a wrong hash, a restart in the middle), dedup, status,
the block's files_v0, access by other users, and files going with their blocks."""

from __future__ import annotations

import base64
import hashlib
import os
import random
from typing import Any

import httpx
import pycrdt
import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient

from .conftest import assert_error
from .test_sync import ClientBlock, new_heap, push

CHUNK = 64 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def files_v0(client: HeaperClient, block_id: str) -> dict[str, Any]:
    r = await client.post("/api/sync/pull", json={"blocks": [{"block_id": block_id}]})
    doc = pycrdt.Doc()
    doc.apply_update(base64.b64decode(r.json()["blocks"][0]["update"]))
    files = doc.get("files_v0", type=pycrdt.Map)
    return {k: dict(v) for k, v in files.items()}


async def resumable(
    client: HeaperClient,
    heap_id: str,
    block_id: str,
    data: bytes,
    name: str = "big.bin",
    order: list[int] | None = None,
) -> dict[str, Any]:
    h = sha(data)
    r = await client.post(
        f"/api/upload/init/{heap_id}/{block_id}",
        json={
            "hash": h,
            "size": len(data),
            "chunk_size": CHUNK,
            "name": name,
            "mime_type": "application/octet-stream",
        },
    )
    assert r.status_code == 200, r.text
    init = r.json()
    indexes = order if order is not None else list(range(init["total_chunks"]))
    for i in indexes:
        r = await client.put(
            f"/api/upload/chunk/{heap_id}/{block_id}/{h}/{i}",
            content=data[i * CHUNK : (i + 1) * CHUNK],
        )
        assert r.status_code == 200, r.text
    r = await client.post(f"/api/upload/complete/{heap_id}/{block_id}/{h}")
    return {"init": init, "complete": r}


async def test_direct_upload_records_the_file_in_the_block(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    data = b"hello file\n" * 1000
    r = await admin.post(
        f"/api/upload/file/{heap['id']}/blk-direct",
        files={"file": ("notes.txt", data, "text/plain")},
        data={"hash": sha(data)},
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["status"] == "complete" and answer["file_hash"] == sha(data)
    entry = (await files_v0(admin, "blk-direct"))[f"{sha(data)}:{len(data)}"]
    assert entry["name"] == "notes.txt" and entry["file_size"] == len(data)
    assert entry["mime_type"] == "text/plain" and entry["file_id"] == answer["file_id"]
    block = (await admin.post("/api/block/blk-direct")).json()
    assert block["block"]["type"] == "file" and block["block"]["title"] == "notes.txt"
    stored = server.services.files.store_path(sha(data))
    assert stored.read_bytes() == data

    # the wrong hash: 422, nothing stored
    r = await admin.post(
        f"/api/upload/file/{heap['id']}/blk-bad",
        files={"file": ("x.bin", b"abc")},
        data={"hash": sha(b"abd")},
    )
    assert_error(r, 422, "hash_mismatch")
    assert not server.services.files.store_path(sha(b"abc")).exists()
    assert (await admin.post("/api/block/blk-bad")).status_code == 404
    r = await admin.post(f"/api/upload/file/{heap['id']}/blk-bad", data={"hash": sha(b"a")})
    assert_error(r, 400, "file_missing_in_form")


async def test_resumable_upload_any_order_parallel_repeated(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    data = os.urandom(CHUNK * 7 + 1234)
    h = sha(data)
    r = await admin.post(
        f"/api/upload/init/{heap['id']}/blk-r",
        json={"hash": h, "size": len(data), "chunk_size": CHUNK, "name": "r.bin"},
    )
    init = r.json()
    assert (init["status"], init["total_chunks"], init["received"]) == ("ready", 8, [])
    order = list(range(8))
    random.shuffle(order)

    async def send(i: int) -> None:
        r = await admin.put(
            f"/api/upload/chunk/{heap['id']}/blk-r/{h}/{i}",
            content=data[i * CHUNK : (i + 1) * CHUNK],
        )
        assert r.status_code == 200 and r.json()["index"] == i, r.text

    async with trio.open_nursery() as nursery:
        for i in order[:5]:
            nursery.start_soon(send, i)
    await send(order[0])  # again: idempotent
    status = (await admin.get(f"/api/upload/status/{heap['id']}/blk-r/{h}")).json()
    assert sorted(status["received"]) == sorted(order[:5]) and status["status"] == "uploading"
    r = await admin.post(f"/api/upload/complete/{heap['id']}/blk-r/{h}")
    err = assert_error(r, 409, "upload_incomplete")
    assert sorted(err["missing"]) == sorted(order[5:])
    # a wrong-size chunk is refused and changes nothing
    r = await admin.put(f"/api/upload/chunk/{heap['id']}/blk-r/{h}/{order[5]}", content=b"x")
    assert_error(r, 400, "chunk_size_mismatch")
    r = await admin.put(f"/api/upload/chunk/{heap['id']}/blk-r/{h}/99", content=b"x")
    assert_error(r, 400, "bad_chunk_index")
    for i in order[5:]:
        await send(i)
    r = await admin.post(f"/api/upload/complete/{heap['id']}/blk-r/{h}")
    assert r.status_code == 200 and r.json()["file_hash"] == h, r.text
    again = await admin.post(f"/api/upload/complete/{heap['id']}/blk-r/{h}")
    assert again.status_code == 200 and again.json()["file_id"] == r.json()["file_id"]
    assert server.services.files.store_path(h).read_bytes() == data
    assert not list(server.services.files.uploads.glob("**/*.chunk"))
    status = (await admin.get(f"/api/status/file/{heap['id']}/blk-r/{h}")).json()
    assert status["status"] == "complete"

    # the same bytes for another block: deduplicated at init, nothing to send
    dup = await admin.post(
        f"/api/upload/init/{heap['id']}/blk-r2",
        json={"hash": h, "size": len(data), "chunk_size": CHUNK, "name": "copy.bin"},
    )
    assert dup.json()["status"] == "exists"
    assert f"{h}:{len(data)}" in await files_v0(admin, "blk-r2")


async def test_wrong_hash_at_complete_stores_nothing(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    data = os.urandom(CHUNK * 2)
    liar = sha(b"something else" * 10)
    await admin.post(
        f"/api/upload/init/{heap['id']}/blk-w",
        json={"hash": liar, "size": len(data), "chunk_size": CHUNK},
    )
    for i in range(2):
        await admin.put(
            f"/api/upload/chunk/{heap['id']}/blk-w/{liar}/{i}",
            content=data[i * CHUNK : (i + 1) * CHUNK],
        )
    r = await admin.post(f"/api/upload/complete/{heap['id']}/blk-w/{liar}")
    assert_error(r, 422, "hash_mismatch")
    assert not server.services.files.store_path(liar).exists()
    assert not server.services.files.store_path(sha(data)).exists()
    assert (await admin.get(f"/api/status/file/{heap['id']}/blk-w/{liar}")).json()[
        "status"
    ] == "missing"


async def test_upload_survives_a_restart(
    admin: HeaperClient, start_server: Any, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    data = os.urandom(CHUNK * 3 + 10)
    h = sha(data)
    await admin.post(
        f"/api/upload/init/{heap['id']}/blk-s",
        json={"hash": h, "size": len(data), "chunk_size": CHUNK},
    )
    for i in (0, 2):
        await admin.put(
            f"/api/upload/chunk/{heap['id']}/blk-s/{h}/{i}",
            content=data[i * CHUNK : (i + 1) * CHUNK],
        )
    server.services.shutdown.set()
    await trio.sleep(0.2)
    again = await start_server()  # same data directory and database
    async with HeaperClient(again.url, admin.key) as client:
        await client.login()
        init = (
            await client.post(
                f"/api/upload/init/{heap['id']}/blk-s",
                json={"hash": h, "size": len(data), "chunk_size": CHUNK},
            )
        ).json()
        assert init["status"] == "ready" and init["received"] == [0, 2]
        for i in (1, 3):
            await client.put(
                f"/api/upload/chunk/{heap['id']}/blk-s/{h}/{i}",
                content=data[i * CHUNK : (i + 1) * CHUNK],
            )
        r = await client.post(f"/api/upload/complete/{heap['id']}/blk-s/{h}")
        assert r.status_code == 200, r.text
        assert again.services.files.store_path(h).read_bytes() == data


async def test_a_chunk_cut_off_mid_way_leaves_nothing(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    data = os.urandom(CHUNK * 2)
    h = sha(data)
    await admin.post(
        f"/api/upload/init/{heap['id']}/blk-c",
        json={"hash": h, "size": len(data), "chunk_size": CHUNK},
    )

    async def dribble() -> Any:
        yield data[:1000]
        await trio.sleep(0.3)
        raise httpx.ReadError("client gave up")  # the connection drops mid-body

    with pytest.raises(httpx.HTTPError):
        await admin.put(
            f"/api/upload/chunk/{heap['id']}/blk-c/{h}/0",
            content=dribble(),
            headers={"Content-Length": str(CHUNK)},
        )
    await trio.sleep(0.3)
    status = (await admin.get(f"/api/upload/status/{heap['id']}/blk-c/{h}")).json()
    assert status["received"] == []
    folder = server.services.files.uploads  # the upload's file (holes and a partial chunk)
    assert [p.name for p in folder.glob("**/*") if p.is_file()] == ["data"]


async def test_other_users_and_bad_input(
    admin: HeaperClient, eve: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    data = b"private bytes"
    h = sha(data)
    r = await eve.post(
        f"/api/upload/init/{heap['id']}/blk-e",
        json={"hash": h, "size": len(data), "chunk_size": CHUNK},
    )
    assert_error(r, 403, "heap_forbidden")
    r = await eve.post(f"/api/upload/file/{heap['id']}/blk-e", files={"file": ("a", data)})
    assert_error(r, 403, "heap_forbidden")
    await admin.post(
        f"/api/upload/init/{heap['id']}/blk-e",
        json={"hash": h, "size": len(data), "chunk_size": CHUNK},
    )
    r = await eve.put(f"/api/upload/chunk/{heap['id']}/blk-e/{h}/0", content=data)
    assert_error(r, 403, "heap_forbidden")  # the heap first: no word on its uploads
    for bad in (
        {"hash": "xyz", "size": 1, "chunk_size": 1},
        {"size": 1, "chunk_size": 1},
        {"hash": h, "size": -1, "chunk_size": 1},
        {"hash": h, "size": 1, "chunk_size": 0},
    ):
        r = await admin.post(f"/api/upload/init/{heap['id']}/blk-e", json=bad)
        assert r.status_code == 400, (bad, r.text)
    r = await admin.post(
        f"/api/upload/init/{heap['id']}/blk-e", json={"hash": h, "size": 1, "chunk_size": 10**12}
    )
    assert_error(r, 413)
    r = await admin.get(f"/api/upload/status/{heap['id']}/blk-e/not-a-hash")
    assert_error(r, 400, "bad_hash")
    r = await admin.put(f"/api/upload/chunk/{heap['id']}/blk-e/{h}/-1", content=data)
    assert_error(r, 400, "bad_chunk_index")


async def test_files_go_with_the_last_block_holding_them(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    data = b"shared content" * 100
    h = sha(data)
    for block in ("blk-1", "blk-2"):
        r = await admin.post(
            f"/api/upload/file/{heap['id']}/{block}", files={"file": ("s.txt", data)}
        )
        assert r.status_code == 200, r.text
    store = server.services.files.store_path(h)
    for block in ("blk-1", "blk-2"):
        trashed = ClientBlock(block)
        pulled = (
            await admin.post("/api/sync/pull", json={"blocks": [{"block_id": block}]})
        ).json()["blocks"][0]
        trashed.doc.apply_update(base64.b64decode(pulled["update"]))
        trashed.synced = trashed.doc.get_state()
        trashed.meta["deleted_at"] = 1_700_000_000_000
        await push(admin, trashed.push_item(heap["id"]))
        r = await admin.delete(f"/api/trash/{heap['id']}", json={"block_ids": [block]})
        assert r.json()["deleted"] == [block]
        assert store.exists() == (block == "blk-1"), block  # blk-2 still held it
    assert await server.services.storage.get_file(h) is None


async def test_abandoned_uploads_expire(admin: HeaperClient, server: RunningServer) -> None:
    import time

    heap = await new_heap(admin)
    data = os.urandom(CHUNK * 2)
    h = sha(data)
    init = (
        await admin.post(
            f"/api/upload/init/{heap['id']}/blk-x",
            json={"hash": h, "size": len(data), "chunk_size": CHUNK},
        )
    ).json()
    await admin.put(f"/api/upload/chunk/{heap['id']}/blk-x/{h}/0", content=data[:CHUNK])
    files = server.services.files
    assert await files.expire(int(time.time() * 1000)) == 0  # not yet
    assert await files.expire(init["expires_at"] + 1) == 1
    assert not [p for p in files.uploads.glob("**/*") if p.is_file()]
    r = await admin.put(f"/api/upload/chunk/{heap['id']}/blk-x/{h}/1", content=data[CHUNK:])
    assert_error(r, 404, "upload_not_found")
