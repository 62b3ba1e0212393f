"""Trash, heap deletion and statistics, block history, change markers; on both engines."""

from __future__ import annotations

import time
from typing import Any

import pycrdt

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient

from .conftest import assert_error
from .test_sync import ClientBlock, b64, new_heap, push, unb64


def trash(block: ClientBlock) -> None:
    with block.doc.transaction():
        block.meta["deleted_at"] = int(time.time() * 1000)


async def test_trash_restore_and_empty(admin: HeaperClient, server: RunningServer) -> None:
    heap = await new_heap(admin)
    keep, gone = ClientBlock(), ClientBlock()
    keep.write("Keep me", "body")
    gone.write("Gone", "body")
    await push(admin, keep.push_item(heap["id"]), gone.push_item(heap["id"]))
    for b in (keep, gone):
        b.synced = b.doc.get_state()
        trash(b)
    await push(admin, keep.push_item(heap["id"]), gone.push_item(heap["id"]))

    listed = (await admin.get(f"/api/trash/{heap['id']}")).json()
    assert {b["block_id"] for b in listed["blocks"]} == {keep.id, gone.id}
    stats = (await admin.get(f"/api/heap/stats/{heap['id']}")).json()
    assert stats["trash"] == 2 and stats["by_type"] == {"index": 1}

    # Restore is a CRDT edit: the client pulls it like any other change.
    r = (await admin.post(f"/api/trash/{heap['id']}/restore", json={"block_ids": [keep.id]})).json()
    assert r["restored"] == [keep.id]
    again = (
        await admin.post(f"/api/trash/{heap['id']}/restore", json={"block_id": keep.id})
    ).json()
    assert again["blocks"] == [{"block_id": keep.id, "status": "unchanged"}]
    [pulled] = (
        await admin.post(
            "/api/sync/pull",
            json={"blocks": [{"block_id": keep.id, "state_vector": b64(keep.doc.get_state())}]},
        )
    ).json()["blocks"]
    keep.doc.apply_update(unb64(pulled["update"]))
    assert "deleted_at" not in keep.meta
    got = (await admin.post(f"/api/block/{keep.id}")).json()
    assert got["block"]["deleted_at"] is None

    before = (await admin.get("/api/sync/delta", params={"workspace_id": heap["id"]})).json()
    emptied = (await admin.delete(f"/api/trash/{heap['id']}")).json()
    assert emptied["deleted"] == [gone.id]
    assert (await admin.get(f"/api/trash/{heap['id']}")).json()["blocks"] == []
    # Gone for good: delta reports it, pull marks it, push refuses it, reads 404.
    delta = (
        await admin.get(
            "/api/sync/delta", params={"workspace_id": heap["id"], "since": before["server_time"]}
        )
    ).json()
    assert [d["block_id"] for d in delta["deleted_blocks"]] == [gone.id]
    assert delta["deleted_blocks"][0]["deleted_at"] > before["server_time"]
    [pulled] = (
        await admin.post("/api/sync/pull", json={"blocks": [{"block_id": gone.id}]})
    ).json()["blocks"]
    assert pulled["status"] == "deleted" and pulled["deleted"] is True
    gone.write("again")
    [pushed] = (await push(admin, gone.push_item(heap["id"]))).json()["blocks"]
    assert pushed["status"] == "deleted"
    assert_error(await admin.post(f"/api/block/{gone.id}"), 404, "block_not_found")
    assert await server.services.storage.load_block(gone.id) is None
    assert (await server.services.storage.block_history(gone.id)) == (0, [])


async def test_emptying_only_takes_trashed_blocks(admin: HeaperClient) -> None:
    heap = await new_heap(admin)
    live = ClientBlock()
    live.write("Live")
    await push(admin, live.push_item(heap["id"]))
    r = (await admin.delete(f"/api/trash/{heap['id']}")).json()
    assert r["deleted"] == []
    r = await admin.delete(
        f"/api/trash/{heap['id']}", json={"block_ids": [live.id, heap["root_block_id"]]}
    )
    assert r.json()["deleted"] == []
    assert (await admin.post(f"/api/block/{live.id}")).status_code == 200


async def test_block_history(admin: HeaperClient) -> None:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("v1")
    await push(admin, block.push_item(heap["id"]))
    block.synced = block.doc.get_state()
    with block.doc.transaction():
        block.meta["x"] = 1
    await push(admin, block.push_item(heap["id"]))
    h = (await admin.post(f"/api/block_updates/{block.id}")).json()
    assert [u["seq"] for u in h["updates"]] == [1, 2]
    assert all(u["author_id"] == admin.user_id and u["size"] > 0 for u in h["updates"])
    assert h["updates"][0]["created_at"] <= h["updates"][1]["created_at"]
    doc = pycrdt.Doc()
    doc.apply_update(unb64(h["state"]))
    assert doc.get("meta_v0", type=pycrdt.Map)["x"] == 1
    assert_error(await admin.post("/api/block_updates/nope"), 404, "block_not_found")


async def test_changed_blocks_markers(admin: HeaperClient) -> None:
    heap = await new_heap(admin)
    first = (await admin.post("/api/heap/changed_blocks", json={"heap_id": heap["id"]})).json()
    assert [c["block_id"] for c in first["changed_blocks"]] == [heap["root_block_id"]]
    block = ClientBlock()
    block.write("new")
    await push(admin, block.push_item(heap["id"]))
    nxt = (
        await admin.post(
            "/api/heap/changed_blocks",
            json={"workspace_id": heap["id"], "marker": first["next_marker"]},
        )
    ).json()
    assert [c["block_id"] for c in nxt["changed_blocks"]] == [block.id]
    assert nxt["next_marker"] > first["next_marker"]
    assert_error(await admin.post("/api/heap/changed_blocks", json={}), 400, "missing_field")


async def test_delete_heap(admin: HeaperClient, server: RunningServer) -> None:
    heap = await new_heap(admin)
    other = await new_heap(admin, "Other")
    block = ClientBlock()
    block.write("inside")
    await push(admin, block.push_item(heap["id"]))
    r = await admin.delete(f"/api/heap/{heap['id']}")
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert [h["id"] for h in (await admin.post("/api/heaps")).json()["heaps"]] == [other["id"]]
    assert_error(await admin.get("/api/sync/delta", params={"workspace_id": heap["id"]}), 403)
    assert await server.services.storage.load_block(block.id) is None
    assert_error(await admin.delete(f"/api/heap/{heap['id']}"), 403, "heap_forbidden")


async def test_stats(admin: HeaperClient) -> None:
    heap = await new_heap(admin)
    doc_block, tag_block = ClientBlock(), ClientBlock()
    doc_block.write("d")
    tag_block.write("t", block_type="tag")
    with doc_block.doc.transaction():
        files = doc_block.doc.get("files_v0", type=pycrdt.Map)
        files["abc:10"] = pycrdt.Map({"hash": "abc", "file_size": 10, "name": "a.txt"})
        files["def:5"] = pycrdt.Map({"hash": "def", "file_size": 5, "name": "b.txt"})
    await push(admin, doc_block.push_item(heap["id"]), tag_block.push_item(heap["id"]))
    s = (await admin.get(f"/api/heap/stats/{heap['id']}")).json()
    assert s["by_type"] == {"index": 1, "document": 1, "tag": 1} and s["blocks"] == 3
    assert (s["files"], s["file_bytes"], s["trash"]) == (2, 15, 0)
    assert s["last_change"] >= heap["created_at"] and s["name"] == "Notes"


async def test_other_users_get_403_everywhere(admin: HeaperClient, eve: HeaperClient) -> None:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("mine")
    trash(block)
    await push(admin, block.push_item(heap["id"]))
    hid = heap["id"]
    attempts: list[Any] = [
        await eve.get(f"/api/trash/{hid}"),
        await eve.delete(f"/api/trash/{hid}"),
        await eve.post(f"/api/trash/{hid}/restore", json={"block_ids": [block.id]}),
        await eve.get(f"/api/heap/stats/{hid}"),
        await eve.delete(f"/api/heap/{hid}"),
        await eve.post("/api/heap/changed_blocks", json={"heap_id": hid}),
    ]
    for r in attempts:
        assert_error(r, 403, "heap_forbidden")
    assert_error(await eve.post(f"/api/block_updates/{block.id}"), 404, "block_not_found")
    assert_error(await eve.get("/api/trash/no-such-heap"), 403, "heap_forbidden")
    # nothing changed for the owner
    assert [b["block_id"] for b in (await admin.get(f"/api/trash/{hid}")).json()["blocks"]] == [
        block.id
    ]
    assert_error(
        await admin.post(f"/api/trash/{hid}/restore", json={"block_ids": ["a b"]}),
        400,
        "invalid_value",
    )
