"""PostgreSQL goes away under a running server and comes back: 503s meanwhile, two log lines.

The database sits behind a TCP proxy the test controls: ``down()`` cuts every connection and
refuses new ones (what a stopped or unreachable server looks like to asyncpg), ``up()`` takes
connections again. It is the real test database behind it, and it takes a second rather than
the several a second cluster's initdb, stop and start would (``scripts/pg_cluster.sh`` stop and
start gave the same two lines by hand: storage/postgres/outage.py).
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

import pytest
import trio

from heaper_trio.client import HeaperClient
from tests.conftest import StartServer, assert_error


class FlakyProxy:
    """A TCP forwarder on 127.0.0.1 that can go away and come back on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._scope = trio.CancelScope()

    async def up(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listener = (await trio.open_tcp_listeners(self.port, host="127.0.0.1"))[0]
        self.port = int(listener.socket.getsockname()[1])
        with trio.CancelScope() as self._scope:
            async with listener, trio.open_nursery() as pipes:
                task_status.started()
                while True:
                    pipes.start_soon(self._pipe, await listener.accept())

    def down(self) -> None:
        self._scope.cancel()  # closes the listener and every forwarded connection

    async def _pipe(self, client: trio.SocketStream) -> None:
        async with client:
            try:
                server = await trio.open_tcp_stream(*self.target)
            except OSError:
                return
            async with server, trio.open_nursery() as both:
                both.start_soon(self._copy, client, server, both.cancel_scope)
                both.start_soon(self._copy, server, client, both.cancel_scope)

    @staticmethod
    async def _copy(src: trio.SocketStream, dst: trio.SocketStream, done: trio.CancelScope) -> None:
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done.cancel()


@pytest.mark.engines("postgres")
async def test_an_outage_answers_503_and_logs_one_error_then_one_info(
    engine: str,
    database_url: str,
    start_server: StartServer,
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    parts = urlsplit(database_url)
    assert parts.hostname and parts.port
    proxy = FlakyProxy(parts.hostname, parts.port)
    await nursery.start(proxy.up)
    auth = f"{parts.username}@" if parts.username else ""
    dsn = urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{proxy.port}"))
    server = await start_server(database_url=dsn)
    async with HeaperClient(server.url) as c:
        await c.login()
        assert (await c.post("/api/heaps", json={})).status_code == 200
        caplog.clear()

        proxy.down()
        # every request meanwhile: the same 503 and code
        with trio.move_on_after(0.5):
            while True:
                assert_error(await c.post("/api/heaps", json={}), 503, "database_unavailable")
                await trio.sleep(0.05)

        await nursery.start(proxy.up)
        with trio.fail_after(15):
            while (await c.post("/api/heaps", json={})).status_code != 200:
                await trio.sleep(0.05)
        for _ in range(3):
            assert (await c.post("/api/heaps", json={})).status_code == 200
        await trio.sleep(1.0)  # and nothing reports the outage again

    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.levelname, r.getMessage().split(":")[0]) for r in problems] == [
        ("ERROR", "postgres unavailable")
    ], [r.getMessage() for r in problems]
    assert problems[0].exc_info is None  # a one-line reason, no traceback
    assert "\n" not in problems[0].getMessage()
    back = [r for r in caplog.records if "available again" in r.getMessage()]
    assert [r.levelname for r in back] == ["INFO"]
    assert server.services.storage.outage.outages == 1  # type: ignore[attr-defined]
