"""Slow uploads cannot take the server from other users (issue 9: bounded work for any input).

A reviewer ran the process out of file descriptors with ~10,000 chunk PUTs that each sent a
byte every 20 s: every one held a socket and a temp file, and other users got 500s. Now one
user has at most ``max_uploads_per_user`` uploads in progress (429 beyond, before any file is
opened), a body must arrive at ``http_min_body_rate`` on average (408 past its deadline, nothing
half-written), running out of descriptors is a 503 with Retry-After, and the upload routes
answer a foreign heap with 403 before looking at its uploads. Real servers over real sockets;
timeouts are small so each test takes a few seconds.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import heaper_trio.services.files as files_module
from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.services import upload_layout

from .conftest import StartServer, assert_error
from .test_harden_http import RawConnection, request
from .test_sync import new_heap
from .test_uploads import CHUNK, sha

READ_TIMEOUT = 1.0
MIN_RATE = 32 * 1024  # a 64 KiB chunk has 1 + 2 = 3 s in all


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    """The ``admin``/``eve`` fixtures' server, with timeouts small enough for a test."""
    return await start_server(
        http_read_timeout=READ_TIMEOUT, http_min_body_rate=MIN_RATE, max_uploads_per_user=8
    )


def temp_files(server: RunningServer) -> list[Path]:
    return sorted(server.services.files.uploads.glob("**/*.part"))


def writers(server: RunningServer) -> list[str]:
    """Chunk bodies being written: a temporary file each, or the upload's one file open."""
    found = [str(p) for p in temp_files(server)]
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(server.services.files.uploads)) and target.endswith("/data"):
            found.append(target)
    return found


async def pending_upload(
    client: HeaperClient, data: bytes, block: str = "blk-slow"
) -> tuple[str, str]:
    """A heap of the client's with a resumable upload of ``data`` started: (heap id, path of
    chunk 0 without the index)."""
    heap_id = (await new_heap(client))["id"]
    r = await client.post(
        f"/api/upload/init/{heap_id}/{block}",
        json={"hash": sha(data), "size": len(data), "chunk_size": CHUNK, "name": "f.bin"},
    )
    assert r.status_code == 200 and r.json()["status"] == "ready", r.text
    return heap_id, f"/api/upload/chunk/{heap_id}/{block}/{sha(data)}/"


async def open_slow_put(server: RunningServer, client: HeaperClient, path: str) -> RawConnection:
    """A chunk PUT announcing CHUNK bytes whose body has only just begun."""
    conn = await RawConnection.open(server)
    await conn.send(
        request(
            "PUT",
            path,
            CHUNK,
            f"Authorization: Bearer {client.access_token}",
            "Content-Type: application/octet-stream",
        )
        + b"x"
    )
    return conn


async def trickle(conn: RawConnection, every: float, size: int = 1) -> None:
    """Just often enough that no single gap reaches the read timeout."""
    try:
        while True:
            await trio.sleep(every)
            await conn.send(b"x" * size)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the server cut it off


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


async def test_slow_chunk_puts_are_capped_per_user_and_cut_at_their_deadline(
    admin: HeaperClient, eve: HeaperClient, server: RunningServer
) -> None:
    data = os.urandom(CHUNK * 3)
    _, path = await pending_upload(admin, data)
    slots = server.services.files.slots
    conns = [await open_slow_put(server, admin, f"{path}{i % 3}") for i in range(8)]
    async with trio.open_nursery() as nursery:
        for conn in conns:
            nursery.start_soon(trickle, conn, READ_TIMEOUT / 4)
        # a slot is taken before the file opens (the same chunk twice: a file of its own)
        await wait_for(lambda: slots.held(admin.user_id) == 8 and len(writers(server)) == 8)

        # the 9th: 429 with the envelope and Retry-After, and no temp file of its own
        ninth = await RawConnection.open(server)
        await ninth.send(
            request("PUT", f"{path}0", CHUNK, f"Authorization: Bearer {admin.access_token}")
            + data[:CHUNK]
        )
        status, headers, body = await ninth.answer()
        assert status == 429, body
        answer = json.loads(body)
        assert answer["success"] is False and answer["error"] == "rate_limited", answer
        assert int(headers["retry-after"]) > 0
        assert len(writers(server)) == 8
        await ninth.aclose()
        # a one-request upload counts too: refused before its multipart body is read
        direct = await RawConnection.open(server)
        await direct.send(
            request(
                "POST",
                f"/api/upload/file/{path.split('/')[4]}/blk-direct",
                200_000,
                f"Authorization: Bearer {admin.access_token}",
                "Content-Type: multipart/form-data; boundary=xyz",
            )
            + b"--xyz\r\n"
        )
        status, headers, body = await direct.answer(timeout=READ_TIMEOUT * 0.8)
        assert status == 429 and json.loads(body)["error"] == "rate_limited", body
        assert int(headers["retry-after"]) > 0
        await direct.aclose()

        # another user is not held up by it
        other = os.urandom(CHUNK + 10)
        eve_heap, eve_path = await pending_upload(eve, other, block="blk-eve")
        for i in range(2):
            r = await eve.put(f"{eve_path}{i}", content=other[i * CHUNK : (i + 1) * CHUNK])
            assert r.status_code == 200, r.text
        r = await eve.post(f"/api/upload/complete/{eve_heap}/blk-eve/{sha(other)}")
        assert r.status_code == 200 and r.json()["status"] == "complete", r.text
        assert slots.held(admin.user_id) == 8  # all that happened while the 8 were held

        # a client that goes away gives its slot back at once...
        for conn in conns[:3]:
            await conn.aclose()
        await wait_for(lambda: slots.held(admin.user_id) == 5)
        # ...and the rest are cut at their deadline: 408, closed, nothing half-written
        for conn in conns[3:]:
            status, headers, body = await conn.answer(timeout=READ_TIMEOUT + CHUNK / MIN_RATE + 3)
            assert status == 408, body
            assert json.loads(body)["error"] == "request_timeout"
            assert headers["connection"].lower() == "close"
            assert await conn.closed_within(2)
        nursery.cancel_scope.cancel()
    await wait_for(lambda: slots.held(admin.user_id) == 0)
    assert temp_files(server) == []
    for i in range(3):  # the user can upload again, and the upload completes
        r = await admin.put(f"{path}{i}", content=data[i * CHUNK : (i + 1) * CHUNK])
        assert r.status_code == 200, r.text
    heap_id = path.split("/")[4]
    r = await admin.post(f"/api/upload/complete/{heap_id}/blk-slow/{sha(data)}")
    assert r.status_code == 200 and r.json()["status"] == "complete", r.text
    for conn in conns[3:]:
        await conn.aclose()


async def test_a_body_below_the_minimum_rate_gets_408_and_leaves_nothing(
    admin: HeaperClient, server: RunningServer
) -> None:
    data = os.urandom(CHUNK)
    _, path = await pending_upload(admin, data)
    conn = await open_slow_put(server, admin, f"{path}0")
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        # 4 KiB every quarter of the read timeout: 16 KiB/s, never a stall, half MIN_RATE
        nursery.start_soon(trickle, conn, READ_TIMEOUT / 4, 4096)
        await wait_for(lambda: len(writers(server)) == 1)
        status, headers, body = await conn.answer(timeout=READ_TIMEOUT + CHUNK / MIN_RATE + 3)
        nursery.cancel_scope.cancel()
    elapsed = trio.current_time() - started
    assert status == 408, body
    assert json.loads(body)["error"] == "request_timeout"
    assert headers["connection"].lower() == "close"
    # cut at its deadline (1 s + 64 KiB / 32 KiB/s), long before the body would have been in
    assert READ_TIMEOUT + CHUNK / MIN_RATE - 0.5 < elapsed < READ_TIMEOUT + CHUNK / MIN_RATE + 1.5
    assert await conn.closed_within(2)
    await conn.aclose()
    await wait_for(lambda: server.services.files.slots.held(admin.user_id) == 0)
    assert temp_files(server) == []
    r = await admin.get(path.replace("/chunk/", "/status/").rstrip("/"))
    assert r.json()["received"] == [], r.text


@pytest.mark.engines("sqlite")
async def test_a_slow_chunked_body_on_any_route_gets_408(server: RunningServer) -> None:
    """Not only uploads: a body of unknown length must keep up with the rate too."""
    conn = await RawConnection.open(server)
    await conn.send(
        b"POST /api/upload/init/heap-x/blk-x HTTP/1.1\r\nHost: t\r\n"
        b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
    )
    started = trio.current_time()
    async with trio.open_nursery() as nursery:

        async def dribble() -> None:
            try:
                while True:
                    await conn.send(b"1\r\n \r\n")  # one byte a chunk, 4 a second
                    await trio.sleep(READ_TIMEOUT / 4)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        nursery.start_soon(dribble)
        status, _, body = await conn.answer(timeout=READ_TIMEOUT + 4)
        nursery.cancel_scope.cancel()
    assert status == 408, body
    assert trio.current_time() - started < READ_TIMEOUT + 1.5
    await conn.aclose()


async def test_out_of_file_descriptors_is_503_with_retry_after(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(CHUNK)
    _, path = await pending_upload(admin, data)

    def no_fds(path: Path, *args: Any) -> Any:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(files_module, "_open_temp", no_fds)
    monkeypatch.setattr(upload_layout, "open_data", no_fds)
    r = await admin.put(f"{path}0", content=data)
    body = assert_error(r, 503, "server_busy")
    assert "internal" not in body["message"]
    assert int(r.headers["retry-after"]) > 0
    assert server.services.files.slots.held(admin.user_id) == 0
    monkeypatch.undo()
    r = await admin.put(f"{path}0", content=data)  # and the client's retry works
    assert r.status_code == 200, r.text


async def test_foreign_upload_routes_answer_403_whether_or_not_an_upload_exists(
    admin: HeaperClient, eve: HeaperClient
) -> None:
    data = os.urandom(CHUNK + 1)
    heap_id, _ = await pending_upload(admin, data, block="blk-a")  # admin's, in progress
    idle = sha(b"no upload of this anywhere")
    answers = []
    for h in (sha(data), idle):
        for method, path, kw in (
            ("POST", f"/api/upload/complete/{heap_id}/blk-a/{h}", {}),
            ("PUT", f"/api/upload/chunk/{heap_id}/blk-a/{h}/0", {"content": b"x"}),
            ("GET", f"/api/upload/status/{heap_id}/blk-a/{h}", {}),
            ("GET", f"/api/status/file/{heap_id}/blk-a/{h}", {}),
            (
                "POST",
                f"/api/upload/init/{heap_id}/blk-a",
                {"json": {"hash": h, "size": len(data), "chunk_size": CHUNK}},
            ),
        ):
            r = await eve.request(method, path, **kw)
            assert_error(r, 403, "heap_forbidden")
            answers.append((method, path.replace(h, "H"), r.status_code, r.json()))
    assert answers[:5] == answers[5:]  # nothing tells the two apart
    r = await admin.get(f"/api/upload/status/{heap_id}/blk-a/{sha(data)}")
    assert r.json()["status"] == "uploading", r.text  # and admin's upload is untouched


@pytest.mark.engines("sqlite")
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
async def test_accept_out_of_descriptors_is_logged_sparingly_and_recovers(
    tmp_path: Path, engine: str
) -> None:
    """A server process out of descriptors: trio's accept loop sleeps and retries (it does not
    spin), our filter keeps its traceback to one every few seconds, and once connections go,
    new ones are served again. A separate process, because its fd limit is lowered."""
    import resource
    import subprocess
    import sys

    from .test_cli import _env, _free_port
    from .test_crash import Server

    server = Server.__new__(Server)  # as test_crash starts one, with a short read timeout
    server.port = _free_port()
    server.url = f"http://127.0.0.1:{server.port}"
    server.log_path = tmp_path / "server.log"
    with server.log_path.open("wb") as log:
        server.proc = subprocess.Popen(  # noqa: ASYNC220 (as test_crash.Server does)
            [
                sys.executable,
                "-m",
                "heaper_trio",
                "--port",
                str(server.port),
                "--data-dir",
                str(tmp_path / "data"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(HEAPER_HTTP_READ_TIMEOUT="2"),
        )
    conns: list[trio.SocketStream] = []
    try:
        await server.wait_ready()
        pid = server.proc.pid
        in_use = len(os.listdir(f"/proc/{pid}/fd"))
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 16, in_use + 16))
        for _ in range(48):  # more than it may open; the rest wait in the listen backlog
            conns.append(await trio.open_tcp_stream("127.0.0.1", server.port))
        with trio.fail_after(5):
            while "EMFILE" not in server.log():
                await trio.sleep(0.05)
        ticks = os.sysconf("SC_CLK_TCK")

        def cpu() -> float:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / ticks

        before = cpu()
        await trio.sleep(2)
        assert cpu() - before < 0.5  # sleeping between accepts, not spinning
        assert server.log().count("accept returned EMFILE") <= 2, server.log()[-2000:]
        for conn in conns:
            await conn.aclose()
        conns.clear()
        # (hypercorn holds a connection closed before its first request until its idle
        # timeout, http_read_timeout: only then are the descriptors free again)
        with trio.fail_after(10):
            async with httpx.AsyncClient(timeout=8) as c:
                assert (await c.get(server.url + "/api/health")).status_code == 200
    finally:
        for conn in conns:
            await conn.aclose()
        server.stop()
