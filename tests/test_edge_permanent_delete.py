"""``meta_v0.permanently_deleted_at`` set by a client edit (HTTP push or live ``/ws``) means
gone for good, exactly as if the trash had been emptied: out of the trash list, a tombstone in
delta and changed_blocks, files freed unless another block holds them. On both engines."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.protocol import messages as m

from .conftest import assert_error
from .live_client import live_client
from .test_sync import ClientBlock, new_heap, push


def now_ms() -> int:
    return int(time.time() * 1000)


async def upload(client: HeaperClient, heap_id: str, block_id: str, data: bytes) -> None:
    r = await client.post(f"/api/upload/file/{heap_id}/{block_id}", files={"file": ("f.bin", data)})
    assert r.status_code == 200, r.text


async def pulled(client: HeaperClient, block_id: str) -> dict[str, Any]:
    r = await client.post("/api/sync/pull", json={"blocks": [{"block_id": block_id}]})
    return dict(r.json()["blocks"][0])


async def as_client(client: HeaperClient, block_id: str) -> ClientBlock:
    """The block as a client holds it after pulling it: edits from here are pending."""
    block = ClientBlock(block_id)
    block.doc.apply_update(base64.b64decode((await pulled(client, block_id))["update"]))
    block.synced = block.doc.get_state()
    return block


async def marker(client: HeaperClient, heap_id: str) -> int:
    r = await client.get("/api/sync/delta", params={"workspace_id": heap_id})
    return int(r.json()["server_time"])


async def test_a_pushed_permanent_delete_purges_like_emptying_the_trash(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    only, shared = b"held by one block" * 50, b"held by two blocks" * 50
    await upload(admin, heap["id"], "blk-trashed", only)
    for block_id in ("blk-direct", "blk-keep"):
        await upload(admin, heap["id"], block_id, shared)
    trashed = await as_client(admin, "blk-trashed")
    trashed.meta["deleted_at"] = now_ms()
    await push(admin, trashed.push_item(heap["id"]))
    trashed.synced = trashed.doc.get_state()
    listed = (await admin.get(f"/api/trash/{heap['id']}")).json()["blocks"]
    assert [b["block_id"] for b in listed] == ["blk-trashed"]

    since = await marker(admin, heap["id"])
    direct = await as_client(admin, "blk-direct")  # never in the trash
    fresh = ClientBlock()  # a new block created already gone
    fresh.write("Born gone")
    for block in (trashed, direct, fresh):
        block.meta["permanently_deleted_at"] = now_ms()
    r = await push(
        admin,
        trashed.push_item(heap["id"]),
        direct.push_item(heap["id"]),
        fresh.push_item(heap["id"]),
    )
    assert [b["status"] for b in r.json()["blocks"]] == ["ok", "ok", "created"]

    gone = {"blk-trashed", "blk-direct", fresh.id}
    assert (await admin.get(f"/api/trash/{heap['id']}")).json()["blocks"] == []
    delta = (
        await admin.get("/api/sync/delta", params={"workspace_id": heap["id"], "since": since})
    ).json()
    assert {d["block_id"] for d in delta["deleted_blocks"]} == gone
    assert not gone & {c["block_id"] for c in delta["changed_blocks"]}
    changed = (
        await admin.post("/api/heap/changed_blocks", json={"heap_id": heap["id"], "marker": since})
    ).json()
    assert {d["block_id"] for d in changed["deleted_blocks"]} == gone
    stats = (await admin.get(f"/api/heap/stats/{heap['id']}")).json()
    assert stats["trash"] == 0 and stats["files"] == 1
    for block_id in gone:
        assert (await pulled(admin, block_id))["status"] == "deleted"
        assert_error(await admin.post(f"/api/block/{block_id}"), 404, "block_not_found")
        assert await server.services.storage.load_block(block_id) is None

    # Files go when no other block holds them.
    files = server.services.files
    assert not files.store_path(hashlib.sha256(only).hexdigest()).exists()
    assert await server.services.storage.get_file(hashlib.sha256(only).hexdigest()) is None
    assert files.store_path(hashlib.sha256(shared).hexdigest()).exists()

    # Once more on a purged block: answered like any push to a purged block.
    direct.synced = direct.doc.get_state()
    direct.meta["permanently_deleted_at"] = now_ms() + 1
    [again] = (await push(admin, direct.push_item(heap["id"]))).json()["blocks"]
    assert (again["status"], again["error"]) == ("deleted", "block_deleted")


async def test_a_permanent_delete_cleared_in_the_same_push_keeps_the_block(
    admin: HeaperClient,
) -> None:
    """The last state a push leaves decides: set then cleared again is not purged."""
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Changed my mind")
    await push(admin, block.push_item(heap["id"]))
    block.synced = block.doc.get_state()
    block.meta["permanently_deleted_at"] = now_ms()
    first = block.push_item(heap["id"])
    block.synced = block.doc.get_state()
    del block.meta["permanently_deleted_at"]
    r = await push(admin, first, block.push_item(heap["id"]))
    assert [b["status"] for b in r.json()["blocks"]] == ["ok", "ok"]
    assert (await pulled(admin, block.id))["status"] == "ok"
    got = (await admin.post(f"/api/block/{block.id}")).json()["block"]
    assert got["permanently_deleted_at"] is None


async def test_a_live_edit_setting_it_purges_and_tells_subscribers(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Live and then gone")
    await push(admin, block.push_item(heap["id"]))
    block.synced = block.doc.get_state()
    since = await marker(admin, heap["id"])
    address = f"{heap['id']}:{block.id}:v1"
    async with live_client(server.url) as a, live_client(server.url) as events:
        await events.open("events", admin.access_token)
        await events.expect(m.Authenticated)
        await events.send(
            m.Stateless("events", json.dumps({"type": "subscribe", "heap_ids": [heap["id"]]}))
        )
        assert json.loads((await events.expect(m.Stateless)).payload)["type"] == "subscribed"
        await a.sync(address, admin.access_token)
        block.meta["permanently_deleted_at"] = now_ms()
        await a.send(m.SyncUpdate(address, block.pending()))
        assert (await a.expect(m.SyncStatus)).applied
        kinds = []
        while "block.purged" not in kinds:
            evt = json.loads((await events.expect(m.Stateless)).payload)
            if evt.get("block_id") == block.id:
                kinds.append(evt["type"])
        assert kinds == ["block.deleted", "block.purged"]
    assert (await pulled(admin, block.id))["status"] == "deleted"
    delta = (
        await admin.get("/api/sync/delta", params={"workspace_id": heap["id"], "since": since})
    ).json()
    assert [d["block_id"] for d in delta["deleted_blocks"]] == [block.id]
    assert (await admin.get(f"/api/trash/{heap['id']}")).json()["blocks"] == []
    assert await server.services.storage.load_block(block.id) is None


async def test_a_failed_purge_leaves_the_edit_stored_and_the_block_in_the_trash(
    admin: HeaperClient, server: RunningServer
) -> None:
    """The commit is durable before the purge: should the purge fail, the push is still
    answered, and the block waits hidden in the trash until the trash is emptied."""
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Half gone")
    await push(admin, block.push_item(heap["id"]))
    block.synced = block.doc.get_state()
    documents = server.services.documents
    purger = documents.purger

    async def broken(heap_id: str, block_ids: list[str]) -> list[str]:
        raise OSError("disk gone")

    documents.purger = broken
    try:
        block.meta["permanently_deleted_at"] = now_ms()
        [answer] = (await push(admin, block.push_item(heap["id"]))).json()["blocks"]
    finally:
        documents.purger = purger
    assert answer["status"] == "ok"
    listed = (await admin.get(f"/api/trash/{heap['id']}")).json()["blocks"]
    assert [b["block_id"] for b in listed] == [block.id]
    r = await admin.post("/api/heap", json={"heap_id": heap["id"]})
    assert r.status_code == 200 and block.id not in {b["block_id"] for b in r.json()["blocks"]}
    emptied = (await admin.delete(f"/api/trash/{heap['id']}")).json()
    assert emptied["deleted"] == [block.id]
    assert (await pulled(admin, block.id))["status"] == "deleted"


async def test_a_purge_cut_short_is_finished_at_the_next_start(
    admin: HeaperClient, server: RunningServer
) -> None:
    """The edit is stored, then the process dies (here: the purge fails) before the purge:
    what a start runs (``HeapService.finish_purges``, from ``open_services``) removes the block
    and frees its file as emptying the trash would, and leaves other trashed blocks alone."""
    heap = await new_heap(admin)
    block, kept = ClientBlock(), ClientBlock()
    block.write("Cut short")
    kept.write("Only trashed")
    await push(admin, block.push_item(heap["id"]))
    await push(admin, kept.push_item(heap["id"]))
    data = b"bytes only this block holds"
    await upload(admin, heap["id"], block.id, data)
    block = await as_client(admin, block.id)
    kept.synced = kept.doc.get_state()
    kept.meta["deleted_at"] = now_ms()
    await push(admin, kept.push_item(heap["id"]))
    documents = server.services.documents
    purger = documents.purger

    async def died(heap_id: str, block_ids: list[str]) -> list[str]:
        raise OSError("killed between the commit and the purge")

    documents.purger = died
    try:
        block.meta["deleted_at"] = block.meta["permanently_deleted_at"] = now_ms()
        [answer] = (await push(admin, block.push_item(heap["id"]))).json()["blocks"]
    finally:
        documents.purger = purger
    assert answer["status"] == "ok"
    storage = server.services.storage
    assert await storage.marked_gone() == {heap["id"]: [block.id]}
    file_hash = hashlib.sha256(data).hexdigest()
    assert await storage.get_file(file_hash) is not None

    assert await server.services.heaps.finish_purges() == 1
    assert await storage.marked_gone() == {}
    assert (await pulled(admin, block.id))["status"] == "deleted"
    listed = (await admin.get(f"/api/trash/{heap['id']}")).json()["blocks"]
    assert [b["block_id"] for b in listed] == [kept.id]
    assert await storage.get_file(file_hash) is None
    assert await server.services.heaps.finish_purges() == 0
