"""Strings no store can hold: a lone surrogate (no UTF-8 for it) or NUL (PostgreSQL text refuses
it). Names, ids, types, queries and file names never need either, so every edge (JSON bodies,
multipart fields and file names, query strings, path segments) refuses them with
``400 invalid_value`` before any work. Before, each reached the database or pycrdt and was a 500,
sometimes on one engine only. Document content is another matter: it travels as Yjs updates and
is stored exactly; only the columns projected from it are made storable."""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from typing import Any

import httpx

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.protocol import messages as m

from .conftest import assert_error
from .live_client import live_client
from .test_sync import ClientBlock, b64, push

SURROGATE = "\\ud800"  # a JSON escape: json.loads gives the lone surrogate "\ud800"
JSON = {"Content-Type": "application/json"}
DATA = b"harden strings"
HASH = hashlib.sha256(DATA).hexdigest()


async def _raw(client: HeaperClient, path: str, text: str) -> httpx.Response:
    """POST JSON text as written: httpx's ``json=`` cannot carry a lone surrogate."""
    return await client.post(path, content=text.encode(), headers=JSON)


def _invalid(r: httpx.Response, field: str | None = None) -> None:
    body = assert_error(r, 400, "invalid_value")
    if field is not None:
        assert body["field"] == field, body


async def _heap(client: HeaperClient) -> str:
    r = await client.post("/api/heap/add", json={"name": "strings"})
    assert r.status_code == 200, r.text
    return r.json()["id"]  # type: ignore[no-any-return]


async def _heap_names(client: HeaperClient) -> list[str]:
    r = await client.post("/api/heaps", json={})
    assert r.status_code == 200, r.text
    return sorted(h["name"] for h in r.json()["heaps"])


async def test_heap_add_refuses_lone_surrogates_and_nul(admin: HeaperClient) -> None:
    before = await _heap_names(admin)
    for text, field in [
        ('{"name": "a' + SURROGATE + 'b"}', "body.name"),
        ('{"name": "a\\u0000b"}', "body.name"),
        ('{"name": "ok", "id": "x' + SURROGATE + '"}', "body.id"),
        ('{"name": "ok", "id": "x\\u0000"}', "body.id"),
        ('{"name": "\\udfff"}', "body.name"),  # a lone low surrogate
        ('{"name": "\\udc00\\ud800"}', "body.name"),  # a reversed pair is two lone ones
    ]:
        _invalid(await _raw(admin, "/api/heap/add", text), field)
    # an object key is refused too: the field named is the object holding it
    _invalid(await _raw(admin, "/api/heap/add", '{"name": "ok", "x' + SURROGATE + '": 1}'), "body")
    _invalid(await _raw(admin, "/api/heap/add", '{"name": "ok", "\\u0000": 1}'), "body")
    # nested: the path names the element
    _invalid(
        await _raw(admin, "/api/sync/push", '{"blocks": [{"block_id": "b\\u0000"}]}'),
        "body.blocks[0].block_id",
    )
    # raw bytes of a UTF-8-encoded surrogate (json.loads decodes them with surrogatepass)
    r = await admin.post("/api/heap/add", content=b'{"name": "a\xed\xa0\x80b"}', headers=JSON)
    assert r.status_code == 400, r.text
    assert await _heap_names(admin) == before
    # a proper pair (an emoji escaped as two surrogates) is fine
    r = await _raw(admin, "/api/heap/add", '{"name": "\\ud83d\\ude00"}')
    assert r.status_code == 200 and r.json()["heap"]["name"] == "\U0001f600", r.text


async def test_upload_init_refuses_them_and_stores_no_upload(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = await _heap(admin)
    block = uuid.uuid4().hex
    base = f'"hash": "{HASH}", "size": {len(DATA)}, "chunk_size": 65536'
    for extra, field in [
        ('"name": "' + SURROGATE + '"', "body.name"),
        ('"mime_type": "' + SURROGATE + '"', "body.mime_type"),
        ('"name": "a\\u0000b"', "body.name"),
        ('"mime_type": "text/plain\\u0000"', "body.mime_type"),
    ]:
        r = await _raw(admin, f"/api/upload/init/{heap}/{block}", "{" + base + ", " + extra + "}")
        _invalid(r, field)
        assert await server.services.storage.get_upload(heap, block, HASH) is None
    r = await admin.get(f"/api/upload/status/{heap}/{block}/{HASH}")
    assert r.status_code == 200 and r.json()["status"] == "missing", r.text


async def test_regenerate_file_refuses_them(admin: HeaperClient) -> None:
    for file_id in (SURROGATE, "\\u0000", "x\\u0000y"):
        _invalid(
            await _raw(admin, "/api/regenerate_file", '{"file_id": "' + file_id + '"}'),
            "body.file_id",
        )


def _multipart(parts: list[tuple[str, bytes | None, bytes]]) -> tuple[bytes, dict[str, str]]:
    """A multipart body built by hand, so names and file names hold exactly the bytes given
    (``filename`` None: a text field)."""
    boundary = "harden" + uuid.uuid4().hex
    out = b""
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"'.encode()
        if filename is not None:
            disposition += b'; filename="' + filename + b'"'
        out += (
            f"--{boundary}\r\n".encode()
            + b"Content-Disposition: "
            + disposition
            + b"\r\n\r\n"
            + value
            + b"\r\n"
        )
    out += f"--{boundary}--\r\n".encode()
    return out, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


async def test_direct_upload_refuses_them_in_form_fields_and_file_names(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = await _heap(admin)
    block = uuid.uuid4().hex
    for field, parts in [
        ("form.name", [("file", b"x.txt", DATA), ("name", None, b"a\x00b")]),
        ("form.mime_type", [("file", b"x.txt", DATA), ("mime_type", None, b"text/\x00")]),
        ("form.hash", [("file", b"x.txt", DATA), ("hash", None, b"\x00")]),
        ("form.file", [("file", b"a\x00b.txt", DATA)]),
    ]:
        content, headers = _multipart(parts)
        r = await admin.post(f"/api/upload/file/{heap}/{block}", content=content, headers=headers)
        _invalid(r, field)
        assert await server.services.storage.get_file(HASH) is None
    r = await admin.post("/api/block/" + block, json={})
    assert r.status_code == 404, r.text  # no block was made either
    # the same upload with clean names works
    content, headers = _multipart([("file", b"x.txt", DATA), ("name", None, "é.txt".encode())])
    r = await admin.post(f"/api/upload/file/{heap}/{block}", content=content, headers=headers)
    assert r.status_code == 200, r.text


async def test_thumbnail_upload_refuses_them(admin: HeaperClient) -> None:
    for field, parts in [
        ("form.type", [("thumbnail", b"t.png", b"\x89PNG"), ("type", None, b"image\x00")]),
        ("form.size", [("thumbnail", b"t.png", b"\x89PNG"), ("size", None, b"\x00")]),
        ("form.thumbnail", [("thumbnail", b"t\x00.png", b"\x89PNG")]),
    ]:
        content, headers = _multipart(parts)
        r = await admin.post(
            f"/api/upload/thumbnail/blk/{HASH}/small", content=content, headers=headers
        )
        _invalid(r, field)


async def test_query_strings_refuse_them(admin: HeaperClient) -> None:
    heap = await _heap(admin)
    for query, field in [
        (f"workspace_id={heap}%00", "query.workspace_id"),
        ("workspace_id=%00", "query.workspace_id"),
        (f"workspace_id={heap}&heap_id=%00", "query.heap_id"),
        (f"workspace_id={heap}&since=1%00", "query.since"),
        (f"workspace_id={heap}&x%00=1", "query"),
    ]:
        _invalid(await admin.get(f"/api/sync/delta?{query}"), field)
    # invalid UTF-8 (a CESU-8 surrogate) in a query value is no 500
    r = await admin.get("/api/sync/delta?workspace_id=%ED%A0%80")
    assert r.status_code in (400, 403), r.text
    r = await admin.get(f"/api/sync/delta?workspace_id={heap}")
    assert r.status_code == 200, r.text


async def test_path_segments_refuse_them(admin: HeaperClient, http: httpx.AsyncClient) -> None:
    key = "0" * 64
    for path, field in [
        (f"/api/file/{key}/raw/a%00b", "path.slug"),
        (f"/api/file/{key}/raw/%00", "path.slug"),
        (f"/api/stream/{key}/%00.mp4", "path.slug"),
        (f"/api/file/{key}/thumbnail/small/x%00", "path.slug"),
    ]:
        _invalid(await admin.get(path), field)
    # an id segment: its pattern refused NUL already; it still does
    _invalid(await admin.get("/api/trash/a%00b"), "path.heapId")
    # invalid UTF-8 in a segment: never a 500
    for path in (
        f"/api/file/{key}/raw/%ED%A0%80",
        f"/api/file/{key}/raw/%FF",
        "/api/trash/%ED%A0%80",
    ):
        r = await admin.get(path)
        assert r.status_code in (400, 404), (path, r.text)
        assert r.json()["success"] is False
    # the token query parameter of file routes
    r = await http.get(f"/api/file/{key}/raw/x", params={"token": "a\x00b"})
    _invalid(r, "query.token")


async def test_sweep_bad_characters_anywhere_in_any_json_string(admin: HeaperClient) -> None:
    """A seeded random sweep: a NUL or a lone surrogate anywhere in any string of a body (among
    any other characters JSON carries, pairs included) is a 400 naming that string, on routes
    whose strings go to pycrdt, the database and the file store."""
    rng = random.Random(9)
    heap = await _heap(admin)
    bodies: list[tuple[str, dict[str, Any], str]] = [
        ("/api/heap/add", {"name": "n", "id": "i"}, "name"),
        ("/api/heap/add", {"name": "n", "id": "i"}, "id"),
        ("/api/regenerate_file", {"file_id": "f"}, "file_id"),
        ("/api/heap/changed_blocks", {"heap_id": heap}, "heap_id"),
        (
            f"/api/upload/init/{heap}/blk",
            {"hash": HASH, "size": 1, "chunk_size": 65536, "name": "x", "mime_type": "t"},
            "name",
        ),
        (
            f"/api/upload/init/{heap}/blk",
            {"hash": HASH, "size": 1, "chunk_size": 65536, "name": "x", "mime_type": "t"},
            "mime_type",
        ),
    ]
    pool = ["a", "é", "\\u00e9", "\\ud83d\\ude00", "\\n", "\\\\", '\\"', " ", "\\u0001"]
    bad = ["\\u0000", "\\ud800", "\\udbff", "\\udc00", "\\udfff"]
    for _ in range(60):
        path, body, field = rng.choice(bodies)
        before = "".join(rng.choices(pool, k=rng.randrange(4)))
        after = "".join(rng.choices(pool, k=rng.randrange(4)))
        text = json.dumps({k: v for k, v in body.items() if k != field})[:-1]
        text += (", " if len(body) > 1 else "") + f'"{field}": "{before}{rng.choice(bad)}{after}"}}'
        _invalid(await _raw(admin, path, text), f"body.{field}")
    assert await _heap_names(admin) == ["strings"]


# -- projected columns: content from a Yjs document ---------------------------------------------


async def test_document_text_with_nul_is_stored_and_projected(
    admin: HeaperClient, server: RunningServer
) -> None:
    """A document may hold NUL (clients put what they like in a Y.Text); the update is stored
    exactly, and the title/text columns hold what PostgreSQL can (the commit is no 500)."""
    heap = await _heap(admin)
    block = ClientBlock()
    block.write("ti\x00tle", body="bo\x00dy")
    block.tag_with("tag\x00id")
    r = await push(admin, block.push_item(heap))
    assert r.status_code == 200, r.text
    assert r.json()["blocks"][0]["status"] == "created", r.text
    stored = await server.services.storage.load_block(block.id)
    assert stored is not None
    r = await admin.post(
        "/api/sync/pull", json={"blocks": [{"block_id": block.id, "workspace_id": heap}]}
    )
    assert r.status_code == 200, r.text
    r = await admin.post(f"/api/block/{block.id}", json={})
    assert r.status_code == 200, r.text
    assert "\x00" not in json.dumps(r.json())


# Y.encodeStateAsUpdate of a doc whose title paragraph is the JS string "a\ud800b\u0000c", made
# by Node's yjs 13 (tests/interop): lib0 writes strings with TextEncoder, so the lone surrogate
# goes out as U+FFFD (ef bf bd); the NUL goes out as it is.
JS_LONE_SURROGATE_UPDATE = bytes.fromhex(
    "0103f6f9e4c803000701087469746c655f763003097061726167726170680700f6f9e4c80300060400f6f9e4"
    "c803010761efbfbd62006300"
)


async def test_yjs_strings_reach_the_columns_storable(
    admin: HeaperClient, server: RunningServer
) -> None:
    """What a JS client makes of a lone surrogate is U+FFFD already; the projected title holds
    no NUL either (U+FFFD in its place), while the stored update stays byte for byte."""
    heap = await _heap(admin)
    item = {"block_id": "js-block", "workspace_id": heap, "update": b64(JS_LONE_SURROGATE_UPDATE)}
    r = await push(admin, item)
    assert r.status_code == 200 and r.json()["blocks"][0]["status"] == "created", r.text
    r = await admin.post("/api/block/js-block", json={})
    assert r.status_code == 200, r.text
    assert r.json()["block"]["title"] == "a\ufffdb\ufffdc"
    stored = await server.services.storage.load_block("js-block")
    assert stored is not None
    assert JS_LONE_SURROGATE_UPDATE in [*stored.updates, stored.snapshot]


async def test_an_update_carrying_a_surrogate_in_cesu8_is_invalid(
    admin: HeaperClient, server: RunningServer
) -> None:
    """Bytes that are no UTF-8 (a surrogate encoded as if it were a character) inside an
    update: the decoder refuses the update, so no such string ever reaches a column."""
    heap = await _heap(admin)
    block = ClientBlock()
    block.write("aXYZb")
    update = block.pending()
    assert update.count(b"XYZ") == 1
    item = {
        "block_id": block.id,
        "workspace_id": heap,
        "update": b64(update.replace(b"XYZ", b"\xed\xa0\x80")),
    }
    r = await push(admin, item)
    assert_error(r, 422, "invalid_update")
    assert await server.services.storage.load_block(block.id) is None


async def test_events_channel_refuses_heap_ids_no_store_holds(
    admin: HeaperClient, server: RunningServer
) -> None:
    """A subscribe on the live events channel takes heap ids as the HTTP routes do: a NUL one
    reached PostgreSQL (and ended the channel) before; now it is an unknown_command error and
    the channel goes on."""
    heap = await _heap(admin)
    async with live_client(server.url) as a:
        await a.open("events", admin.access_token)
        await a.expect(m.Authenticated)
        for ids in (["a\x00b"], [heap, "\x00"], ["\ud800"], ["x" * 129], ["a/b"]):
            payload = json.dumps({"type": "subscribe", "heap_ids": ids})
            await a.send(m.Stateless("events", payload))
            answer = await a.expect(m.Stateless, lambda x: x.address == "events")
            assert json.loads(answer.payload)["error"] == "unknown_command", (ids, answer)
        await a.send(m.Stateless("events", json.dumps({"type": "subscribe", "heap_ids": [heap]})))
        answer = await a.expect(m.Stateless, lambda x: x.address == "events")
        assert json.loads(answer.payload) == {"type": "subscribed", "heap_ids": [heap]}


async def test_multipart_fields_follow_the_form_schema_and_lost_part_names_are_400(
    admin: HeaperClient, server: RunningServer
) -> None:
    """Found by the long fuzz run: a part whose name the parser cannot read was a 500, and a
    ``mime_type`` past its documented 255 characters was stored."""
    heap = await _heap(admin)
    block = uuid.uuid4().hex
    body = (
        b'--b\r\nContent-Disposition: form-data; name="\\"\r\n\r\nx\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\nabc\r\n'
        b"--b--\r\n"
    )
    r = await admin.post(
        f"/api/upload/file/{heap}/{block}",
        content=body,
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert_error(r, 400, "invalid_value")
    for field, value in (
        ("mime_type", b"text/" + b"x" * 300),
        ("name", b"n" * 1025),
        ("hash", b"not-a-hash"),
    ):
        content, headers = _multipart([("file", b"x.txt", DATA), (field, None, value)])
        r = await admin.post(f"/api/upload/file/{heap}/{block}", content=content, headers=headers)
        assert r.status_code == 400 and r.json()["field"] == f"form.{field}", r.text
    assert await server.services.storage.get_file(HASH) is None
