"""The Heaper app's extra HTTP routes over a real server, on both engines: ``POST
/api/ydoc/update`` (add_file, add_thumbnails), ``POST /sync/upload-complete``, and the GET forms
of ``/api/heap`` and ``/api/heap/changed_blocks``."""

from __future__ import annotations

import random
from typing import Any

import pycrdt

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.protocol import messages as m

from .conftest import assert_error
from .live_client import UNCLOSED_SOCKETS, collect_closed_sockets, live_client  # noqa: F401 (autouse)
from .test_sync import ClientBlock, new_heap, push
from .test_uploads import files_v0, resumable, sha

pytestmark = [
    *UNCLOSED_SOCKETS,
]


async def new_block(client: HeaperClient, heap_id: str, title: str, kind: str = "document") -> str:
    block = ClientBlock()
    block.write(title, block_type=kind)
    r = await push(client, block.push_item(heap_id))
    assert r.json()["blocks"][0]["status"] == "created", r.text
    return block.id


async def upload(client: HeaperClient, heap_id: str, block_id: str, data: bytes, name: str) -> Any:
    r = await client.post(
        f"/api/upload/file/{heap_id}/{block_id}", files={"file": (name, data, "text/plain")}
    )
    assert r.status_code == 200, r.text
    return r.json()


async def ydoc(client: HeaperClient, **body: Any) -> Any:
    return await client.post("/api/ydoc/update", json=body)


# -- POST /api/ydoc/update: add_file ----------------------------------------------------------


async def test_add_file_records_a_readable_file_in_another_block(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = (await new_heap(admin))["id"]
    data = b"shared bytes\n" * 100
    h, key = sha(data), f"{sha(data)}:{len(data)}"
    uploaded = await upload(admin, heap, "blk-up", data, "first.txt")
    target = await new_block(admin, heap, "A page")
    address = f"block/{target}?workspaceId={heap}"
    async with live_client(server.url) as watcher:
        await watcher.sync(address, admin.access_token)
        r = await ydoc(
            admin, block_id=target, operation="add_file", file_hash=h.upper(), name="mine.txt"
        )
        assert r.status_code == 200, r.text
        assert r.json() == {
            "success": True,
            "status": "ok",
            "operation": "add_file",
            "block_id": target,
            "heap_id": heap,
            "file_hash": h,
            "file_id": uploaded["file_id"],
            "size": len(data),
        }
        # a CRDT edit like any other: live subscribers get it
        got = await watcher.expect(m.SyncUpdate, lambda x: x.address == address)
        assert got.update
    entry = (await files_v0(admin, target))[key]
    assert entry == {
        "hash": h,
        "name": "mine.txt",
        "mime_type": "text/plain",
        "file_size": len(data),
        "file_id": uploaded["file_id"],
    }
    # the block's projection has it, and the file is served through it
    assert key in (await admin.post(f"/api/block/{target}")).json()["files"]
    # again: nothing to write
    r = await ydoc(admin, block_id=target, operation="add_file", file_hash=h, name="mine.txt")
    assert r.json()["status"] == "unchanged"
    # no name: the entry keeps the caller's name; in a new entry, the file id (never the
    # stored row's name, which is its first uploader's)
    r = await ydoc(admin, block_id=target, operation="add_file", file_hash=h, heap_id=heap)
    assert r.json()["status"] == "unchanged"
    other = await new_block(admin, heap, "Another")
    r = await ydoc(admin, block_id=other, operation="add_file", file_hash=h, workspace_id=heap)
    assert r.json()["status"] == "ok"
    assert (await files_v0(admin, other))[key]["name"] == uploaded["file_id"]


async def test_add_file_refuses_what_the_caller_may_not_touch(
    admin: HeaperClient, eve: HeaperClient, server: RunningServer
) -> None:
    heap = (await new_heap(admin))["id"]
    eves_heap = (await new_heap(eve, "Eve's"))["id"]
    data = b"admin's secret\n"
    h = sha(data)
    await upload(admin, heap, "blk-secret", data, "secret.txt")
    mine = await new_block(admin, heap, "Mine")
    eves = await new_block(eve, eves_heap, "Eve's page")
    # a hash alone grants nothing: eve's block, admin's file
    r = await ydoc(eve, block_id=eves, operation="add_file", file_hash=h, name="x")
    assert_error(r, 404, "file_not_found")
    # even after claiming it in a pushed files_v0 of her own
    claim = ClientBlock()
    claim.write("claim", block_type="file")
    claim.doc.get("files_v0", type=pycrdt.Map)[f"{h}:{len(data)}"] = pycrdt.Map({"hash": h})
    await push(eve, claim.push_item(eves_heap))
    r = await ydoc(eve, block_id=eves, operation="add_file", file_hash=h, name="x")
    assert_error(r, 404, "file_not_found")
    # another user's block, an unknown one, a heap that is not the block's: alike
    for body in (
        {"block_id": mine},
        {"block_id": "no-such-block"},
        {"block_id": eves, "heap_id": heap},
    ):
        r = await ydoc(eve, operation="add_file", file_hash=sha(b"x"), **body)
        assert_error(r, 404, "block_not_found")
    r = await ydoc(admin, block_id=mine, heap_id=eves_heap, operation="add_file", file_hash=h)
    assert_error(r, 404, "block_not_found")
    assert await files_v0(eve, eves) == {}
    assert await files_v0(admin, mine) == {}
    # bytes gone from the store: not recorded anywhere
    server.services.files.store_path(h).unlink()
    r = await ydoc(admin, block_id=mine, operation="add_file", file_hash=h)
    assert_error(r, 404, "file_missing")


async def test_ydoc_update_bad_input(admin: HeaperClient) -> None:
    heap = (await new_heap(admin))["id"]
    block = await new_block(admin, heap, "Page")
    h = sha(b"anything")
    r = await ydoc(admin, block_id=block, operation="compact_all", file_hash=h)
    body = assert_error(r, 400, "unknown_operation")
    assert body["operations"] == ["add_file", "add_thumbnails"]
    assert_error(await ydoc(admin, block_id=block, operation=7), 400, "invalid_type")
    assert_error(await ydoc(admin, block_id=block), 400, "missing_field")
    assert_error(await ydoc(admin, operation="add_file", file_hash=h), 400, "missing_field")
    r = await ydoc(admin, block_id=block, operation="add_file")
    assert assert_error(r, 400, "missing_field")["field"] == "body.file_hash"
    r = await ydoc(admin, block_id=block, operation="add_file", file_hash="abc")
    assert_error(r, 400, "invalid_value")
    r = await ydoc(admin, block_id=block, operation="add_file", file_hash=h, size=3)
    assert_error(r, 400, "unknown_field")
    # fields of the other operation are unknown to this one
    r = await ydoc(
        admin, block_id=block, operation="add_file", file_hash=h, thumbnails=[{"key": "s"}]
    )
    assert_error(r, 400, "unknown_field")
    r = await ydoc(admin, block_id=block, operation="add_thumbnails", file_hash=h)
    assert_error(r, 400, "missing_field")
    for thumbs in ([], [{"key": "a b"}], [{"key": "s", "width": 2**63}], [{"type": "image"}]):
        r = await ydoc(
            admin, block_id=block, operation="add_thumbnails", file_hash=h, thumbnails=thumbs
        )
        assert r.status_code == 400, (thumbs, r.text)
    r = await admin.post("/api/ydoc/update", content=b"{not json")
    assert_error(r, 400, "invalid_json")


# -- POST /api/ydoc/update: add_thumbnails -----------------------------------------------------


async def test_add_thumbnails_records_them_on_the_file_entry(
    admin: HeaperClient, eve: HeaperClient
) -> None:
    heap = (await new_heap(admin))["id"]
    data = b"picture-ish\n" * 50
    h, key = sha(data), f"{sha(data)}:{len(data)}"
    await upload(admin, heap, "blk-pic", data, "pic.txt")
    r = await ydoc(
        admin,
        block_id="blk-pic",
        operation="add_thumbnails",
        file_hash=h,
        thumbnails=[
            {"key": "small", "width": 256, "height": 128, "mime_type": "image/webp"},
            {"key": "t1", "type": "video", "size": "tiny"},
        ],
    )
    assert r.status_code == 200, r.text
    small = {
        "type": "image",
        "size": "small",
        "width": 256,
        "height": 128,
        "mime_type": "image/webp",
    }
    t1 = {"type": "video", "size": "tiny"}
    assert r.json()["status"] == "ok" and r.json()["thumbnails"] == {"small": small, "t1": t1}
    entry = (await files_v0(admin, "blk-pic"))[key]
    assert entry["thumbnails"] == {
        "small": {**small, "width": 256.0, "height": 128.0},  # JS numbers, as Yjs reads them
        "t1": t1,
    }
    assert entry["name"] == "pic.txt"  # the rest of the entry stays
    # a key again replaces that one; others stay; the same again changes nothing
    big = {"key": "small", "size": "large"}
    r = await ydoc(
        admin, block_id="blk-pic", operation="add_thumbnails", file_hash=h, thumbnails=[big]
    )
    assert r.json()["status"] == "ok"
    assert r.json()["thumbnails"] == {"small": {"type": "image", "size": "large"}, "t1": t1}
    r = await ydoc(
        admin, block_id="blk-pic", operation="add_thumbnails", file_hash=h, thumbnails=[big]
    )
    assert r.json()["status"] == "unchanged"
    # add_file afterwards keeps the thumbnails (the entry is patched, not replaced)
    r = await ydoc(admin, block_id="blk-pic", operation="add_file", file_hash=h, name="renamed")
    assert r.json()["status"] == "ok"
    entry = (await files_v0(admin, "blk-pic"))[key]
    assert entry["name"] == "renamed" and set(entry["thumbnails"]) == {"small", "t1"}
    # a block that does not hold the file; another user's block
    page = await new_block(admin, heap, "No file here")
    thumbs = [{"key": "small"}]
    r = await ydoc(admin, block_id=page, operation="add_thumbnails", file_hash=h, thumbnails=thumbs)
    assert_error(r, 404, "file_not_found")
    assert await files_v0(admin, page) == {}
    r = await ydoc(
        eve, block_id="blk-pic", operation="add_thumbnails", file_hash=h, thumbnails=thumbs
    )
    assert_error(r, 404, "block_not_found")


# -- POST /sync/upload-complete ----------------------------------------------------------------


async def test_upload_complete_records_the_uploaded_file_idempotently(
    admin: HeaperClient, eve: HeaperClient, server: RunningServer
) -> None:
    heap = (await new_heap(admin))["id"]
    data = bytes(range(256)) * 600  # three chunks
    h, key = sha(data), f"{sha(data)}:{len(data)}"
    done = await resumable(admin, heap, "blk-res", data, name="big.bin")
    complete = done["complete"].json()
    # the upload recorded it already: the notice writes nothing and answers the same shape
    r = await admin.post("/sync/upload-complete", json={"block_id": "blk-res", "file_hash": h})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert {k: answer[k] for k in ("status", "block_id", "file_hash", "file_id")} == {
        k: complete[k] for k in ("status", "block_id", "file_hash", "file_id")
    }
    assert answer["status"] == "complete" and answer["changed"] is False
    assert answer["size"] == len(data)
    # for another block of the caller's: the file is recorded there (once)
    page = await new_block(admin, heap, "Attachment page")
    async with live_client(server.url) as events:
        await events.sync("events", admin.access_token)
        await events.send(m.Stateless("events", '{"type":"subscribe","heap_ids":[]}'))
        body = {"block_id": page, "file_hash": h, "name": "copy.bin", "heap_id": heap}
        r = await admin.post("/sync/upload-complete", json=body)
        assert r.json()["changed"] is True and r.json()["file_id"] == complete["file_id"]
        ready = await events.expect(m.Stateless, lambda x: "file.ready" in x.payload)
        assert page in ready.payload and h in ready.payload
    assert (await files_v0(admin, page))[key]["name"] == "copy.bin"
    r = await admin.post("/sync/upload-complete", json=body)
    assert r.json()["changed"] is False and r.json()["status"] == "complete"

    # bytes the server does not hold, a file that is not the caller's, a block that is not
    r = await admin.post("/sync/upload-complete", json={"block_id": page, "file_hash": sha(b"?")})
    assert_error(r, 404, "file_not_found")
    eves_heap = (await new_heap(eve, "Eve's"))["id"]
    eves = await new_block(eve, eves_heap, "Eve's")
    r = await eve.post("/sync/upload-complete", json={"block_id": eves, "file_hash": h})
    assert_error(r, 404, "file_not_found")
    r = await eve.post("/sync/upload-complete", json={"block_id": page, "file_hash": h})
    assert_error(r, 404, "block_not_found")
    r = await admin.post("/sync/upload-complete", json={"block_id": page})
    assert_error(r, 400, "missing_field")
    r = await admin.post("/sync/upload-complete", json={"block_id": page, "file_hash": h, "x": 1})
    assert_error(r, 400, "unknown_field")
    assert (await admin.post("/sync/upload-complete", content=b"")).status_code == 400
    # an upload still under way: its bytes are not held yet
    partial = b"z" * 70_000
    r = await admin.post(
        f"/api/upload/init/{heap}/blk-part",
        json={"hash": sha(partial), "size": len(partial), "chunk_size": 65536, "name": "p"},
    )
    assert r.json()["status"] == "ready"
    r = await admin.post(
        "/sync/upload-complete", json={"block_id": page, "file_hash": sha(partial)}
    )
    assert_error(r, 404, "file_not_found")


# -- GET /api/heap and GET /api/heap/changed_blocks --------------------------------------------


async def test_get_heap_is_the_post_query_in_the_query_string(
    admin: HeaperClient, eve: HeaperClient
) -> None:
    heap = (await new_heap(admin))["id"]
    ids = [await new_block(admin, heap, f"Entry {i}", "document") for i in range(4)]
    tag = await new_block(admin, heap, "A tag", "tag")
    ids.append(tag)

    async def both(params: dict[str, Any], body: dict[str, Any]) -> list[str]:
        got = await admin.get("/api/heap", params=params)
        posted = await admin.post("/api/heap", json=body)
        assert got.status_code == posted.status_code == 200, (got.text, posted.text)
        assert got.json() == posted.json()
        return [b["id"] for b in got.json()["blocks"]]

    everything = await both({"heap_id": heap}, {"heap_id": heap})
    # newest first by default (the root index block is the oldest)
    assert everything[: len(ids)] == list(reversed(ids))
    assert await both({"workspace_id": heap, "type": "tag"}, {"heap_id": heap, "type": "tag"}) == [
        tag
    ]
    two = [("heap_id", heap), ("type", "tag"), ("type", "index")]
    assert len(await both(two, {"heap_id": heap, "type": ["tag", "index"]})) == 2  # type: ignore[arg-type]
    assert (
        await both(
            {"heap_id": heap, "query": "entry", "sort": "created", "order": "asc"},
            {"heap_id": heap, "query": "entry", "sort": "created", "order": "asc"},
        )
        == ids[:4]
    )
    assert await both({"heap_id": heap, "trash": "true"}, {"heap_id": heap, "trash": True}) == []
    assert len(await both({"heap_id": heap, "in_trash": "0"}, {"heap_id": heap})) == 6
    # pages: limit and the cursor handed out
    r = (await admin.get("/api/heap", params={"heap_id": heap, "limit": 2})).json()
    assert [b["id"] for b in r["blocks"]] == everything[:2] and r["has_more"]
    r = await admin.get(
        "/api/heap", params={"heap_id": heap, "limit": "2", "cursor": r["next_cursor"]}
    )
    assert [b["id"] for b in r.json()["blocks"]] == everything[2:4]

    # integers and booleans are held to the JSON fields' rules
    for params, code in (
        ({"limit": str(2**63)}, "invalid_value"),
        ({"limit": str(2**64 + 1)}, "invalid_value"),
        ({"limit": "-1"}, "invalid_value"),
        ({"limit": "0"}, "invalid_value"),
        ({"limit": "ten"}, "invalid_value"),
        ({"limit": "1.5"}, "invalid_value"),
        ({"limit": "٣"}, "invalid_value"),
        ({"limit": ""}, "invalid_value"),
        ({"trash": "yes"}, "invalid_value"),
        ({"order": "sideways"}, "invalid_value"),
        ({"sort": "size"}, "invalid_value"),
        ({"cursor": "garbage"}, "invalid_cursor"),
        ({"heap": heap}, "unknown_field"),
        ({"tag": "a/b"}, "invalid_value"),
        ({"query": "a\x00b"}, "invalid_value"),
        ({"query": "word " * 41}, "invalid_value"),  # the GET form's bound (POST: 1000)
        ({"cursor": "c" * 2049}, "invalid_value"),
    ):
        r = await admin.get("/api/heap", params={"heap_id": heap, **params})
        assert_error(r, 400, code)
    r = await admin.get("/api/heap", params=[("heap_id", heap), ("limit", "1"), ("limit", "2")])
    assert_error(r, 400, "invalid_value")
    r = await admin.get("/api/heap", params={"type": "tag"})
    assert assert_error(r, 400, "missing_field")["field"] == "query.heap_id"
    assert_error(await eve.get("/api/heap", params={"heap_id": heap}), 403, "heap_forbidden")
    assert_error(await admin.get("/api/heap", params={"heap_id": "x" * 200}), 400, "invalid_value")


async def test_get_changed_blocks_is_the_post_feed(admin: HeaperClient, eve: HeaperClient) -> None:
    heap = (await new_heap(admin))["id"]
    start = (await admin.post("/api/heap/changed_blocks", json={"heap_id": heap})).json()
    ids = [await new_block(admin, heap, f"Changed {i}") for i in range(3)]

    async def both(params: dict[str, Any]) -> dict[str, Any]:
        got = await admin.get("/api/heap/changed_blocks", params=params)
        body = {k: int(v) if k in ("marker", "since", "limit") else v for k, v in params.items()}
        posted = await admin.post("/api/heap/changed_blocks", json=body)
        assert got.status_code == posted.status_code == 200, (got.text, posted.text)
        assert got.json() == posted.json()
        return dict(got.json())

    since = await both({"heap_id": heap, "marker": str(start["next_marker"])})
    assert {b["block_id"] for b in since["changed_blocks"]} == set(ids)
    assert since["has_more"] is False
    page = await both({"workspace_id": heap, "since": "0", "limit": "2"})
    assert len(page["changed_blocks"]) == 2 and page["has_more"] is True
    rest = await both({"workspace_id": heap, "marker": str(page["next_marker"])})
    seen = {b["block_id"] for b in page["changed_blocks"] + rest["changed_blocks"]}
    assert set(ids) <= seen
    for params in (
        {"marker": str(2**63)},
        {"marker": "-5"},
        {"since": "yesterday"},
        {"limit": "1001"},
        {"limit": "0"},
        {"cursor": "1"},
    ):
        r = await admin.get("/api/heap/changed_blocks", params={"heap_id": heap, **params})
        assert_error(r, 400, "unknown_field" if "cursor" in params else "invalid_value")
    r = await admin.get("/api/heap/changed_blocks")
    assert_error(r, 400, "missing_field")
    r = await eve.get("/api/heap/changed_blocks", params={"heap_id": heap})
    assert_error(r, 403, "heap_forbidden")


async def test_get_heap_answers_as_post_for_random_filters(admin: HeaperClient) -> None:
    """Random combinations of every filter, sort, order and limit: the GET form's answer is
    the POST form's, page after page (seeded, so a failure repeats)."""
    heap = (await new_heap(admin))["id"]
    tag = await new_block(admin, heap, "Topic", "tag")
    for i in range(6):
        block = ClientBlock()
        block.write(f"Item {i} alpha" if i % 2 else f"Item {i} beta", "body" if i % 3 else "")
        block.meta["type"] = "document" if i % 2 else "note"
        if i % 2:
            block.tag_with(tag)
        assert (await push(admin, block.push_item(heap))).status_code == 200
    rnd = random.Random(10)
    choices: dict[str, list[Any]] = {
        "type": ["document", "note", "tag", ["document", "note"], ["tag", "index"]],
        "tag": [tag],
        "query": ["alpha", "item", "beta body", "nothing"],
        "unlinked": [True, False],
        "has_content": [True, False],
        "trash": [False],
        "sort": ["created", "updated", "title"],
        "order": ["asc", "desc"],
        "limit": [1, 2, 5, 100],
    }
    found = pages = 0
    for _ in range(25):
        body: dict[str, Any] = {"heap_id": heap}
        for name in rnd.sample(sorted(choices), rnd.randint(0, 4)):
            body[name] = rnd.choice(choices[name])
        params: list[tuple[str, str]] = []
        for name, value in body.items():
            for one in value if isinstance(value, list) else [value]:
                params.append((name, str(one).lower() if isinstance(one, bool) else str(one)))
        for _page in range(3):
            got = await admin.get("/api/heap", params=params)
            posted = await admin.post("/api/heap", json=body)
            assert got.status_code == posted.status_code == 200, (body, got.text)
            assert got.json() == posted.json(), body
            found += bool(got.json()["blocks"])
            cursor = got.json()["next_cursor"]
            if cursor is None:
                break
            pages += 1
            body["cursor"] = cursor
            params = [p for p in params if p[0] != "cursor"] + [("cursor", cursor)]
    assert found > 10 and pages > 3, (found, pages)  # the combinations found things, and paged
