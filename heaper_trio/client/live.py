"""A live subscription to one block over ``/ws``, as a Hocuspocus provider does it.

Opening sends the token and the document's state vector (step 1) without waiting, then applies
the server's step 2 (what the document lacks) and answers the server's step 1 with what the
server lacks. From then on, updates of others are applied to the local pycrdt document as they
come (and can be awaited one by one), and local changes to it are sent as they are made; each
sent update is acknowledged by a ``SyncStatus`` once the server has stored it durably.
Frames are :mod:`heaper_trio.protocol.messages`, the codec the server itself uses. Runs under
trio (trio-websocket).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio
from pycrdt import TransactionEvent
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from heaper_trio.protocol import messages as m

if TYPE_CHECKING:
    from heaper_trio.client.blocks import LocalBlock
    from heaper_trio.client.session import HeaperClient

PROVIDER_VERSION = "4.8.0"  # the provider version we speak like (v4: the server pings)


class LiveRefused(Exception):
    """The server refused the document (``PermissionDenied``): ``reason`` says why
    (``forbidden``, ``block_deleted``, ``token_expired``, ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"live document refused: {reason}")
        self.reason = reason


class UpdateRefused(Exception):
    """The server answered ``SyncStatus(0)`` to updates we sent: nothing of them was stored
    (a stale ``sync_version``, an undecodable update)."""


@dataclass(frozen=True, slots=True)
class LiveUpdate:
    """An update of another client (or the server), already applied to the document."""

    update: bytes


def block_address(heap_id: str, block_id: str, sync_version: int | None = None) -> str:
    """The contract's document name: ``<heap_id>:<block_id>[:v<sync_version>]``."""
    return f"{heap_id}:{block_id}" + (f":v{sync_version}" if sync_version else "")


class LiveBlock:
    """One open block document. Use it through :meth:`Live.subscribe`."""

    def __init__(
        self,
        ws: WebSocketConnection,
        address: str,
        block: LocalBlock,
        token: str,
        renew_token: Callable[[str], Awaitable[str]],
    ) -> None:
        self.ws, self.address, self.block = ws, address, block
        self.doc = block.doc
        self.token_renewals = 0  # tokens sent again because the server asked (before expiry)
        self.token, self._renew_token = token, renew_token
        self.synced = trio.Event()
        self.stale_version: int | None = None  # set by a sync_version_mismatch event
        self.events: list[dict[str, Any]] = []  # stateless events on this document
        self._updates_in, self._updates_out = trio.open_memory_channel[LiveUpdate](math.inf)
        self._outbox_in, self._outbox_out = trio.open_memory_channel[bytes](math.inf)
        self._applying = False
        self._refused: LiveRefused | None = None
        self._sent = self._acked = self._failed = 0
        self._ack_changed = trio.Event()
        self._subscription = self.doc.observe(self._on_local_change)

    def _on_local_change(self, event: TransactionEvent) -> None:
        if not self._applying:  # what the server sent is not sent back
            self._sent += 1  # counted now: wait_stored() must wait for it from now on
            self._outbox_in.send_nowait(bytes(event.update))

    def _apply(self, update: bytes) -> None:
        self._applying = True
        try:
            self.doc.apply_update(update)
        finally:
            self._applying = False

    async def _send(self, message: m.Message) -> None:
        try:
            await self.ws.send_message(m.encode(message))
        except ConnectionClosed:  # the reader hears it too; what was unsent is unstored
            self._refuse("connection closed")

    async def _send_step2(self, message: m.SyncStep2) -> None:
        self._sent += 1  # the server answers each step 2 and update with one SyncStatus
        await self._send(message)

    async def _reader(self) -> None:
        while True:
            try:
                data = await self.ws.get_message()
            except ConnectionClosed:
                self._refuse("connection closed")
                return
            if not isinstance(data, bytes):
                continue
            await self._on_message(m.decode_server_frame(data))

    async def _on_message(self, msg: m.Message) -> None:
        if isinstance(msg, m.Ping):
            await self._send(m.Pong())
        elif getattr(msg, "address", self.address) != self.address:
            return
        elif isinstance(msg, m.SyncStep2):
            self._apply(msg.update)
        elif isinstance(msg, m.SyncUpdate):
            self._apply(msg.update)
            if self.synced.is_set() and self._refused is None:
                self._updates_in.send_nowait(LiveUpdate(msg.update))
        elif isinstance(msg, m.SyncStep1):
            # the server sends its step 1 after its step 2 (and after a sync_version_mismatch
            # event): once answered, the first sync is done both ways
            await self._send_step2(m.SyncStep2(self.address, self.doc.get_update(msg.state_vector)))
            self.synced.set()
        elif isinstance(msg, m.SyncStatus):
            if msg.applied:
                self._acked += 1
            else:
                self._failed += 1
            self._wake()
        elif isinstance(msg, m.Stateless):
            self._on_event(msg.payload)
        elif isinstance(msg, m.TokenRequest):  # the token expires within a minute
            self.token = await self._renew_token(self.token)
            await self._send(m.AuthToken(self.address, self.token, PROVIDER_VERSION))
            self.token_renewals += 1
        elif isinstance(msg, m.PermissionDenied):
            self._refuse(msg.reason)
        elif isinstance(msg, m.Close):  # the server closed this document
            self._refuse(msg.reason or "closed")

    def _refuse(self, reason: str) -> None:
        """The document is over: waiters wake and raise LiveRefused (the first reason)."""
        self._refused = self._refused or LiveRefused(reason)
        self.synced.set()
        self._updates_in.close()
        self._wake()

    def _on_event(self, payload: str) -> None:
        try:
            evt = json.loads(payload)
        except ValueError:
            return
        if isinstance(evt, dict):
            self.events.append(evt)
            if evt.get("type") == "sync_version_mismatch":
                self.stale_version = evt.get("sync_version")

    def _wake(self) -> None:
        self._ack_changed.set()
        self._ack_changed = trio.Event()

    async def _writer(self) -> None:
        async for update in self._outbox_out:
            await self._send(m.SyncUpdate(self.address, update))

    async def next_update(self) -> LiveUpdate:
        """The next update of someone else, already applied to :attr:`doc`; raises
        :class:`LiveRefused` once the document is refused or the connection closed."""
        try:
            return await self._updates_out.receive()
        except trio.EndOfChannel:
            raise self._refused or LiveRefused("closed") from None

    async def updates(self) -> AsyncIterator[LiveUpdate]:
        while True:
            yield await self.next_update()

    async def wait_stored(self) -> None:
        """Wait until every local change made so far is stored on the server (acknowledged).
        Raises :class:`UpdateRefused` if the server refused any, :class:`LiveRefused` if the
        document was refused or the connection closed."""
        while True:
            if self._failed:
                raise UpdateRefused(f"{self._failed} update(s) refused by the server")
            if self._refused is not None:
                raise self._refused
            if self._acked >= self._sent:
                return
            await self._ack_changed.wait()

    def _raise_if_refused(self) -> None:
        if self._refused is not None:
            raise self._refused

    def close(self) -> None:
        self.doc.unobserve(self._subscription)
        self._outbox_in.close()


class Live:
    """``client.live``: ``async with client.live.subscribe(block) as live: ...``."""

    def __init__(self, client: HeaperClient) -> None:
        self._client = client
        self._refreshing = trio.Lock()  # several documents asking at once refresh once

    async def _renew_token(self, sent: str) -> str:
        """A fresh access token for a server that asks again: the pair is refreshed unless
        that was done since ``sent`` was sent (a refresh token is good for one use)."""
        async with self._refreshing:
            if self._client.access_token == sent:
                await self._client.refresh()
        return str(self._client.access_token)

    def url(self) -> str:
        base = self._client.base_url
        return base.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + "/ws"

    @asynccontextmanager
    async def subscribe(
        self, block: LocalBlock, *, open_timeout: float = 30
    ) -> AsyncIterator[LiveBlock]:
        """Open ``block`` live (named with its ``sync_version`` when it has one) and keep
        ``block.doc`` in sync until the ``async with`` ends. Entering returns once the first
        sync is done: the document holds the server's state, and what the server lacked is
        sent (:meth:`LiveBlock.wait_stored` waits for it to be stored). Raises
        :class:`LiveRefused`."""
        token = self._client.access_token
        if token is None:
            raise RuntimeError("not logged in")
        address = block_address(block.heap_id, block.block_id, block.sync_version)
        try:
            async with open_websocket_url(
                self.url(), max_message_size=64 * 1024 * 1024, disconnect_timeout=2
            ) as ws:
                live = LiveBlock(ws, address, block, token, self._renew_token)
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(live._reader)
                        await live._send(m.AuthToken(address, live.token, PROVIDER_VERSION))
                        await live._send(m.SyncStep1(address, block.doc.get_state()))
                        with trio.fail_after(open_timeout):
                            await live.synced.wait()
                        live._raise_if_refused()
                        nursery.start_soon(live._writer)
                        yield live
                        nursery.cancel_scope.cancel()
                    with contextlib.suppress(ConnectionClosed):
                        await ws.send_message(m.encode_client_close(address))
                finally:
                    live.close()
                    if ws.closed is not None:
                        # closed by the server: trio-websocket may leave the TCP socket to
                        # the garbage collector (a ResourceWarning); close it now
                        await trio.aclose_forcefully(ws._stream)
        except BaseExceptionGroup as group:
            # the nurseries (ours, trio-websocket's) wrap what was raised, the caller's own
            # exceptions included: one exception comes out as itself
            leaf = _only_leaf(group)
            if leaf is None:
                raise
            raise leaf from None


def _only_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else None
