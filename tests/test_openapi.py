"""The OpenAPI document says what the server does: anchored patterns, path parameters checked
as documented, binary answers with their types and 206/304/416, multipart and raw bodies, the
heap id requirement, nullable cursors -- and a route word is never a heap id."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import httpx

from heaper_trio.client import HeaperClient

from .conftest import assert_error


def _patterns(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                yield value
            else:
                yield from _patterns(value)
    elif isinstance(node, list):
        for item in node:
            yield from _patterns(item)


async def _doc(http: httpx.AsyncClient) -> dict[str, Any]:
    r = await http.get("/api/openapi.json")
    assert r.status_code == 200
    return r.json()  # type: ignore[no-any-return]


def _params(op: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in op.get("parameters", []) if p["in"] == where}


async def test_every_pattern_is_anchored_and_every_path_id_has_one(http: httpx.AsyncClient) -> None:
    doc = await _doc(http)
    patterns = list(_patterns(doc["paths"]))
    assert len(patterns) > 30
    for pattern in patterns:
        # JSON Schema patterns search; the server matches whole values
        assert pattern.startswith("^") and pattern.endswith("$"), pattern
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if op.get("x-websocket"):
                continue
            for name, param in _params(op, "path").items():
                assert param["required"] is True
                assert "pattern" in param["schema"] or "enum" in param["schema"], (
                    method,
                    path,
                    name,
                )
    chunk = doc["paths"]["/api/upload/chunk/{heap_id}/{block_id}/{hash}/{index}"]["put"]
    assert _params(chunk, "path")["index"]["schema"]["pattern"] == "^[0-9]{1,9}$"
    assert _params(chunk, "path")["hash"]["schema"]["pattern"] == "^[0-9a-fA-F]{64}$"
    assert chunk["requestBody"]["content"].keys() == {"application/octet-stream"}


async def test_binary_answers_multipart_bodies_and_heap_requirements(
    http: httpx.AsyncClient,
) -> None:
    doc = await _doc(http)
    raw = doc["paths"]["/api/file/{key}/raw/{slug}"]["get"]["responses"]
    for status in ("200", "206"):
        assert "application/json" not in raw[status]["content"], raw[status]
    assert "content" not in raw["304"]
    assert raw["416"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    thumb = doc["paths"]["/api/file/{key}/thumbnail/{size}/{slug}"]["get"]["responses"]
    assert thumb["200"]["content"].keys() == {"image/webp"}
    upload = doc["paths"]["/api/upload/file/{heap_id}/{block_id}"]["post"]["requestBody"]
    assert upload["content"]["multipart/form-data"]["schema"]["required"] == ["file"]
    thumbs = doc["paths"]["/api/upload/thumbnail/{block_id}/{file_hash}/{thumbnail_key}"]
    assert "multipart/form-data" in thumbs["post"]["requestBody"]["content"]
    heap = doc["paths"]["/api/heap"]["post"]
    body = heap["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"]["anyOf"] == [
        {"required": ["heap_id"]},
        {"required": ["workspace_id"]},
    ]
    answer = heap["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer["properties"]["next_cursor"]["type"] == ["string", "null"]
    delta = doc["paths"]["/api/sync/delta"]["get"]
    assert _params(delta, "query")["workspace_id"]["required"] is True
    limits = _params(delta, "query")["since"]["schema"]
    assert (limits["minimum"], limits["maximum"]) == (0, 2**53 - 1)


async def test_heap_add_is_a_route_never_a_heap(
    admin: HeaperClient, http: httpx.AsyncClient
) -> None:
    """Werkzeug let DELETE /api/heap/{id} match /api/heap/add, and heap ids could be "add":
    the request meant for one route deleted a heap named after it."""
    for word in ("add", "stats", "changed_blocks"):
        r = await admin.post("/api/heap/add", json={"name": "x", "id": word})
        assert_error(r, 400, "invalid_value")
    r = await admin.post("/api/heap/add", json={"name": "kept", "id": "keep-me"})
    assert r.status_code == 200, r.text
    # static routes at the same path (changed_blocks has a GET form too)
    for word, allow in (("add", "OPTIONS, POST"), ("changed_blocks", "GET, HEAD, OPTIONS, POST")):
        r = await admin.delete(f"/api/heap/{word}")
        assert_error(r, 405, "method_not_allowed")
        assert r.headers["Allow"] == allow, r.headers
        r = await admin.request("OPTIONS", f"/api/heap/{word}")
        assert r.headers["Allow"] == allow, r.headers
    assert_error(await admin.delete("/api/heap/stats"), 404, "not_found")
    # a 405 elsewhere names the methods a route really answers
    r = await admin.get("/api/heap/add")
    assert_error(r, 405)
    assert r.headers["Allow"] == "OPTIONS, POST", r.headers
    # ordinary ids are untouched
    r = await admin.request("OPTIONS", "/api/heap/keep-me")
    assert r.headers["Allow"] == "DELETE, OPTIONS", r.headers
    assert [h["id"] for h in (await admin.post("/api/heaps")).json()["heaps"]] == ["keep-me"]
    r = await admin.delete("/api/heap/keep-me")
    assert r.status_code == 200 and r.json()["deleted"] is True, r.text


async def test_path_parameters_are_checked_as_documented(admin: HeaperClient) -> None:
    heap = (await admin.post("/api/heap/add", json={"name": "p"})).json()["id"]
    h = hashlib.sha256(b"p").hexdigest()
    cases = [
        ("POST", f"/api/block/{'x' * 129}", 400, "invalid_value"),
        ("POST", "/api/block/a%20b", 400, "invalid_value"),
        ("GET", "/api/trash/a.b", 400, "invalid_value"),
        ("GET", "/api/heap/stats/%C3%A9", 400, "invalid_value"),
        ("GET", f"/api/upload/status/{heap}/blk/{h[:-1]}", 400, "bad_hash"),
        ("GET", f"/api/upload/status/{heap}/bl%C3%A9/{h}", 400, "invalid_field"),
        ("GET", f"/api/file/{h}/thumbnail/huge/x", 400, "bad_thumbnail_size"),
        # found by scripts/fuzz.sh: "0" matched the documented pattern, then was refused
        ("GET", f"/api/file/{h}/thumbnail/0/x", 400, "bad_thumbnail_size"),
        ("GET", f"/api/file/{h}/video_thumbnail/small/10s", 400, "bad_thumbnail_position"),
        ("GET", "/api/file/not-a-key/raw/x", 400, "invalid_value"),
        ("GET", f"/api/download/thumbnail/blk/{h}/image/sm%20all", 400, "invalid_field"),
    ]
    for method, path, status, code in cases:
        assert_error(await admin.request(method, path), status, code)
    # well-formed but unknown: the handlers' own answers
    assert_error(await admin.get(f"/api/file/{h}/raw/x"), 404, "file_not_found")
    assert_error(await admin.post("/api/block/nope"), 404)


async def test_bodies_that_name_a_heap_need_one(admin: HeaperClient) -> None:
    for path in ("/api/heap", "/api/heap_count", "/api/heap/changed_blocks"):
        err = assert_error(await admin.post(path, json={}), 400, "missing_field")
        assert err["field"] == "body.heap_id", err
        assert_error(await admin.post(path), 400, "invalid_json")
    err = assert_error(await admin.post("/api/regenerate_file", json={}), 400, "missing_field")
    assert err["field"] == "body.file_hash", err
