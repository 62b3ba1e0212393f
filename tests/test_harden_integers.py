"""Integers from clients are bounded (0 .. 2**53-1 unless narrower) and ASCII-only: in JSON
bodies, query strings, path segments and the cursors the server hands out. Before this, 2**63
reached the database as a 64-bit overflow and "²" passed ``str.isdigit()``: both were 500s."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from heaper_trio.client import HeaperClient

from .conftest import assert_error

BIG = 2**63
OVER = 2**53  # one past the largest integer every JSON client holds exactly
MAX = 2**53 - 1
NON_ASCII = [
    "²",
    "٣",
    "１",
    "৪",
]  # superscript two, Arabic-Indic three, fullwidth one, Bengali four


async def _heap(client: HeaperClient) -> str:
    r = await client.post("/api/heap/add", json={"name": "ints"})
    assert r.status_code == 200, r.text
    return r.json()["id"]  # type: ignore[no-any-return]


def _cursor(*parts: Any) -> str:
    raw = json.dumps(list(parts)).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("field", ["marker", "since"])
async def test_changed_blocks_markers_are_bounded(admin: HeaperClient, field: str) -> None:
    heap = await _heap(admin)
    bad: list[tuple[Any, str]] = [
        (BIG, "invalid_value"),
        (2**64 + 5, "invalid_value"),
        (OVER, "invalid_value"),
        (-1, "invalid_value"),
        (1.5, "invalid_type"),
        (float(OVER), "invalid_value"),
        (1e300, "invalid_type"),
        (True, "invalid_type"),
        (False, "invalid_type"),
        (str(BIG), "invalid_type"),
        ("12", "invalid_type"),
        ("²", "invalid_type"),
        (None, "invalid_type"),
    ]
    for value, code in bad:
        r = await admin.post("/api/heap/changed_blocks", json={"heap_id": heap, field: value})
        body = assert_error(r, 400, code)
        assert body["field"] == f"body.{field}", body
    for good in (0, MAX):
        r = await admin.post("/api/heap/changed_blocks", json={"heap_id": heap, field: good})
        assert r.status_code == 200, r.text
        assert r.json()["marker"] == good
    # JSON has one number type: 7.0 and 7e0 are the integer 7 (as JSON Schema and JavaScript
    # read them, and as the document promises), handed on as an int; they were refused
    for text in ("7.0", "7e0", "0.7e1"):
        r = await admin.post(
            "/api/heap/changed_blocks",
            headers={"Content-Type": "application/json"},
            content=f'{{"heap_id": "{heap}", "{field}": {text}}}'.encode(),
        )
        assert r.status_code == 200 and r.json()["marker"] == 7, (text, r.text)
    r = await admin.post("/api/heap/changed_blocks", json={"heap_id": heap, "limit": BIG})
    assert_error(r, 400, "invalid_value")


async def test_delta_since_and_limit_are_bounded(admin: HeaperClient) -> None:
    heap = await _heap(admin)
    for since in (str(BIG), str(2**64), str(OVER), "-1", "-" + str(BIG), "9" * 40):
        r = await admin.get("/api/sync/delta", params={"workspace_id": heap, "since": since})
        body = assert_error(r, 400, "invalid_value")
        assert body["field"] == "query.since", body
    # The published API: "Defaults to 0 if omitted or invalid" -- for text that is no number.
    # Floats, words and non-ASCII digits are not read as numbers at all.
    everything = (await admin.get("/api/sync/delta", params={"workspace_id": heap})).json()
    assert everything["total_changed"] == 1  # the root block
    for since in ["1.5", "true", "", "1e3", *NON_ASCII]:
        r = await admin.get("/api/sync/delta", params={"workspace_id": heap, "since": since})
        assert r.status_code == 200, (since, r.text)
        assert r.json()["total_changed"] == 1, since
    r = await admin.get("/api/sync/delta", params={"workspace_id": heap, "since": str(MAX)})
    assert r.status_code == 200 and r.json()["total_changed"] == 0, r.text
    for limit in (str(BIG), "0", "-3", "1001", "2.5", "true", "", *NON_ASCII):
        r = await admin.get("/api/sync/delta", params={"workspace_id": heap, "limit": limit})
        body = assert_error(r, 400, "invalid_value")
        assert body["field"] == "query.limit", (limit, body)
    r = await admin.get("/api/sync/delta", params={"workspace_id": heap, "limit": "1000"})
    assert r.status_code == 200, r.text


async def test_forged_heap_cursors_are_refused(admin: HeaperClient) -> None:
    heap = await _heap(admin)
    for i in range(3):
        r = await admin.post(
            "/api/sync/push",
            json={
                "blocks": [
                    {
                        "block_id": f"b{i}",
                        "workspace_id": heap,
                        "update": base64.b64encode(b"\x00\x00").decode(),
                    }
                ]
            },
        )
        assert r.status_code in (200, 422), r.text
    # a real cursor still works
    r = await admin.post("/api/heap", json={"heap_id": heap, "limit": 1})
    assert r.status_code == 200, r.text
    real = r.json()["next_cursor"]
    assert isinstance(real, str)
    r = await admin.post("/api/heap", json={"heap_id": heap, "limit": 1, "cursor": real})
    assert r.status_code == 200, r.text
    forged = [
        ("updated", True, BIG, "b1"),
        ("updated", True, 2**64, "b1"),
        ("updated", True, OVER, "b1"),
        ("updated", True, -1, "b1"),
        ("updated", True, -BIG - 1, "b1"),
        ("updated", True, 1.5, "b1"),
        ("updated", True, True, "b1"),
        ("updated", True, str(BIG), "b1"),
        ("updated", True, 5, 7),
        ("updated", True, 5, "has space"),
        ("updated", True, 5, ""),
        ("updated", True, 5, "x" * 129),
    ]
    for parts in forged:
        r = await admin.post("/api/heap", json={"heap_id": heap, "cursor": _cursor(*parts)})
        assert_error(r, 400, "invalid_cursor")
    for parts in [("created", True, BIG, "b1"), ("created", True, -5, "b1")]:
        r = await admin.post(
            "/api/heap", json={"heap_id": heap, "sort": "created", "cursor": _cursor(*parts)}
        )
        assert_error(r, 400, "invalid_cursor")
    for title in ("a\x00b", 5):
        r = await admin.post(
            "/api/heap",
            json={"heap_id": heap, "sort": "title", "cursor": _cursor("title", False, title, "b1")},
        )
        assert_error(r, 400, "invalid_cursor")
    # a lone surrogate, as JSON text can carry it
    raw = b'["title", false, "\\ud800", "b1"]'
    r = await admin.post(
        "/api/heap",
        json={"heap_id": heap, "sort": "title", "cursor": base64.urlsafe_b64encode(raw).decode()},
    )
    assert_error(r, 400, "invalid_cursor")
    for limit, code in ((BIG, "invalid_value"), (True, "invalid_type"), (2.5, "invalid_type")):
        r = await admin.post("/api/heap", json={"heap_id": heap, "limit": limit})
        assert_error(r, 400, code)


async def test_chunk_index_takes_ascii_digits_only(admin: HeaperClient) -> None:
    heap = await _heap(admin)
    data = b"z" * 10
    h = hashlib.sha256(data).hexdigest()
    r = await admin.post(
        f"/api/upload/init/{heap}/blk-i", json={"hash": h, "size": len(data), "chunk_size": 1 << 16}
    )
    assert r.status_code == 200, r.text
    for index in [*NON_ASCII, "-1", "1.5", "1e3", "+0", " 0", "9" * 30, str(BIG), "0x0"]:
        r = await admin.put(f"/api/upload/chunk/{heap}/blk-i/{h}/{index}", content=data)
        assert_error(r, 400, "bad_chunk_index")
    r = await admin.put(f"/api/upload/chunk/{heap}/blk-i/{h}/0", content=data)
    assert r.status_code == 200, r.text
    r = await admin.post(f"/api/upload/complete/{heap}/blk-i/{h}")
    assert r.status_code == 200 and r.json()["file_hash"] == h, r.text


async def test_upload_init_sizes_are_bounded(admin: HeaperClient) -> None:
    heap = await _heap(admin)
    h = hashlib.sha256(b"q").hexdigest()
    for field in ("size", "chunk_size"):
        for value, code in (
            (BIG, "invalid_value"),
            (OVER, "invalid_value"),
            (-1, "invalid_value"),
            (1.5, "invalid_type"),
            (True, "invalid_type"),
            (str(BIG), "invalid_type"),
        ):
            body = {"hash": h, "size": 1, "chunk_size": 1 << 20, field: value}
            r = await admin.post(f"/api/upload/init/{heap}/blk-s", json=body)
            err = assert_error(r, 400, code)
            assert err["field"] == f"body.{field}", err


async def test_sync_versions_are_bounded(admin: HeaperClient) -> None:
    heap = await _heap(admin)
    update = base64.b64encode(b"\x00\x00").decode()
    for value, code in (
        (BIG, "invalid_value"),
        (OVER, "invalid_value"),
        (-1, "invalid_value"),  # 0 is a client that never saw the block (test_edge_versions)
        (1.5, "invalid_type"),
        (True, "invalid_type"),
        ("3", "invalid_type"),
    ):
        r = await admin.post(
            "/api/sync/push",
            json={
                "blocks": [
                    {"block_id": "b", "workspace_id": heap, "update": update, "sync_version": value}
                ]
            },
        )
        assert_error(r, 400, code)
        r = await admin.post(
            "/api/sync/pull", json={"blocks": [{"block_id": "b", "sync_version": value}]}
        )
        assert_error(r, 400, code)


async def test_thumbnail_sizes_and_positions_take_ascii_digits_only(admin: HeaperClient) -> None:
    heap = await _heap(admin)
    data = b"GIF89a" + b"\x00" * 20
    h = hashlib.sha256(data).hexdigest()
    r = await admin.post(f"/api/upload/file/{heap}/blk-g", files={"file": ("a.gif", data)})
    assert r.status_code == 200, r.text
    for size in NON_ASCII:
        r = await admin.get(f"/api/file/{h}/thumbnail/{size}/a.gif")
        assert_error(r, 400, "bad_thumbnail_size")
    for position in ["١٢", "٣%", "1.٥", "-1", "1e3"]:
        r = await admin.get(f"/api/file/{h}/video_thumbnail/small/{position}")
        assert_error(r, 400, "bad_thumbnail_position")
