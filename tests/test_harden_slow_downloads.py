"""A download whose client stops reading does not hold its socket and file for ever
(web/send_bound.py).

hypercorn wrote each piece of an answer in a shielded ``send_all`` with no time limit: a client
that asked for a file and then read nothing kept the response's task, its open file and its
socket until it went away, and a server shutdown waited on it too. Now a write that blocks has
``http_read_timeout`` plus the bytes the client accepts meanwhile over ``http_min_body_rate``.
Real servers over real sockets (the client's receive buffer made small so the server's writes
block soon); the timeouts are small so each test takes a few seconds.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import trio

from heaper_trio.app import RunningServer, run_server
from heaper_trio.client import HeaperClient
from heaper_trio.settings import Settings
from heaper_trio.web.send_bound import FINISH_SEND_S

from .conftest import StartServer
from .test_file_serving import upload
from .test_sync import new_heap

READ_TIMEOUT = 1.0
MIN_RATE = 64 * 1024
SIZE = 6 * 1024 * 1024  # far more than the kernel buffers between a stalled client and us


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    return await start_server(http_read_timeout=READ_TIMEOUT, http_min_body_rate=MIN_RATE)


async def stored_file(client: HeaperClient, size: int = SIZE) -> tuple[str, bytes]:
    """(hash, bytes) of a large file uploaded through the API."""
    data = os.urandom(size)
    heap = await new_heap(client)
    answer = await upload(
        client, heap["id"], "blk-big", data, "big.bin", "application/octet-stream"
    )
    return answer["file_hash"], data


async def download(url: str, client: HeaperClient, file_hash: str) -> trio.SocketStream:
    """A raw connection with a small receive buffer that has asked for the file."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((host, int(port)))
    stream = trio.SocketStream(sock)
    head = (
        f"GET /api/file/{file_hash}/raw/big.bin HTTP/1.1\r\nHost: t\r\n"
        f"Authorization: Bearer {client.access_token}\r\n\r\n"
    )
    await stream.send_all(head.encode())
    return stream


def file_open(file_hash: str) -> bool:
    """Whether this process (the server) has the stored file open."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if file_hash in os.readlink(f"/proc/self/fd/{fd}"):
                return True
        except OSError:
            continue
    return False


async def wait_until(predicate: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``predicate()`` holds (fails the test past ``timeout``)."""
    start = trio.current_time()
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)
    return trio.current_time() - start


async def read_all(stream: trio.SocketStream, timeout: float) -> bytes:
    """What the connection carries until the server ends it (EOF or reset)."""
    got = bytearray()
    with trio.fail_after(timeout):
        try:
            while data := await stream.receive_some(65536):
                got += data
        except trio.BrokenResourceError:
            pass
    return bytes(got)


async def test_a_client_that_stops_reading_is_cut_and_the_file_closed(
    admin: HeaperClient, server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="heaper_trio.web")
    file_hash, _ = await stored_file(admin)
    stream = await download(server.url, admin, file_hash)
    try:  # (closed in any case: without the fix the server would wait on it for ever)
        await wait_until(lambda: file_open(file_hash), 5)
        # The client reads nothing: the write blocks and is cut after the read timeout (the
        # bytes the kernel took before it blocked earn no time; nothing moves after)
        stalled = await wait_until(lambda: not file_open(file_hash), READ_TIMEOUT + 4)
        assert stalled < READ_TIMEOUT + 3
        got = await read_all(stream, 5)  # whatever was in flight, then the end
        assert got.startswith(b"HTTP/1.1 200") and len(got) < SIZE
    finally:
        await stream.aclose()
    cut = [r for r in caplog.records if "stopped reading" in r.getMessage()]
    assert len(cut) == 1, cut  # logged once
    # the server is fine: the next download is whole
    r = await admin.get(f"/api/file/{file_hash}/raw/big.bin")
    assert r.status_code == 200 and len(r.content) == SIZE


async def test_a_slow_steady_reader_gets_the_whole_file(
    admin: HeaperClient, server: RunningServer
) -> None:
    """512 KiB/s, eight times the minimum rate: each 1 MiB write of the body takes about two
    read timeouts, so a bound per write that ignored the client's progress would cut it."""
    file_hash, data = await stored_file(admin, 3 * 1024 * 1024)
    stream = await download(server.url, admin, file_hash)
    got = bytearray()
    head = b""
    start = trio.current_time()
    with trio.fail_after(60):
        while True:
            data_in = await stream.receive_some(32 * 1024)
            if not data_in:
                break
            got += data_in
            if not head and b"\r\n\r\n" in got:
                head, _, rest = bytes(got).partition(b"\r\n\r\n")
                got = bytearray(rest)
            if head and len(got) >= len(data):
                break
            # pace to 512 KiB/s on average
            due = start + (len(got) + len(head)) / (512 * 1024)
            await trio.sleep_until(max(due, trio.current_time()))
    await stream.aclose()
    assert head.startswith(b"HTTP/1.1 200")
    assert bytes(got) == data


async def test_shutdown_with_a_stalled_download_finishes_promptly(
    make_settings: Callable[..., Settings],
) -> None:
    """The default read timeout (30 s): shutdown must not wait for it, only for
    ``graceful_timeout`` and the cancelled write's grace."""
    shutdown = trio.Event()
    settings = make_settings(graceful_timeout=0.5)
    stuck: list[trio.SocketStream] = []
    took: list[float] = []
    limit = 0.5 + FINISH_SEND_S + 3

    async def watchdog(seconds: float) -> None:
        """Without the fix the server would wait on the stalled client for ever: end it."""
        await trio.sleep(seconds)
        for stream in stuck:
            await stream.aclose()

    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as serving:
            running: RunningServer = await serving.start(
                partial(run_server, settings, shutdown=shutdown)
            )
            client = HeaperClient(running.url)
            try:
                await client.login()
                file_hash, _ = await stored_file(client)
                stuck.append(await download(running.url, client, file_hash))
                await wait_until(lambda: file_open(file_hash), 5)
            finally:
                await client.aclose()
            await trio.sleep(0.3)  # the write is blocked now
            started = trio.current_time()
            shutdown.set()
            outer.start_soon(watchdog, limit + 5)
        took.append(trio.current_time() - started)
        outer.cancel_scope.cancel()
    for stream in stuck:
        await stream.aclose()
    assert took[0] < limit, f"shutdown took {took[0]:.1f} s"
    assert not file_open(file_hash)


def test_send_limits_come_from_the_settings(make_settings: Callable[..., Any]) -> None:
    from heaper_trio.app import hypercorn_config

    cfg = hypercorn_config(make_settings(http_read_timeout=7.0, http_min_body_rate=1000))
    assert cfg._heaper_send_limits == (7.0, 1000)
