"""Knowing a hash never hands over a file (issue 9, item 2), over real HTTP on both engines.

A block's ``files_v0`` is whatever its owner pushed: a claim. A user reads a file (raw, stream,
thumbnails, client thumbnails), gets init's ``exists`` or a ``complete`` status with its file id
only when a block of theirs holds it AND the server verified the bytes from them (a grant) or a
scan of theirs hashed them. Grants go with the file's row; migration 0007 grants the owners of
the stored files existing blocks held before it.
"""

from __future__ import annotations

import base64
import io
import os
from typing import Any

import pycrdt
import trio
from PIL import Image

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.storage.base import Storage

from .conftest import assert_error
from .test_sync import ClientBlock, new_heap, push
from .test_uploads import CHUNK, resumable, sha


def picture() -> bytes:
    """A PNG of random pixels (thumbnails work on it), bigger than one chunk."""
    out = io.BytesIO()
    Image.frombytes("RGB", (160, 160), os.urandom(160 * 160 * 3)).save(out, "PNG")
    assert len(out.getvalue()) > CHUNK
    return out.getvalue()


async def claim(
    client: HeaperClient, heap_id: str, h: str, size: int, file_id: str | None = None
) -> str:
    """Push a new block of the client's whose files_v0 names the hash, as a Yjs client would
    write it; return the block id."""
    block = ClientBlock()
    block.write("claimed", block_type="file")
    with block.doc.transaction():
        files = block.doc.get("files_v0", type=pycrdt.Map)
        files[f"{h}:{size}"] = pycrdt.Map(
            {
                "hash": h,
                "name": "x.png",
                "file_size": size,
                "mime_type": "image/png",
                **({"file_id": file_id} if file_id else {}),
            }
        )
    r = await push(client, block.push_item(heap_id))
    assert r.status_code == 200 and r.json()["blocks"][0]["status"] == "created", r.text
    return block.id


def read_paths(key: str) -> list[str]:
    return [
        f"/api/file/{key}/raw/x.png",
        f"/api/stream/{key}/x.png",
        f"/api/file/{key}/thumbnail/small/x.png",
    ]


async def assert_unreadable(client: HeaperClient, h: str, file_id: str) -> None:
    for key in (h, file_id):
        for path in read_paths(key):
            assert_error(await client.get(path), 404, "file_not_found")


async def assert_readable(client: HeaperClient, h: str, file_id: str, data: bytes) -> None:
    for key in (h, file_id):
        r = await client.get(f"/api/file/{key}/raw/x.png")
        assert r.status_code == 200 and r.content == data, r.text[:200]
        r = await client.get(f"/api/file/{key}/thumbnail/small/x.png")
        assert r.status_code == 200 and r.headers["content-type"] == "image/webp", r.text[:200]


async def statuses(client: HeaperClient, heap_id: str, block_id: str, h: str) -> list[Any]:
    return [
        (await client.get(f"{route}/{heap_id}/{block_id}/{h}")).json()
        for route in ("/api/upload/status", "/api/status/file")
    ]


async def client_thumbnail(client: HeaperClient, block_id: str, h: str) -> Any:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "PNG")
    return await client.post(
        f"/api/upload/thumbnail/{block_id}/{h}/small",
        files={"thumbnail": ("t.png", out.getvalue())},
    )


async def test_a_pushed_claim_reads_nothing_until_the_bytes_are_sent(
    admin: HeaperClient, eve: HeaperClient, server: RunningServer
) -> None:
    data = picture()
    h = sha(data)
    mine = await new_heap(admin)
    r = await admin.post(
        f"/api/upload/file/{mine['id']}/blk-a", files={"file": ("secret.png", data, "image/png")}
    )
    assert r.status_code == 200, r.text
    file_id = r.json()["file_id"]
    await assert_readable(admin, h, file_id, data)

    theirs = await new_heap(eve)
    block_id = await claim(eve, theirs["id"], h, len(data), file_id)
    await assert_unreadable(eve, h, file_id)
    for answer in await statuses(eve, theirs["id"], block_id, h):
        assert answer["status"] == "missing" and file_id not in str(answer), answer
        assert "size" not in answer
    assert_error(await client_thumbnail(eve, block_id, h), 404, "file_not_found")
    assert_error(
        await eve.get(f"/api/download/thumbnail/{block_id}/{h}/image/small"), 404, "file_not_found"
    )
    assert_error(
        await eve.post("/api/regenerate_file", json={"file_hash": h}), 404, "file_not_found"
    )
    # init on the claiming block: the bytes have to travel
    r = await eve.post(
        f"/api/upload/init/{theirs['id']}/{block_id}",
        json={"hash": h, "size": len(data), "chunk_size": CHUNK, "name": "x.png"},
    )
    assert r.status_code == 200 and r.json()["status"] == "ready", r.text
    assert file_id not in r.text
    await assert_readable(admin, h, file_id, data)  # the owner is not affected

    # eve sends the very bytes: verified, so now they are hers to read too
    for i in range(r.json()["total_chunks"]):
        r = await eve.put(
            f"/api/upload/chunk/{theirs['id']}/{block_id}/{h}/{i}",
            content=data[i * CHUNK : (i + 1) * CHUNK],
        )
        assert r.status_code == 200, r.text
    r = await eve.post(f"/api/upload/complete/{theirs['id']}/{block_id}/{h}")
    assert r.status_code == 200 and r.json()["status"] == "complete", r.text
    assert r.json()["file_id"] == file_id  # one copy in the store
    await assert_readable(eve, h, file_id, data)
    for answer in await statuses(eve, theirs["id"], block_id, h):
        assert (answer["status"], answer["file_id"]) == ("complete", file_id), answer
    r = await client_thumbnail(eve, block_id, h)
    assert r.status_code == 200, r.text
    r = await eve.post(
        f"/api/upload/init/{theirs['id']}/blk-e2",
        json={"hash": h, "size": len(data), "chunk_size": CHUNK, "name": "again.png"},
    )
    assert r.status_code == 200 and r.json()["status"] == "exists", r.text
    await assert_readable(admin, h, file_id, data)


async def trash_for_good(client: HeaperClient, heap_id: str, block_id: str) -> None:
    trashed = ClientBlock(block_id)
    pulled = (
        await client.post("/api/sync/pull", json={"blocks": [{"block_id": block_id}]})
    ).json()["blocks"][0]
    trashed.doc.apply_update(base64.b64decode(pulled["update"]))
    trashed.synced = trashed.doc.get_state()
    trashed.meta["deleted_at"] = 1_700_000_000_000
    await push(client, trashed.push_item(heap_id))
    r = await client.delete(f"/api/trash/{heap_id}", json={"block_ids": [block_id]})
    assert r.json()["deleted"] == [block_id], r.text


async def test_grants_go_with_the_file_row(
    admin: HeaperClient, eve: HeaperClient, server: RunningServer
) -> None:
    """Once no block holds a file, its row and every proof of it go: bytes stored again later
    are nobody's until sent again (here: a direct upload proves them)."""
    data = picture()
    h = sha(data)
    mine, theirs = await new_heap(admin), await new_heap(eve)
    r = await admin.post(
        f"/api/upload/file/{mine['id']}/blk-1", files={"file": ("a.png", data, "image/png")}
    )
    assert r.status_code == 200, r.text
    await trash_for_good(admin, mine["id"], "blk-1")
    assert await server.services.storage.get_file(h) is None

    r = await eve.post(
        f"/api/upload/file/{theirs['id']}/blk-e",
        files={"file": ("e.png", data, "image/png")},
        data={"hash": h},
    )
    assert r.status_code == 200, r.text
    file_id = r.json()["file_id"]
    await assert_readable(eve, h, file_id, data)
    await claim(admin, mine["id"], h, len(data))
    await assert_unreadable(admin, h, file_id)
    r = await admin.post(
        f"/api/upload/init/{mine['id']}/blk-2",
        json={"hash": h, "size": len(data), "chunk_size": CHUNK, "name": "x.png"},
    )
    assert r.status_code == 200 and r.json()["status"] == "ready", r.text
    assert (await resumable(admin, mine["id"], "blk-2", data))["complete"].status_code == 200
    await assert_readable(admin, h, file_id, data)


async def raw_sql(storage: Storage, *statements: str) -> None:
    """Statements in one transaction, on either engine (a test reaching under the API)."""
    if storage.engine == "sqlite":
        await storage.rt.write(  # type: ignore[attr-defined]
            lambda c: [c.execute(s) for s in statements]
        )
        return
    from heaper_trio.storage.postgres.runtime import tx

    async def run(c: Any) -> None:
        for s in statements:
            await c.execute(s)

    await storage._run(tx, run)  # type: ignore[attr-defined]


async def test_the_upgrade_grants_stored_files_to_their_holders(
    admin: HeaperClient, eve: HeaperClient, server: RunningServer, start_server: Any
) -> None:
    """A database from before 0007 (no grants): the owners of blocks holding stored files keep
    reading them; a claim of bytes the server did not have gets nothing when they come."""
    data, later = picture(), picture()
    h, h_later = sha(data), sha(later)
    mine, theirs = await new_heap(admin), await new_heap(eve)
    r = await admin.post(
        f"/api/upload/file/{mine['id']}/blk-1", files={"file": ("a.png", data, "image/png")}
    )
    assert r.status_code == 200, r.text
    file_id = r.json()["file_id"]
    await claim(eve, theirs["id"], h_later, len(later))  # nothing stored with this hash yet
    await raw_sql(
        server.services.storage,
        "DROP TABLE file_grants",
        "DELETE FROM schema_migrations WHERE version = 7",
    )
    server.services.shutdown.set()
    await trio.sleep(0.2)

    again = await start_server()  # same data directory and database: 0007 runs for real
    assert await again.services.storage.schema_version() >= 7
    async with HeaperClient(again.url, admin.key) as a, HeaperClient(again.url, eve.key) as e:
        await a.login()
        await e.login()
        await assert_readable(a, h, file_id, data)
        r = await a.post(
            f"/api/upload/file/{mine['id']}/blk-2", files={"file": ("b.png", later, "image/png")}
        )
        assert r.status_code == 200, r.text
        await assert_readable(a, h_later, r.json()["file_id"], later)
        await assert_unreadable(e, h_later, r.json()["file_id"])
