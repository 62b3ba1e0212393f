"""The hot JSON routes served as raw ASGI (``web/hot_routes.py``) answer byte for byte as Quart
does: the same requests, over real sockets on both engines, once through the hot path and
once with it emptied (Quart answers), must give the same status line, headers and body (the
``date`` header and the clock-dependent numbers aside)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.web import hot_routes

from .test_harden_http import HEALTH, RawConnection, request
from .test_sync import new_heap


async def exchange(server: RunningServer, head: str, body: bytes = b"") -> bytes:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
    async with stream:
        out = b""
        with trio.fail_after(10):
            await stream.send_all(head.encode() + body)
            while data := await stream.receive_some(65536):
                out += data
    head_bytes, _, body_bytes = re.sub(rb"date: [^\r]*", b"date: -", out).partition(b"\r\n\r\n")
    body_bytes = re.sub(rb'"(uptime_s|round_trip_ms|server_time)":[0-9.]+', rb'"\1":0', body_bytes)
    head_bytes = re.sub(
        rb"content-length: [0-9]+", b"content-length: %d" % len(body_bytes), head_bytes
    )
    return head_bytes + b"\r\n\r\n" + body_bytes


def post(path: str, token: str, body: bytes, *extra: str) -> tuple[str, bytes]:
    length = [] if any(e.startswith("Content-Length") for e in extra) else [len(body)]
    lines = [f"POST {path} HTTP/1.1", "Host: t", *[f"Content-Length: {n}" for n in length]]
    lines += extra
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return "\r\n".join([*lines, "Connection: close", "", ""]), body


def put(path: str, token: str, body: bytes, *extra: str) -> tuple[str, bytes]:
    head, body = post(path, token, body, *extra)
    return "PUT" + head.removeprefix("POST"), body


def get(path: str, token: str, *extra: str) -> tuple[str, bytes]:
    lines = [f"GET {path} HTTP/1.1", "Host: t", *extra]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return "\r\n".join([*lines, "Connection: close", "", ""]), b""


async def test_hot_routes_answer_as_quart_does(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    heap_id = (await new_heap(admin))["id"]
    t = admin.access_token or ""
    origin = "Origin: https://app.example"
    cases = [
        get("/api/health", ""),
        get("/api/health?x=1", "", origin),
        get("/api/health?x=%00", ""),
        post("/api/me", t, b"{}", "Content-Type: application/json"),
        post("/api/me", t, b"", origin),
        post("/api/me", "", b"{}"),
        post("/api/me", "not-a-token", b"{}"),
        post("/api/me", t, b"{x"),
        post("/api/me", t, b"[]"),
        post("/api/me", t, b'"\\u0000"'),
        post("/api/sync/push", t, b'{"blocks":[]}', origin),
        post("/api/sync/push", t, b'{"blocks":1}'),
        post("/api/sync/push", t, b'{"blocks":[{"block_id":"b","workspace_id":"w","update":"!"}]}'),
        post(
            "/api/sync/pull",
            t,
            f'{{"blocks":[{{"block_id":"nope","workspace_id":"{heap_id}"}}]}}'.encode(),
        ),
        post(
            "/api/sync/pull",
            t,
            b'{"blocks":[' + b'{"block_id":"b"},' * 1000 + b'{"block_id":"b"}]}',
        ),
        get(f"/api/sync/delta?workspace_id={heap_id}", t),
        get(f"/api/sync/delta?heap_id={heap_id}&since=x&limit=5", t, origin),
        get("/api/sync/delta", t),
        get("/api/sync/delta?workspace_id=zz&limit=x", t),
        get("/api/sync/delta?workspace_id=somebody-elses", t),
        get("/api/sync/delta?workspace_id=w", ""),
    ]
    data = os.urandom(100_000)
    h = hashlib.sha256(data).hexdigest()
    r = await admin.post(
        f"/api/upload/init/{heap_id}/blk-u",
        json={"hash": h, "size": len(data), "chunk_size": 65536},
    )
    assert r.status_code == 200, r.text
    chunk = f"/api/upload/chunk/{heap_id}/blk-u/{h}"
    cases += [
        put(f"{chunk}/0", t, data[:65536], origin),
        put(f"{chunk}/1", t, data[:10]),
        put(f"{chunk}/1", t, data[:40_000]),  # longer than chunk 1: the body left unfinished
        put(f"{chunk}/7", t, b"x"),
        put(f"/api/upload/chunk/{heap_id}/blk-u/{'0' * 64}/0", t, b"x"),
        put(f"/api/upload/chunk/{heap_id}/blk-u/nothex/0", t, b"x"),
        put(f"{chunk}/0", "", data[:65536]),
        put(f"{chunk}/x", t, b"x"),
    ]
    hot = [await exchange(server, head, body) for head, body in cases]
    monkeypatch.setattr(hot_routes, "SERVED", {})
    quart = [await exchange(server, head, body) for head, body in cases]
    for (head, _), ours, theirs in zip(cases, hot, quart, strict=True):
        assert ours == theirs, head
    assert [a.split(b" ", 2)[1] for a in hot] == [
        b"200", b"200", b"400", b"200", b"200", b"401", b"401", b"400", b"400", b"400",
        b"200", b"400", b"422", b"200", b"413", b"200", b"200", b"400", b"400",
        b"403", b"401", b"200", b"400", b"400", b"400", b"404", b"400", b"401", b"400",
    ]  # fmt: skip


@pytest.mark.engines("sqlite")  # the HTTP layer only
async def test_a_hot_route_answered_before_its_body_keeps_the_connection(
    start_server: Any,
) -> None:
    server = await start_server(max_request_bytes=1024)
    for timing in ("with_head", "after_answer"):
        conn = await RawConnection.open(server)
        head = request("POST", "/api/me", 200_000, "Content-Type: application/json")
        await conn.send(head + (os.urandom(200_000) if timing == "with_head" else b""))
        status, headers, text = await conn.answer()
        if timing == "after_answer":
            await conn.send(os.urandom(200_000))
        assert status == 413 and json.loads(text)["error"] == "payload_too_large", text
        assert headers.get("connection", "").lower() != "close"
        await conn.send(HEALTH)
        assert (await conn.answer())[0] == 200
        await conn.aclose()
