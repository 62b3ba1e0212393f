"""Shutdown of a real ``python -m heaper_trio``: open connections do not hold it up.

Before, a server with an idle keep-alive connection and an open WebSocket took the whole
``graceful_timeout`` (5.4 s measured) to exit after SIGTERM, though it closed the WebSocket
with 1001 at once: hypercorn's ping loop slept on in the connection's task
(``quart_compat.end_pings_with_the_stream``). An in-flight request still gets to finish.

The test holds the wall clock to a bound (exit within 1 s), which a loaded machine can break:
it is ``serial`` (runs alone after the parallel part of the suite).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from heaper_trio.client import HeaperClient
from tests.live_client import UNCLOSED_SOCKETS, collect_closed_sockets  # noqa: F401 (autouse)

# trio-websocket leaves the socket of a connection the server closed to the garbage collector
pytestmark = [pytest.mark.serial, pytest.mark.slow, *UNCLOSED_SOCKETS]

GRACEFUL_S = 5.0


class Server:
    """A server process on SQLite, logging JSON lines (the access log on) to stderr."""

    def __init__(self, data_dir: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEAPER_")}
        env.update(
            HEAPER_PORT=str(self.port),
            HEAPER_DATA_DIR=str(data_dir),
            HEAPER_LOG_FORMAT="json",
            HEAPER_ACCESS_LOG="true",
            HEAPER_GRACEFUL_TIMEOUT=str(GRACEFUL_S),
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "heaper_trio"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.signalled_at = 0.0
        self.early: list[str] = []  # lines read before it served

    async def wait_ready(self) -> None:
        """Until the server logs that it serves (no connection attempts before it listens)."""
        assert self.proc.stderr is not None
        with trio.fail_after(60):
            while True:
                line = await trio.to_thread.run_sync(self.proc.stderr.readline)
                assert line, "the server exited before serving"
                self.early.append(line)
                if "serving on" in line:
                    return

    def terminate(self) -> None:
        self.signalled_at = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)

    async def exited_after(self) -> float:
        """Seconds from SIGTERM to the process's exit."""
        await trio.to_thread.run_sync(self.proc.wait, 30)
        return time.monotonic() - self.signalled_at

    def log_lines(self) -> list[dict[str, Any]]:
        _, err = self.proc.communicate(timeout=30)
        return [json.loads(line) for line in [*self.early, *err.splitlines()]]  # all JSON

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def access_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line["logger"] == "heaper_trio.access"]


async def test_open_connections_do_not_delay_exit_and_a_request_in_flight_finishes(
    tmp_path: Path,
) -> None:
    """One server (a process start is the expensive part): an idle keep-alive connection, an
    open WebSocket and a request whose body is still arriving when SIGTERM comes."""
    server = Server(tmp_path / "data")
    try:
        await server.wait_ready()
        async with (
            HeaperClient(server.url) as c,
            httpx.AsyncClient(base_url=server.url) as idle,
            httpx.AsyncClient(base_url=server.url) as slow,
        ):
            await c.login()
            assert (await idle.get("/api/health")).status_code == 200  # then kept alive, idle
            part_sent, rest_may_go = trio.Event(), trio.Event()

            async def slow_body() -> Any:
                yield b'{"na'
                part_sent.set()
                await rest_may_go.wait()
                yield b'me": "late"}'

            answers: list[httpx.Response] = []

            async def post() -> None:
                headers = {"Authorization": f"Bearer {c.access_token}"}
                answers.append(
                    await slow.post(
                        "/api/heap/add",
                        content=slow_body(),
                        headers={**headers, "Content-Type": "application/json"},
                    )
                )

            url = f"ws://127.0.0.1:{server.port}/ws?token={c.access_token}"
            async with open_websocket_url(url) as ws, trio.open_nursery() as nursery:
                nursery.start_soon(post)
                await part_sent.wait()
                await trio.sleep(0.1)  # the request's head and part of its body are in
                server.terminate()
                with trio.fail_after(GRACEFUL_S), pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await ws.get_message()
                ws_closed = time.monotonic() - server.signalled_at
                assert closed.value.reason.code == 1001  # going away, not 1006
                await trio.sleep(0.3)
                assert server.proc.poll() is None  # it waits for the request in flight
                rest_may_go.set()
            answered = time.monotonic() - server.signalled_at
            took = await server.exited_after()
        assert [r.status_code for r in answers] == [200], answers[0].text
        assert ws_closed < 1.0, f"the WebSocket closed {ws_closed:.2f} s after SIGTERM"
        # nothing else holds it: the idle connection and the closed WebSocket did for 5 s
        assert took - answered < 1.0, f"exit {took - answered:.2f} s after the last answer"
        assert server.proc.returncode == 0
        lines = server.log_lines()
    finally:
        server.kill()
    assert not [line for line in lines if "error" in line or line["level"] == "ERROR"], lines
    ws_lines = [a for a in access_lines(lines) if "connection" in a]
    assert [a["connection"]["close_code"] for a in ws_lines] == [1001], ws_lines
    added = [a for a in access_lines(lines) if a.get("request", {}).get("path") == "/api/heap/add"]
    assert [a["request"]["status"] for a in added] == [200]
