"""The access log of a real server: one line per request and per WebSocket, and the request
context on the lines written while serving one."""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from heaper_trio import logs
from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from tests.conftest import StartServer, assert_error
from tests.live_client import UNCLOSED_SOCKETS, collect_closed_sockets  # noqa: F401 (autouse)

pytestmark = [*UNCLOSED_SOCKETS]


# -- the access log of a real server ------------------------------------------------------------
def access_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """Each access line as the JSON format writes it."""
    fmt = logs.JsonFormatter()
    return [json.loads(fmt.format(r)) for r in caplog.records if r.name == logs.ACCESS_LOGGER]


async def wait_for_lines(caplog: pytest.LogCaptureFixture, count: int) -> list[dict[str, Any]]:
    """The line is written when the ASGI call ends, just after the client has its answer."""
    with trio.fail_after(10):
        while len(access_records(caplog)) < count:
            await trio.sleep(0.01)
    await trio.sleep(0.05)  # and no more come
    return access_records(caplog)


def half_closed_request(url: str, raw: bytes) -> bytes:
    """Send a request, shut the sending side (as HTTP/1.0 clients and ``nc`` do), read."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(raw)
        s.shutdown(socket.SHUT_WR)
        return s.recv(65536)


@pytest.mark.engines("sqlite")  # about HTTP, not storage
async def test_one_access_line_per_request_and_websocket(
    engine: str,
    start_server: StartServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    server: RunningServer = await start_server(access_log=True)
    async with HeaperClient(server.url) as c:
        await c.login()  # create_session, verify_session
        assert (await c.post("/api/heaps", json={})).status_code == 200
    user_id, token = c.user_id, c.access_token
    async with httpx.AsyncClient(base_url=server.url) as h:
        assert (await h.get("/api/no-such-route")).status_code == 404
    # hypercorn logged this one twice: status "-" at the client's EOF, then 200
    answer = await trio.to_thread.run_sync(
        half_closed_request, server.url, b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    # whether the app answers before it sees the EOF is a race (and hypercorn may drop an
    # answer the app sent after it): either way, one line
    assert answer == b"" or answer.startswith(b"HTTP/1.1 200")
    async with open_websocket_url(f"ws://{server.url[7:]}/ws?token={token}"):
        await trio.sleep(0.05)  # the connection's line comes at its end
    lines = await wait_for_lines(caplog, 6)
    health = "/api/health " + str(lines[4]["request"]["status"])
    assert health in ("/api/health 200", "/api/health 499")
    got = [
        (a.get("request") or a["connection"])["path"]
        + " "
        + str((a.get("request") or a["connection"])["status"])
        for a in lines
    ]
    assert got == [
        "/api/auth/create_session 200",
        "/api/auth/verify_session 200",
        "/api/heaps 200",
        "/api/no-such-route 404",
        health,
        "/ws 101",
    ], got
    heaps = lines[2]["request"]
    assert heaps["user_id"] == user_id and heaps["method"] == "POST" and heaps["bytes"] > 0
    assert heaps["remote"] == "127.0.0.1" and heaps["duration_ms"] >= 0
    assert "method" not in lines[5]["connection"]
    for rec in caplog.records:
        if rec.name == logs.ACCESS_LOGGER:
            assert rec.levelno == logging.INFO and rec.exc_info is None
            # one timestamp: the formatter's; the message itself has none
            assert "/Dec/" not in rec.getMessage() and "[" not in rec.getMessage()


@pytest.mark.engines("sqlite")
async def test_a_client_gone_before_the_answer_logs_499_once(
    engine: str, start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = await start_server(access_log=True)
    host, port = server.url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    # a body that never completes; the client leaves
    await stream.send_all(b"POST /api/heaps HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
    await trio.sleep(0.1)
    await stream.aclose()
    lines = await wait_for_lines(caplog, 1)
    assert [(a["request"]["path"], a["request"]["status"]) for a in lines] == [("/api/heaps", 499)]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records


@pytest.mark.engines("sqlite")
async def test_access_log_off_writes_no_line(
    engine: str, server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with httpx.AsyncClient(base_url=server.url) as h:
        assert (await h.get("/api/health")).status_code == 200
    assert access_records(caplog) == []


@pytest.mark.engines("sqlite")
async def test_a_500_logs_one_traceback_naming_the_request(
    engine: str,
    server: RunningServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO)
    async with HeaperClient(server.url) as c:
        await c.login()

        async def broken(*_: Any) -> None:
            raise RuntimeError("a bug")

        monkeypatch.setattr(server.services.storage, "list_heaps", broken)
        r = await c.post("/api/heaps", json={})
    assert_error(r, 500, "internal_error")
    with_traceback = [rec for rec in caplog.records if rec.exc_info]
    assert len(with_traceback) == 1, [rec.getMessage() for rec in with_traceback]
    out = json.loads(logs.JsonFormatter().format(with_traceback[0]))
    assert out["level"] == "ERROR" and "RuntimeError: a bug" in out["error"]
    assert out["request"] == {
        "method": "POST",
        "path": "/api/heaps",
        "remote": "127.0.0.1",
        "user_id": c.user_id,
    }


@pytest.mark.engines("sqlite")  # about HTTP, not storage
async def test_a_newline_in_the_path_cannot_forge_a_text_log_line(
    engine: str, start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The server percent-decodes the path (``%0A`` is a newline): logged raw, it let anyone
    write a second, forged access line into the text log (found in review)."""
    caplog.set_level(logging.INFO)
    server: RunningServer = await start_server(access_log=True)
    forged = '/nope%0A2026-12-02 INFO heaper_trio.access: 10.0.0.9 "POST /x" 200%1b[2J'
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get(forged)).status_code == 404
    (line,) = await wait_for_lines(caplog, 1)
    assert "\\x0a2026-12-02 INFO" in line["request"]["path"]
    assert "\\x1b[2J" in line["request"]["path"]
    text = logs.TextFormatter().format(
        next(r for r in caplog.records if r.name == logs.ACCESS_LOGGER)
    )
    assert "\n" not in text and "\x1b" not in text, text
