"""Heap contents and counts: filters, nested tags, full-text search, sorts, cursors."""

from __future__ import annotations

import secrets
import time
from typing import Any

from heaper_trio.client import HeaperClient

from .conftest import assert_error
from .test_sync import ClientBlock, new_heap, push


async def build(admin: HeaperClient) -> tuple[dict[str, Any], dict[str, ClientBlock]]:
    """A heap: tag tree projects > work, notes tagged at each level, one untagged, one
    trashed, one empty."""
    heap = await new_heap(admin)
    b = {
        name: ClientBlock()
        for name in ("projects", "work", "plan", "report", "loose", "binned", "empty")
    }
    b["projects"].write("Projects", block_type="tag")
    b["work"].write("Work", block_type="tag")
    b["work"].tag_with(b["projects"].id)
    b["plan"].write("Quarterly plan", "Grüße from the planning meeting")
    b["plan"].tag_with(b["projects"].id)
    b["report"].write("Annual report", "revenue grew; planning continues")
    b["report"].tag_with(b["work"].id)
    b["loose"].write("Loose thought", "unfiled idea")
    b["binned"].write("Old plan", "planning that was dropped")
    b["binned"].tag_with(b["work"].id)
    with b["binned"].doc.transaction():
        b["binned"].meta["deleted_at"] = int(time.time() * 1000)
    b["empty"].write("Empty note")
    await push(admin, *(x.push_item(heap["id"]) for x in b.values()))
    return heap, b


async def ids(admin: HeaperClient, heap: dict[str, Any], **filters: Any) -> list[str]:
    r = await admin.post("/api/heap", json={"heap_id": heap["id"], **filters})
    assert r.status_code == 200, r.text
    return [x["block_id"] for x in r.json()["blocks"]]


async def test_filters(admin: HeaperClient) -> None:
    heap, b = await build(admin)
    name = {v.id: k for k, v in b.items()} | {heap["root_block_id"]: "root"}

    async def names(**f: Any) -> set[str]:
        return {name[i] for i in await ids(admin, heap, **f)}

    assert await names() == {"root", "projects", "work", "plan", "report", "loose", "empty"}
    assert await names(type="tag") == {"projects", "work"}
    assert await names(type=["tag", "index"]) == {"projects", "work", "root"}
    # nested: report is tagged "work", which is tagged "projects"
    assert await names(tag=b["projects"].id) == {"work", "plan", "report"}
    assert await names(tag=b["work"].id) == {"report"}  # binned is in the trash
    assert await names(unlinked=True) == {"projects", "loose", "empty"}
    assert await names(has_content=True) == {"plan", "report", "loose"}
    assert await names(has_content=False, type="document") == {"empty"}
    assert await names(trash=True) == {"binned"}
    assert await names(in_trash=True) == {"binned"}


async def test_full_text(admin: HeaperClient) -> None:
    heap, b = await build(admin)
    name = {v.id: k for k, v in b.items()}

    async def search(q: str, **f: Any) -> set[str]:
        return {name.get(i, "root") for i in await ids(admin, heap, query=q, **f)}

    assert await search("planning") == {"plan", "report"}  # binned is trashed
    assert await search("plan") == {"plan", "report"}  # prefixes match
    assert await search("PLANNING revenue") == {"report"}  # every word, any case
    assert await search("grüße") == {"plan"}
    assert await search("annual") == {"report"}  # titles too
    assert await search("planning", trash=True) == {"binned"}
    assert await search("nothing-like-this") == set()
    assert await search('"; DROP TABLE blocks; --') == set()
    assert await search("*") == await search("")  # no words: no text filter


async def test_sorts_and_cursors(admin: HeaperClient) -> None:
    heap = await new_heap(admin)
    blocks = [ClientBlock() for _ in range(7)]
    for i, blk in enumerate(blocks):
        blk.write(["delta", "alpha", "echo", "alpha", "charlie", "bravo", "alpha"][i])
    await push(admin, *(x.push_item(heap["id"]) for x in blocks))

    async def all_pages(**f: Any) -> list[str]:
        out, cursor, pages = [], None, 0
        while True:
            body = {"heap_id": heap["id"], "type": "document", "limit": 2, **f}
            if cursor:
                body["cursor"] = cursor
            page = (await admin.post("/api/heap", json=body)).json()
            out += [x["title"] for x in page["blocks"]]
            pages += 1
            cursor = page["next_cursor"]
            if not page["has_more"]:
                assert cursor is None
                return out
            assert pages < 10

    titles = await all_pages(sort="title")
    assert titles == sorted(titles) and len(titles) == 7  # ties on "alpha" kept whole
    assert await all_pages(sort="title", order="desc") == sorted(titles, reverse=True)
    by_created = await all_pages(sort="created", order="asc")
    assert by_created == ["delta", "alpha", "echo", "alpha", "charlie", "bravo", "alpha"]
    assert await all_pages() == list(reversed(by_created))  # updated, newest first

    first = (
        await admin.post("/api/heap", json={"heap_id": heap["id"], "limit": 2, "sort": "title"})
    ).json()
    for bad in ("garbage", first["next_cursor"][:-3], "e30"):
        assert_error(
            await admin.post(
                "/api/heap", json={"heap_id": heap["id"], "sort": "title", "cursor": bad}
            ),
            400,
            "invalid_cursor",
        )
    # a cursor is bound to its sort and direction
    assert_error(
        await admin.post(
            "/api/heap",
            json={"heap_id": heap["id"], "sort": "created", "cursor": first["next_cursor"]},
        ),
        400,
        "invalid_cursor",
    )


async def test_long_titles_commit_and_sort_in_byte_order(admin: HeaperClient) -> None:
    """A title past what one btree entry holds (2,704 bytes on PostgreSQL, random characters
    barely compress) commits, and the title sort, which PostgreSQL serves by a 256-character
    prefix, orders titles sharing that prefix by the rest, across pages."""
    heap = await new_heap(admin)
    shared = secrets.token_hex(200)  # 400 characters in common
    titles = [shared + secrets.token_hex(2000) for _ in range(5)]
    titles += [secrets.token_hex(2000), "é" * 3000, shared[:256] + "0", shared[:256]]
    blocks = [ClientBlock() for _ in titles]
    for blk, title in zip(blocks, titles, strict=True):
        blk.write(title)
    r = await push(admin, *(x.push_item(heap["id"]) for x in blocks))
    assert r.status_code == 200, r.text
    assert {x["status"] for x in r.json()["blocks"]} == {"created"}, r.text

    async def all_pages(order: str) -> list[str]:
        out, cursor = [], None
        for _ in range(10):
            body = {"heap_id": heap["id"], "type": "document", "limit": 2, "sort": "title"}
            body |= {"order": order} | ({"cursor": cursor} if cursor else {})
            r = await admin.post("/api/heap", json=body)
            assert r.status_code == 200, r.text
            out += [x["title"] for x in r.json()["blocks"]]
            if not r.json()["has_more"]:
                return out
            cursor = r.json()["next_cursor"]
        raise AssertionError("more pages than blocks")

    in_bytes = sorted(titles, key=lambda t: t.encode())
    assert await all_pages("asc") == in_bytes
    assert await all_pages("desc") == in_bytes[::-1]


async def test_counts(admin: HeaperClient) -> None:
    heap, b = await build(admin)
    r = (await admin.post("/api/heap_count", json={"workspace_id": heap["id"]})).json()
    assert r["count"] == 7 and r["by_type"] == {"index": 1, "tag": 2, "document": 4}
    r = (
        await admin.post("/api/heap_count", json={"heap_id": heap["id"], "tag": b["projects"].id})
    ).json()
    assert r["count"] == 3
    r = (
        await admin.post("/api/heap_count", json={"heap_id": heap["id"], "query": "planning"})
    ).json()
    assert r["count"] == 2
    r = (await admin.post("/api/heap_count", json={"heap_id": heap["id"], "trash": True})).json()
    assert r == {"success": True, "count": 1, "by_type": {"document": 1}}


async def test_query_bad_input_and_ownership(admin: HeaperClient, eve: HeaperClient) -> None:
    heap = await new_heap(admin)
    for body, code in [
        ({}, "missing_field"),
        ({"heap_id": heap["id"], "sort": "size"}, "invalid_value"),
        ({"heap_id": heap["id"], "limit": 0}, "invalid_value"),
        ({"heap_id": heap["id"], "limit": 501}, "invalid_value"),
        ({"heap_id": heap["id"], "type": 5}, "invalid_type"),
        ({"heap_id": heap["id"], "type": [1]}, "invalid_type"),
        ({"heap_id": heap["id"], "unlinked": "yes"}, "invalid_type"),
        ({"heap_id": heap["id"], "query": " ".join(f"w{i}" for i in range(17))}, "invalid_value"),
        ({"heap_id": heap["id"], "bogus": 1}, "unknown_field"),
    ]:
        assert_error(await admin.post("/api/heap", json=body), 400, code)
    assert_error(
        await admin.post("/api/heap_count", json={"heap_id": heap["id"], "sort": "x"}),
        400,
        "unknown_field",
    )
    assert_error(await eve.post("/api/heap", json={"heap_id": heap["id"]}), 403, "heap_forbidden")
    assert_error(
        await eve.post("/api/heap_count", json={"heap_id": heap["id"]}), 403, "heap_forbidden"
    )
