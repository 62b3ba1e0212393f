"""HTTP/1.1 connections stay usable and get closed (issue 9, item 9; web/http_guard.py).

Raw sockets show what a client sees byte for byte: an answer sent before the request body was
read must leave the connection able to carry the next request (or say Connection: close and
close it), Connection: close from the client must close the socket, and a silent client must not
hold a socket forever. These are HTTP-layer tests, so they run on SQLite only.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient

from .conftest import StartServer
from .test_sync import new_heap

pytestmark = pytest.mark.engines("sqlite")

HASH = "ab" * 32
CHUNK_PATH = f"/api/upload/chunk/heap-x/blk-x/{HASH}/0"
HEALTH = b"GET /api/health HTTP/1.1\r\nHost: t\r\n\r\n"


class RawConnection:
    """One client socket, with just enough HTTP/1.1 parsing to read answers off it."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def open(cls, server: RunningServer) -> RawConnection:
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        return cls(await trio.open_tcp_stream(host, int(port)))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _more(self) -> bytes:
        data = await self.stream.receive_some(65536)
        self.buffer += data
        return data

    async def answer(self, timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
        """The next answer on this connection (fails the test if none comes)."""
        with trio.fail_after(timeout):
            while b"\r\n\r\n" not in self.buffer:
                if not await self._more():
                    raise AssertionError(f"connection closed without an answer: {self.buffer!r}")
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            lines = head.decode("latin1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:])
            }
            length = int(headers.get("content-length", "0"))
            while len(self.buffer) < length:
                if not await self._more():
                    raise AssertionError("connection closed in the middle of an answer")
            body, self.buffer = self.buffer[:length], self.buffer[length:]
            return status, headers, body

    async def closed_within(self, seconds: float) -> bool:
        """True if the server closes its end (EOF or reset) within ``seconds``."""
        with trio.move_on_after(seconds):
            try:
                while await self._more():
                    pass
            except trio.BrokenResourceError:
                pass
            return True
        return False

    async def aclose(self) -> None:
        await self.stream.aclose()


def request(method: str, path: str, body_length: int, *extra: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: t", f"Content-Length: {body_length}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# (name, request head, body length, expected status): each is answered before the body is read
EARLY = [
    (
        "chunk_put_bad_token",
        request("PUT", CHUNK_PATH, 200_000, "Authorization: Bearer nope"),
        200_000,
        401,
    ),
    ("unknown_route", request("PUT", "/api/nothing/here", 200_000), 200_000, 404),
    ("wrong_method", request("DELETE", "/api/health", 200_000), 200_000, 405),
    # limit_body refuses on Content-Length alone (max_request_bytes is 1024 below)
    (
        "json_too_large",
        request("POST", "/api/upload/init/heap-x/blk-x", 200_000, "Content-Type: application/json"),
        200_000,
        413,
    ),
]


@pytest.mark.parametrize("name,head,length,status", EARLY, ids=[e[0] for e in EARLY])
@pytest.mark.parametrize("body_timing", ["after_answer", "with_head"])
async def test_early_answer_leaves_the_connection_usable(
    start_server: StartServer, name: str, head: bytes, length: int, status: int, body_timing: str
) -> None:
    server = await start_server(max_request_bytes=1024)
    conn = await RawConnection.open(server)
    body = os.urandom(length)
    if body_timing == "with_head":
        await conn.send(head + body)
        first, headers, text = await conn.answer()
    else:  # the answer is out before a byte of the body: the case that wedged
        await conn.send(head)
        first, headers, text = await conn.answer()
        await conn.send(body)
    assert first == status, text
    assert json.loads(text)["success"] is False
    assert headers.get("connection", "").lower() != "close"  # small enough to be drained
    for _ in range(2):  # the same socket carries the next requests
        await conn.send(HEALTH)
        second, _, text = await conn.answer()
        assert second == 200, text
    await conn.aclose()


async def test_large_unread_body_is_answered_with_close_and_closed(
    start_server: StartServer,
) -> None:
    server = await start_server(max_request_bytes=1024, http_read_timeout=1.0)
    for head in (
        request("PUT", CHUNK_PATH, 50_000_000, "Authorization: Bearer nope"),
        request("POST", "/api/upload/init/heap-x/blk-x", 50_000_000),
    ):
        conn = await RawConnection.open(server)
        await conn.send(head + os.urandom(100_000))  # and then nothing more
        status, headers, text = await conn.answer()
        assert status in (401, 413), text
        assert headers["connection"].lower() == "close"
        assert await conn.closed_within(4), "the server kept the connection open"
        await conn.aclose()
    conn = await RawConnection.open(server)  # the server itself is fine
    await conn.send(HEALTH)
    assert (await conn.answer())[0] == 200
    await conn.aclose()


async def test_chunked_body_answered_early_closes(start_server: StartServer) -> None:
    server = await start_server(http_read_timeout=1.0)
    conn = await RawConnection.open(server)
    await conn.send(
        b"PUT /api/nothing HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"10\r\n0123456789abcdef\r\n"
    )
    status, headers, _ = await conn.answer()
    assert status == 404 and headers["connection"].lower() == "close"
    assert await conn.closed_within(4)
    await conn.aclose()


@pytest.mark.parametrize("with_body", [False, True])
async def test_connection_close_from_the_client_closes_the_socket(
    server: RunningServer, with_body: bool
) -> None:
    conn = await RawConnection.open(server)
    if with_body:
        await conn.send(request("PUT", "/api/nothing", 5000, "Connection: close") + b"x" * 5000)
    else:
        await conn.send(b"GET /api/health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    status, headers, _ = await conn.answer()
    assert status == (404 if with_body else 200)
    assert headers["connection"].lower() == "close"
    assert await conn.closed_within(2), "Connection: close was not honoured"
    await conn.aclose()


@pytest.mark.parametrize("after_a_request", [False, True])
async def test_half_sent_head_is_closed_after_the_read_timeout(
    start_server: StartServer, after_a_request: bool
) -> None:
    server = await start_server(http_read_timeout=1.0)
    conn = await RawConnection.open(server)
    if after_a_request:  # the timer must restart once an answer is out
        await conn.send(HEALTH)
        assert (await conn.answer())[0] == 200
    started = trio.current_time()
    await conn.send(b"GET /api/health HTTP/1.1\r\nHost: t\r\nX-Slow: ")
    assert await conn.closed_within(4), "a half-sent request head held the socket"
    assert trio.current_time() - started >= 0.5  # closed by the timeout, not at once
    await conn.aclose()


async def test_idle_keep_alive_connection_is_closed(start_server: StartServer) -> None:
    server = await start_server(http_read_timeout=1.0)
    conn = await RawConnection.open(server)
    await conn.send(HEALTH)
    assert (await conn.answer())[0] == 200
    assert await conn.closed_within(4)
    await conn.aclose()


async def test_stalled_body_gets_408_and_is_closed(start_server: StartServer) -> None:
    server = await start_server(http_read_timeout=1.0)
    for head in (
        request(
            "POST",
            "/api/upload/init/heap-x/blk-x",
            100,
            "Content-Type: application/json",
            "Origin: https://app.example",
        ),
        request("PUT", "/api/nothing", 100),
    ):
        conn = await RawConnection.open(server)
        await conn.send(head + b'{"size": 1')  # and then nothing
        status, headers, text = await conn.answer(timeout=5)
        if status == 404:  # a route that never reads the body answers at once
            assert headers.get("connection", "").lower() != "close"
            await conn.send(b"x" * 90)  # ...and the rest is drained
            await conn.send(HEALTH)
            assert (await conn.answer())[0] == 200
        else:
            assert status == 408, text
            assert json.loads(text)["error"] == "request_timeout"
            assert headers["connection"].lower() == "close"
            assert headers["access-control-allow-origin"] == "https://app.example"
            assert await conn.closed_within(2)
        await conn.aclose()


def _server_sockets(port: int) -> int:
    """Sockets this process holds that are connections accepted on ``port`` (not the listener)."""
    accepted: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] != "0A":  # 0A: LISTEN
                accepted.add(fields[9])  # inode
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in accepted:
            count += 1
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
async def test_300_connection_close_requests_leave_no_server_sockets(server: RunningServer) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    conns: list[RawConnection] = []
    not_closed = 0
    limit = trio.Semaphore(30)

    async def one() -> None:
        nonlocal not_closed
        async with limit:
            conn = await RawConnection.open(server)
            conns.append(conn)
            await conn.send(b"GET /api/health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            status, _, _ = await conn.answer(timeout=20)
            assert status == 200
            if not await conn.closed_within(5):
                not_closed += 1

    async with trio.open_nursery() as nursery:
        for _ in range(300):
            nursery.start_soon(one)
    # Our ends are all still open: whatever closed the server's ends, it was not us.
    assert not_closed == 0
    assert _server_sockets(port) == 0
    for conn in conns:
        await conn.aclose()


async def _token_and_upload(admin: HeaperClient, size: int) -> tuple[str, str, bytes]:
    heap_id = (await new_heap(admin))["id"]
    data = os.urandom(size)
    digest = hashlib.sha256(data).hexdigest()
    r = await admin.post(
        f"/api/upload/init/{heap_id}/blk-retry",
        json={"hash": digest, "size": size, "chunk_size": size},
    )
    assert r.status_code == 200, r.text
    return f"/api/upload/chunk/{heap_id}/blk-retry/{digest}/0", digest, data


def _client_port(response: httpx.Response) -> Any:
    return response.extensions["network_stream"].get_extra_info("client_addr")


@pytest.mark.parametrize("size", [512 * 1024, 3 * 1024 * 1024])
async def test_httpx_client_retries_a_chunk_after_401_on_the_same_pool(
    admin: HeaperClient, http: httpx.AsyncClient, size: int
) -> None:
    path, _, data = await _token_and_upload(admin, size)
    token = admin.access_token
    assert token is not None
    stale = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    r = await http.put(path, content=data, headers={"Authorization": f"Bearer {stale}"})
    assert r.status_code == 401, r.text
    drained = size <= 1024 * 1024
    assert (r.headers.get("connection", "").lower() == "close") is not drained
    first = _client_port(r) if drained else None  # (a closed connection has no address)
    await admin.login()  # the client gets a fresh token and tries again, same httpx client
    r = await http.put(path, content=data, headers=admin.auth_headers())
    assert r.status_code == 200, r.text
    assert r.json()["success"] is True
    if drained:  # the very same connection carried the retry
        assert _client_port(r) == first
    r = await http.get("/api/health")
    assert r.status_code == 200


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
async def test_a_client_that_connects_and_leaves_frees_its_socket_at_once(
    start_server: StartServer,
) -> None:
    """Connect-and-close must not pin a descriptor for the keep-alive timeout: hypercorn's idle
    timer otherwise keeps the connection's task group (and its socket) alive until it fires,
    so a client looping connect/close could exhaust the server's descriptors."""
    server = await start_server(http_read_timeout=60)
    port = int(server.url.rsplit(":", 1)[1])
    for _ in range(100):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.aclose()
    conn = await RawConnection.open(server)  # and one that leaves after a request
    await conn.send(HEALTH)
    assert (await conn.answer())[0] == 200
    await conn.aclose()
    with trio.fail_after(5):
        while _server_sockets(port):
            await trio.sleep(0.05)
