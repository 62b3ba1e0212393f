"""``/ws`` timers under trio's fake clock: idle and auth timeouts, keepalive pings, token
renewal and expiry, the periodic account check, presence expiry.

The connection runs in memory: a channel pair stands in for the socket and the
:class:`LiveContext` is built from fakes that answer without a thread, so ``autojump_clock``
can skip the minutes these timers take (a database thread would let the clock jump while a
query runs, and time a test out spuriously). Wall time (token expiry) follows the fake clock
through ``wall_clock``. The same paths over real sockets and real storage are in
tests/test_live_ws.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import trio
import trio.testing

from heaper_trio.errors import Unauthorized
from heaper_trio.protocol import messages as m
from heaper_trio.protocol.close_codes import CLOSE_TIMEOUT, CLOSE_UNAUTHORIZED
from heaper_trio.protocol.names import BlockName
from heaper_trio.protocol.presence import OUTDATED_AFTER_S
from heaper_trio.records import Heap, User
from heaper_trio.services.diagnostics import RealtimeCounters
from heaper_trio.services.live.connection import LiveConnection
from heaper_trio.services.live.context import LiveContext, Verified
from heaper_trio.services.live.hub import LiveHub, Subscription
from heaper_trio.services.live.legacy import LegacyEventsConnection
from heaper_trio.services.live.rooms import BUSY

EPOCH = 1_800_000_000.0  # wall-clock seconds when the connection opens
USER = User("u1", "pk", None, "approved", False, 0, 0, 0)


class MemoryTransport:
    """The server's end of a socket; the test holds the other."""

    def __init__(self) -> None:
        self.inbound, self._inbound = trio.open_memory_channel[bytes | str | None](100)
        self._outbound, self.outbound = trio.open_memory_channel[bytes | str](1000)
        self.closed: tuple[int, str] | None = None

    async def receive(self) -> bytes | str | None:
        return await self._inbound.receive()

    async def send(self, data: bytes | str) -> None:
        await self._outbound.send(data)

    async def send_many(self, frames: Iterable[bytes | str]) -> None:
        for frame in frames:
            await self._outbound.send(frame)

    def write_now(self, data: bytes | str) -> int:
        return BUSY  # no direct path: every frame goes through the connection's writer

    holding = False

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


@dataclass
class Accounts:
    """Tokens the fake verifier knows: token -> expiry, in seconds after the connection
    opened. Revoked ones fail."""

    expiry: dict[str, float] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    checks: int = 0

    async def verify(self, token: str) -> Verified:
        self.checks += 1
        if token in self.revoked:
            raise Unauthorized("this token was revoked", code="token_revoked")
        if token not in self.expiry:
            raise Unauthorized("not a token", code="token_invalid")
        return Verified(USER, EPOCH + self.expiry[token])


class Storage:
    """Heaps owned by USER, no tombstones, every block new."""

    async def get_heap(self, heap_id: str) -> Heap:
        return Heap(heap_id, USER.id, "heap", "root", 0, 0)

    async def tombstones(self, block_ids: list[str]) -> dict[str, tuple[str, int]]:
        return {}

    async def load_block(self, block_id: str) -> None:
        return None


async def _no_push(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("nothing is stored in these tests")


@dataclass
class Live:
    transport: MemoryTransport
    conn: LiveConnection | LegacyEventsConnection
    accounts: Accounts
    hub: LiveHub
    done: trio.Event
    started: float

    def elapsed(self) -> float:
        """Fake seconds since the connection opened (MockClock starts at a random time)."""
        return trio.current_time() - self.started

    async def send(self, message: m.Message) -> None:
        await self.transport.inbound.send(m.encode(message))

    async def receive(self) -> m.Message:
        data = await self.transport.outbound.receive()
        assert isinstance(data, bytes)
        return m.decode_server_frame(data)

    async def expect(self, kind: type[Any]) -> Any:
        """The next message of ``kind``; pings on the way are answered, as a provider does."""
        while True:
            message = await self.receive()
            if isinstance(message, kind):
                return message
            if isinstance(message, m.Ping):
                await self.send(m.Pong())

    async def closed_with(self) -> tuple[int, str]:
        await self.done.wait()
        assert self.transport.closed is not None
        return self.transport.closed


def memory_context(accounts: Accounts | None = None, started: float = 0.0) -> LiveContext:
    """A live context over in-memory storage and accounts, its wall clock trio's clock from
    ``started`` on (unit tests drive connections with it, no server)."""
    storage = Storage()
    hub = LiveHub(
        SimpleNamespace(storage=storage, listeners=[]),  # type: ignore[arg-type]
        RealtimeCounters(),
    )
    return LiveContext(
        hub=hub,
        counters=hub.counters,
        shutdown=trio.Event(),
        verify_token=(accounts or Accounts()).verify,
        heaps=storage,
        push_live=_no_push,
        max_connections_per_user=10,
        outbox_bytes=1024 * 1024,
        wall_clock=lambda: EPOCH + trio.current_time() - started,
    )


@asynccontextmanager
async def live(connection_token: str | None = None, *, legacy: bool = False) -> AsyncIterator[Live]:
    accounts = Accounts()
    started = trio.current_time()
    ctx = memory_context(accounts, started)
    hub = ctx.hub
    transport = MemoryTransport()
    conn: LiveConnection | LegacyEventsConnection
    if legacy:
        conn = LegacyEventsConnection(transport, ctx, connection_token)
    else:
        conn = LiveConnection(transport, ctx, connection_token)
    done = trio.Event()

    async def run() -> None:
        try:
            await conn.run()
        finally:
            done.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        nursery.start_soon(run)
        yield Live(transport, conn, accounts, hub, done, started)
        nursery.cancel_scope.cancel()


async def test_a_silent_connection_is_closed_after_a_minute(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with live() as c:
        started = trio.current_time()
        with trio.fail_after(120):
            code, reason = await c.closed_with()
        assert (code, reason) == (CLOSE_TIMEOUT, "no message for too long")
        assert 60 < trio.current_time() - started <= 63


async def test_a_connection_without_an_authorized_document_is_closed_after_a_minute(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with live() as c:
        started = trio.current_time()
        with trio.fail_after(120):
            while not c.done.is_set():
                await c.send(m.Ping())  # lively, but never authorized
                assert isinstance(await c.receive(), m.Pong)
                await trio.sleep(10)
        assert c.transport.closed == (CLOSE_TIMEOUT, "no document authorized in time")
        assert 60 < trio.current_time() - started <= 72


async def test_a_quiet_v4_provider_is_pinged_and_an_older_one_is_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with live() as c:
        c.accounts.expiry["t"] = 3600
        await c.send(m.AuthToken("events", "t", "4.8.0"))
        await c.expect(m.Authenticated)
        quiet_from = trio.current_time()
        with trio.fail_after(30):
            await c.expect(m.Ping)
        assert 15 < trio.current_time() - quiet_from <= 18
    async with live() as c:
        c.accounts.expiry["t"] = 3600
        await c.send(m.AuthToken("events", "t", "3.2.0"))
        await c.expect(m.Authenticated)
        with trio.move_on_after(50):
            message = await c.receive()
            raise AssertionError(f"a v3 provider got {message}")


async def test_a_token_is_asked_for_before_it_expires_and_withdrawn_when_it_does(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with live() as c:
        c.accounts.expiry["t"] = 300  # five minutes from fake time 0
        await c.send(m.AuthToken("events", "t", "4.8.0"))
        await c.expect(m.Authenticated)
        with trio.fail_after(400):
            await c.expect(m.TokenRequest)
            assert 240 <= c.elapsed() <= 243  # 60 s before expiry, within a keepalive tick
            denied = await c.expect(m.PermissionDenied)
        assert denied.reason == "token_expired" and 300 <= c.elapsed() <= 303
        assert isinstance(c.conn, LiveConnection)
        assert not c.conn.grants and not c.transport.closed  # the socket stays


async def test_a_renewed_token_keeps_the_document(autojump_clock: trio.testing.MockClock) -> None:
    async with live() as c:
        c.accounts.expiry.update({"t": 300, "fresh": 3600})
        await c.send(m.AuthToken("events", "t", "4.8.0"))
        await c.expect(m.Authenticated)
        with trio.fail_after(300):
            await c.expect(m.TokenRequest)
        await c.send(m.AuthToken("events", "fresh", "4.8.0"))
        with trio.move_on_after(600):
            denied = await c.expect(m.PermissionDenied)
            raise AssertionError(f"a renewed token was withdrawn: {denied}")
        assert isinstance(c.conn, LiveConnection)
        assert c.conn.grants["events"].token == "fresh"


async def test_a_revoked_account_loses_its_documents_at_the_next_check(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with live() as c:
        c.accounts.expiry["t"] = 3600
        await c.send(m.AuthToken("events", "t", "4.8.0"))
        await c.expect(m.Authenticated)
        c.accounts.revoked.add("t")
        revoked_at = trio.current_time()
        with trio.fail_after(60):
            denied = await c.expect(m.PermissionDenied)
        assert denied.reason == "token_revoked"
        assert 30 < trio.current_time() - revoked_at <= 33  # RECHECK_ACCOUNT_S, per tick


async def test_the_legacy_channel_waits_a_minute_for_its_token(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with live(legacy=True) as c:
        with trio.fail_after(120):
            assert await c.closed_with() == (CLOSE_UNAUTHORIZED, "authenticate first")
        assert 60 <= c.elapsed() <= 61
    async with live(legacy=True) as c:
        c.accounts.expiry["t"] = 3600
        await trio.sleep(59)
        await c.transport.inbound.send('{"token": "t"}')
        with trio.fail_after(1):
            answer = await c.transport.outbound.receive()
        assert answer == '{"type":"authenticated","user_id":"u1"}'
        assert c.transport.closed is None


class Sink:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send_frame(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True


async def test_presence_not_renewed_expires_and_everyone_hears_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with live() as c:
        hub = c.hub
        name = BlockName("h", "b", None)
        owner, other = Sink(), Sink()
        mine = Subscription(owner, "h:b", name, USER.id)
        theirs = Subscription(other, "h:b", name, USER.id)
        await hub.join(mine)
        await hub.join(theirs)
        hub.awareness(mine, m.encode_awareness([m.AwarenessEntry(7, 1, '{"n":"a"}')]))
        await trio.testing.wait_all_tasks_blocked()
        assert len(hub.rooms["b"].presence) == 1
        set_at = trio.current_time()
        with trio.fail_after(60):
            while len(hub.rooms["b"].presence):
                await trio.sleep(1)
        assert OUTDATED_AFTER_S < trio.current_time() - set_at <= OUTDATED_AFTER_S + 6
        removal = m.decode_server_frame(other.frames[-1])
        assert isinstance(removal, m.Awareness)
        assert m.decode_awareness(removal.payload) == [m.AwarenessEntry(7, 2, "null")]
