"""What a live connection may use of the services, and nothing more.

A connection authorizes documents, reads heap ownership, stores live updates, joins the hub,
counts itself and watches for shutdown. Handing it the whole ``Services`` container would let
it reach storage writes, uploads or scans without anyone noticing; this frozen context names the
few things it needs, so a reader sees the connection's reach at a glance and a test can build a
connection from fakes (under trio's fake clock, with no database thread to wait on).

Time: timers (keepalive, idle, auth, presence) run on ``trio.current_time()``, which a test's
``MockClock`` moves; token expiry is wall time (a JWT's ``exp``), read through ``wall_clock``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import trio

from heaper_trio.records import Heap, User
from heaper_trio.services.diagnostics import RealtimeCounters
from heaper_trio.services.live.hub import LiveHub

if TYPE_CHECKING:
    from heaper_trio.services.accounts import AccountService
    from heaper_trio.services.container import Services
    from heaper_trio.services.tokens import TokenService


@dataclass(frozen=True, slots=True)
class Verified:
    """An access token that checked out: whose it is, and until when (wall-clock seconds)."""

    user: User
    expires_at: float


@dataclass(eq=False)
class Grant:
    """One open document's authorization on a connection: whose, with which token, until when
    (wall-clock seconds), and whether the client was asked for a fresh token yet."""

    user: User
    token: str
    expires_at: float
    renewal_asked: bool = False


TokenVerifier = Callable[[str], Awaitable[Verified]]  # raises HeaperError with the reason code


class HeapLookup(Protocol):
    """The storage reads a connection makes: who owns a heap, which blocks are gone for good."""

    async def get_heap(self, heap_id: str) -> Heap | None: ...
    async def tombstones(self, block_ids: list[str]) -> dict[str, tuple[str, int]]: ...


class PushResult(Protocol):
    @property
    def status(self) -> str: ...
    @property
    def error(self) -> str | None: ...


class PushLive(Protocol):
    """``DocumentService.push_live``: store a live batch, answer once durable."""

    async def __call__(
        self,
        user: User,
        heap_id: str,
        block_id: str,
        updates: list[bytes],
        sync_version: int | None,
        origin: object,
        unchecked: bool = True,
    ) -> PushResult: ...


@dataclass(frozen=True, slots=True)
class AccessVerifier:
    """The token check of the HTTP routes (signature, expiry, revocation, account state),
    plus the token's expiry, which a live grant needs to ask for renewal in time."""

    accounts: AccountService
    tokens: TokenService

    async def __call__(self, token: str) -> Verified:
        user = await self.accounts.authenticate(token)
        return Verified(user, float(self.tokens.decode(token, "access").expires_at))


@dataclass(frozen=True, slots=True)
class LiveContext:
    hub: LiveHub
    counters: RealtimeCounters
    shutdown: trio.Event
    verify_token: TokenVerifier
    heaps: HeapLookup
    push_live: PushLive
    max_connections_per_user: int
    outbox_bytes: int
    wall_clock: Callable[[], float] = time.time

    @classmethod
    def of(cls, services: Services) -> LiveContext:
        return cls(
            hub=services.hub,
            counters=services.realtime,
            shutdown=services.shutdown,
            verify_token=AccessVerifier(services.accounts, services.tokens),
            heaps=services.storage,
            push_live=services.documents.push_live,
            max_connections_per_user=services.settings.ws_max_connections_per_user,
            outbox_bytes=services.settings.ws_outbox_bytes,
        )
