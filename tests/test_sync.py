"""Heaps and HTTP sync of block documents, as a Yjs client sees them, on both engines."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pycrdt
import trio
import trio.lowlevel

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient

from .conftest import assert_error


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def sv_entries(sv: bytes) -> dict[int, int]:
    """client -> clock of a Yjs v1 state vector (the wire order is not canonical)."""

    def varuint(pos: int) -> tuple[int, int]:
        value, shift = 0, 0
        while True:
            byte = sv[pos]
            value |= (byte & 0x7F) << shift
            pos, shift = pos + 1, shift + 7
            if byte < 0x80:
                return value, pos

    n, pos = varuint(0)
    out = {}
    for _ in range(n):
        client, pos = varuint(pos)
        out[client], pos = varuint(pos)
    return out


class ClientBlock:
    """A block document as a Heaper client holds it (pycrdt standing in for Yjs)."""

    def __init__(self, block_id: str | None = None) -> None:
        self.id = block_id or str(uuid.uuid4())
        self.doc = pycrdt.Doc()
        self.title = self.doc.get("title_v0", type=pycrdt.XmlFragment)
        self.content = self.doc.get("content_v0", type=pycrdt.XmlFragment)
        self.meta = self.doc.get("meta_v0", type=pycrdt.Map)
        self.relations = self.doc.get("relations_v1", type=pycrdt.Map)
        self.synced = self.doc.get_state()

    def write(
        self, title: str, body: str = "", block_type: str = "document", mention: str | None = None
    ) -> None:
        with self.doc.transaction():
            self.meta["type"] = block_type
            t = pycrdt.XmlElement("paragraph")
            self.title.children.append(t)
            t.children.append(pycrdt.XmlText(title))
            if body or mention:
                p = pycrdt.XmlElement("paragraph")
                self.content.children.append(p)
                p.children.append(pycrdt.XmlText(body))
                if mention:
                    p.children.append(
                        pycrdt.XmlElement(
                            "reference", {"id": mention, "label": "ref", "type": "mention"}
                        )
                    )

    def tag_with(self, parent_id: str) -> None:
        self.relations[parent_id] = pycrdt.Map({"type": "tag"})

    def pending(self) -> bytes:
        """What the server has not seen yet."""
        return self.doc.get_update(self.synced)

    def push_item(self, heap_id: str, **extra: Any) -> dict[str, Any]:
        return {
            "block_id": self.id,
            "workspace_id": heap_id,
            "update": b64(self.pending()),
            "state_vector": b64(self.doc.get_state()),
            **extra,
        }


async def new_heap(client: HeaperClient, name: str = "Notes") -> dict[str, Any]:
    r = await client.post("/api/heap/add", json={"name": name})
    assert r.status_code == 200, r.text
    return dict(r.json()["heap"])


async def push(client: HeaperClient, *items: dict[str, Any]) -> Any:
    return await client.post("/api/sync/push", json={"blocks": list(items)})


async def test_heap_add_and_list(admin: HeaperClient) -> None:
    assert (await admin.post("/api/me")).json()["usage"]["heaps"] == 0
    heap = await new_heap(admin, "Research")
    assert heap["name"] == "Research" and heap["root_block_id"]
    chosen = str(uuid.uuid4())
    r = await admin.post("/api/heap/add", json={"name": "Mine", "id": chosen})
    assert r.json()["id"] == chosen
    assert_error(
        await admin.post("/api/heap/add", json={"name": "Again", "id": chosen}), 403, "heap_exists"
    )
    usage = (await admin.post("/api/me")).json()["usage"]
    assert (usage["heaps"], usage["blocks"]) == (2, 2) and usage["document_bytes"] > 0
    for path in ("/api/heaps", "/api/workspaces"):
        listed = (await admin.post(path)).json()
        assert [h["name"] for h in listed["heaps"]] == ["Research", "Mine"]
    root = (await admin.post(f"/api/block/{heap['root_block_id']}")).json()
    assert root["block"]["type"] == "index" and root["block"]["title"] == "Research"
    assert root["block"]["is_root"] is True


async def test_push_creates_then_updates_and_pull_converges(admin: HeaperClient) -> None:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Shopping", "eggs and milk")
    r = await push(admin, block.push_item(heap["id"]))
    [answer] = r.json()["blocks"]
    assert answer["status"] == "created" and answer["sync_version"] == 1
    assert r.json()["server_time"] > 0
    block.synced = block.doc.get_state()

    with block.doc.transaction():
        block.content.children[0].children.append(pycrdt.XmlText(", bread"))
    [answer] = (await push(admin, block.push_item(heap["id"]))).json()["blocks"]
    assert answer["status"] == "ok"
    assert unb64(answer["update"]) in (b"\x00\x00", b"\x00\x01\x00")  # nothing we lack

    # A second device pulls it from nothing and ends up with the same document.
    other = ClientBlock(block.id)
    r = await admin.post(
        "/api/sync/pull",
        json={
            "blocks": [
                {
                    "block_id": block.id,
                    "state_vector": b64(other.doc.get_state()),
                    "sync_version": 1,
                }
            ]
        },
    )
    [pulled] = r.json()["blocks"]
    assert pulled["status"] == "ok" and pulled["sync_version"] == 1
    other.doc.apply_update(unb64(pulled["update"]))
    assert str(other.content) == str(block.content) == "<paragraph>eggs and milk, bread</paragraph>"

    got = (await admin.post(f"/api/block/{block.id}")).json()
    assert got["block"]["title"] == "Shopping" and got["block"]["type"] == "document"
    assert "eggs and milk, bread" in got["text"]
    fresh = pycrdt.Doc()
    fresh.apply_update(unb64(got["state"]))
    assert str(fresh.get("title_v0", type=pycrdt.XmlFragment)) == str(block.title)


async def test_push_answers_what_the_client_lacks(admin: HeaperClient) -> None:
    heap = await new_heap(admin)
    a, b = ClientBlock(), None
    a.write("Shared")
    await push(admin, a.push_item(heap["id"]))
    b = ClientBlock(a.id)  # a device that never saw a's edit
    with b.doc.transaction():
        b.meta["color"] = "red"
    [answer] = (await push(admin, b.push_item(heap["id"]))).json()["blocks"]
    b.doc.apply_update(unb64(answer["update"]))
    assert str(b.title) == str(a.title) and b.meta["color"] == "red"
    assert sv_entries(unb64(answer["state_vector"])) == sv_entries(b.doc.get_state())


async def test_duplicate_push_changes_nothing(admin: HeaperClient, server: RunningServer) -> None:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Once")
    item = block.push_item(heap["id"])
    await push(admin, item)
    stored = await server.services.storage.load_block(block.id)
    [again] = (await push(admin, item)).json()["blocks"]
    assert again["status"] == "ok"
    assert (await server.services.storage.load_block(block.id)).last_seq == stored.last_seq


async def test_each_block_stands_alone(admin: HeaperClient, server: RunningServer) -> None:
    heap = await new_heap(admin)
    good = ClientBlock()
    good.write("Good")
    bad_b64 = {"block_id": "bad-b64", "workspace_id": heap["id"], "update": "***"}
    bad_yjs = {
        "block_id": "bad-yjs",
        "workspace_id": heap["id"],
        "update": b64(b"\xff\xfe\xfd\x00garbage"),
    }
    r = await push(admin, good.push_item(heap["id"]), bad_b64, bad_yjs)
    statuses = {b["block_id"]: b["status"] for b in r.json()["blocks"]}
    assert statuses == {good.id: "created", "bad-b64": "invalid", "bad-yjs": "invalid"}
    errors = {b["block_id"]: b.get("error") for b in r.json()["blocks"]}
    assert errors["bad-b64"] == "invalid_base64"
    assert await server.services.storage.load_block("bad-yjs") is None

    # Only undecodable blocks: 422, and the existing document is untouched.
    before = await server.services.storage.load_block(good.id)
    r = await push(
        admin, {"block_id": good.id, "workspace_id": heap["id"], "update": b64(b"\x01\x02\x03")}
    )
    assert_error(r, 422, "invalid_update")
    assert await server.services.storage.load_block(good.id) == before


async def test_sync_version_mismatch(admin: HeaperClient, server: RunningServer) -> None:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Versioned")
    await push(admin, block.push_item(heap["id"], sync_version=7))  # created: always 1
    before = await server.services.storage.load_block(block.id)
    assert before.sync_version == 1
    with block.doc.transaction():
        block.meta["x"] = 1
    [answer] = (await push(admin, block.push_item(heap["id"], sync_version=2))).json()["blocks"]
    assert answer["status"] == "version_mismatch" and answer["sync_version"] == 1
    assert await server.services.storage.load_block(block.id) == before
    [pulled] = (
        await admin.post(
            "/api/sync/pull", json={"blocks": [{"block_id": block.id, "sync_version": 2}]}
        )
    ).json()["blocks"]
    assert pulled["status"] == "version_mismatch" and pulled["full_state"]


async def test_other_users_cannot_see_or_touch(admin: HeaperClient, eve: HeaperClient) -> None:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Private")
    await push(admin, block.push_item(heap["id"]))

    assert (await eve.post("/api/heaps")).json()["heaps"] == []
    evil = ClientBlock(block.id)
    evil.write("Overwritten")
    [answer] = (await push(eve, evil.push_item(heap["id"]))).json()["blocks"]
    assert answer["status"] == "forbidden"
    unknown_heap = (await push(eve, evil.push_item("no-such-heap"))).json()["blocks"][0]
    assert unknown_heap["status"] == "forbidden"  # same answer: no existence leak
    [pulled] = (await eve.post("/api/sync/pull", json={"blocks": [{"block_id": block.id}]})).json()[
        "blocks"
    ]
    assert pulled["status"] == "not_found" and "update" not in pulled
    assert_error(
        await eve.get("/api/sync/delta", params={"workspace_id": heap["id"]}), 403, "heap_forbidden"
    )
    assert_error(
        await eve.get("/api/sync/delta", params={"workspace_id": "nope"}), 403, "heap_forbidden"
    )
    assert_error(await eve.post(f"/api/block/{block.id}"), 404, "block_not_found")
    assert_error(await eve.post("/api/block/nope"), 404, "block_not_found")
    # And eve's own heap cannot take a block id that lives in admin's heap.
    own = await new_heap(eve)
    [answer] = (await push(eve, evil.push_item(own["id"]))).json()["blocks"]
    assert answer["status"] == "forbidden"
    got = (await admin.post(f"/api/block/{block.id}")).json()
    assert got["block"]["title"] == "Private"


async def test_relations_both_ways(admin: HeaperClient) -> None:
    heap = await new_heap(admin)
    tag, note = ClientBlock(), ClientBlock()
    tag.write("Recipes", block_type="tag")
    note.write("Pancakes", "see", mention=tag.id)
    note.tag_with(tag.id)
    await push(admin, tag.push_item(heap["id"]), note.push_item(heap["id"]))
    got_tag = (await admin.post(f"/api/block/{tag.id}")).json()
    assert got_tag["relations"]["children"] == [note.id]
    assert got_tag["relations"]["backlinks"] == [note.id]
    got_note = (await admin.post(f"/api/block/{note.id}")).json()
    assert got_note["relations"]["tags"] == [tag.id]
    assert got_note["relations"]["mentions"] == [tag.id]
    assert got_note["relations"]["raw"] == {tag.id: {"type": "tag"}}


async def test_delta_pages_through_every_change_once(admin: HeaperClient) -> None:
    heap = await new_heap(admin)
    blocks = [ClientBlock() for _ in range(7)]
    for i, b in enumerate(blocks):
        b.write(f"Block {i}")
    await push(admin, *(b.push_item(heap["id"]) for b in blocks))
    seen: list[str] = []
    since, pages = 0, 0
    while True:
        page = (
            await admin.get(
                "/api/sync/delta", params={"workspace_id": heap["id"], "since": since, "limit": 3}
            )
        ).json()
        seen += [c["block_id"] for c in page["changed_blocks"]]
        assert page["server_time"] >= since
        since, pages = page["server_time"], pages + 1
        if not page["has_more"]:
            break
    assert sorted(seen) == sorted([b.id for b in blocks] + [heap["root_block_id"]])
    assert pages == 3
    empty = (
        await admin.get("/api/sync/delta", params={"workspace_id": heap["id"], "since": since})
    ).json()
    assert empty["changed_blocks"] == [] and empty["has_more"] is False
    # since omitted or invalid means 0
    everything = (
        await admin.get(
            "/api/sync/delta", params={"workspace_id": heap["id"], "since": "yesterday"}
        )
    ).json()
    assert everything["total_changed"] == 8


async def test_delta_loses_nothing_while_writes_commit(admin: HeaperClient) -> None:
    """A reader polling with server_time while writers commit sees every change."""
    heap = await new_heap(admin)
    blocks = [ClientBlock() for _ in range(30)]
    written: set[str] = set()
    seen: set[str] = set()
    done = trio.Event()

    async def writer(chunk: list[ClientBlock]) -> None:
        for b in chunk:
            b.write("x")
            [answer] = (await push(admin, b.push_item(heap["id"]))).json()["blocks"]
            assert answer["status"] == "created"
            written.add(b.id)

    async def reader() -> None:
        since = 0
        while True:
            finished = done.is_set()
            page = (
                await admin.get(
                    "/api/sync/delta",
                    params={"workspace_id": heap["id"], "since": since, "limit": 4},
                )
            ).json()
            seen.update(c["block_id"] for c in page["changed_blocks"])
            since = page["server_time"]
            if finished and not page["has_more"]:
                return
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as n:
        n.start_soon(reader)
        async with trio.open_nursery() as writers:
            for k in range(3):
                writers.start_soon(writer, blocks[k::3])
        done.set()
    assert written <= seen


async def test_push_and_pull_bad_requests(admin: HeaperClient, start_server: Any) -> None:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("x")
    item = block.push_item(heap["id"])
    cases: list[tuple[Any, str]] = [
        ({}, "missing_field"),
        ({"blocks": "nope"}, "invalid_type"),
        ({"blocks": [{**item, "extra": 1}]}, "unknown_field"),
        ({"blocks": [{k: v for k, v in item.items() if k != "update"}]}, "missing_field"),
        ({"blocks": [{**item, "block_id": "has space"}]}, "invalid_value"),
        ({"blocks": [{**item, "block_id": "x" * 129}]}, "invalid_value"),
        ({"blocks": [{**item, "sync_version": "1"}]}, "invalid_type"),
        ({"blocks": [{**item, "sync_version": -1}]}, "invalid_value"),  # 0 is "never saw it"
    ]
    for body, code in cases:
        assert_error(await admin.post("/api/sync/push", json=body), 400, code)
    pull_cases: list[tuple[Any, str]] = [
        ({}, "missing_field"),
        ({"blocks": {}}, "invalid_type"),
        ({"blocks": [item]}, "unknown_field"),  # pull items carry no update
        ({"blocks": [{"state_vector": ""}]}, "missing_field"),
        ({"blocks": [{"block_id": "a/b"}]}, "invalid_value"),
        ({"blocks": [{"block_id": "a", "sync_version": 1.5}]}, "invalid_type"),
    ]
    for body, code in pull_cases:
        assert_error(await admin.post("/api/sync/pull", json=body), 400, code)
    await push(admin, item)
    r = await admin.post(
        "/api/sync/pull", json={"blocks": [{"block_id": block.id, "state_vector": "not base64!"}]}
    )
    assert_error(r, 422, "invalid_update")
    r = await admin.post("/api/sync/push", json={"blocks": [{**item, "state_vector": "%%%"}]})
    assert_error(r, 422, "invalid_update")
    assert_error(await admin.get("/api/sync/delta"), 400, "missing_field")
    assert_error(
        await admin.get("/api/sync/delta", params={"workspace_id": heap["id"], "limit": "x"}), 400
    )
    assert_error(await admin.post("/api/heap/add", json={"name": ""}), 400, "invalid_value")
    assert_error(await admin.post("/api/heap/add", json={"name": "n", "id": "../x"}), 400)
    assert (await admin.post("/api/heaps")).json()["heaps"][0]["id"] == heap["id"]


async def test_batch_limit_is_413(start_server: Any) -> None:
    running = await start_server(max_sync_batch=2)
    async with HeaperClient(running.url) as c:
        await c.login()
        heap = await new_heap(c)
        items = []
        for _ in range(3):
            b = ClientBlock()
            b.write("x")
            items.append(b.push_item(heap["id"]))
        assert_error(await push(c, *items), 413, "batch_too_large")
        assert (await c.get("/api/sync/delta", params={"workspace_id": heap["id"]})).json()[
            "total_changed"
        ] == 1  # only the root block


async def test_unauthenticated_sync_is_401(http: Any) -> None:
    assert_error(await http.post("/api/sync/push", json={"blocks": []}), 401, "token_missing")
    assert_error(await http.get("/api/sync/delta"), 401, "token_missing")
    assert_error(await http.post("/api/heaps"), 401, "token_missing")


async def test_odd_values_store_alike_on_both_engines(admin: HeaperClient) -> None:
    """NUL characters and NaN are legal in a Yjs document; PostgreSQL cannot store them in
    text or JSONB columns. The projection is cleaned the same way on both engines."""
    # a name is no document: NUL in one is refused at the edge (tests/test_harden_strings.py)
    r = await admin.post("/api/heap/add", json={"name": "nul\x00name"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_value", r.text
    heap = await new_heap(admin, "odd values")
    block = ClientBlock()
    block.write("ti\x00tle", "bo\x00dy")
    with block.doc.transaction():
        block.meta["weird"] = float("nan")
        block.relations["tag\x00id"] = pycrdt.Map({"type": "tag", "score": float("inf")})
    [answer] = (await push(admin, block.push_item(heap["id"]))).json()["blocks"]
    assert answer["status"] == "created"
    got = (await admin.post(f"/api/block/{block.id}")).json()
    assert got["block"]["title"] == "ti\ufffdtle" and "bo\ufffddy" in got["text"]
    assert got["relations"]["tags"] == []  # an id with a NUL cannot name a block
    assert got["relations"]["raw"] == {"tag\ufffdid": {"type": "tag", "score": None}}
    # the document itself keeps what the client wrote
    doc = pycrdt.Doc()
    doc.apply_update(unb64(got["state"]))
    assert "ti\x00tle" in str(doc.get("title_v0", type=pycrdt.XmlFragment))
