"""The deprecated ``/api/ws``: scan events for old clients, as JSON text frames.

Same events and the same rules as the ``events`` channel of ``/ws`` (bounded outbox, a slow
consumer is dropped, 1001 at shutdown), only the framing differs.
"""

from __future__ import annotations

import json

import trio

from heaper_trio.errors import HeaperError
from heaper_trio.protocol import events
from heaper_trio.protocol.close_codes import (
    CLOSE_GOING_AWAY,
    CLOSE_TOO_MANY_CONNECTIONS,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNAUTHORIZED,
)
from heaper_trio.protocol.session import Timeouts
from heaper_trio.services.live.context import LiveContext
from heaper_trio.services.live.outbox import Outbox
from heaper_trio.services.live.rooms import Transport

OUTBOX_BYTES = 1024 * 1024
AUTH_TIMEOUT_S = Timeouts().auth_s  # as on /ws


class LegacyEventsConnection:
    def __init__(self, transport: Transport, live: LiveContext, token: str | None) -> None:
        self.transport = transport
        self.live = live
        self.token = token
        self.user_id = ""
        self.outbox = Outbox(OUTBOX_BYTES)
        self.close_code: tuple[int, str] | None = None
        self.holds_slot = False
        self.token_in_use: str | None = None
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None

    def send_event(self, evt: dict[str, object]) -> bool:
        if evt.get("type") not in events.SCAN_EVENTS:
            return True
        if not self.outbox.offer(events.to_json(evt)):
            self.live.counters.dropped_slow_consumer()
            self._end(CLOSE_TRY_AGAIN_LATER, "too slow to keep up")
            return False
        return True

    def _end(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code = (code, reason)
        self._scope.cancel()

    async def run(self) -> None:
        counters = self.live.counters
        counters.connections += 1
        counters.connections_total += 1
        try:
            with self._scope:
                await self._serve()
        finally:
            counters.connections -= 1
            self.live.hub.remove_user_sink(self)
            if self.holds_slot:
                self.live.hub.release_connection(self.user_id)
        if self.close_code is not None:
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await self.transport.close(*self.close_code)

    async def _serve(self) -> None:
        token = self.token
        if token is None:
            with trio.move_on_after(AUTH_TIMEOUT_S):
                token = _token_of(await self.transport.receive())
            if token is None:
                return self._end(CLOSE_UNAUTHORIZED, "authenticate first")
        try:
            user = (await self.live.verify_token(token)).user
        except HeaperError as e:
            return self._end(CLOSE_UNAUTHORIZED, e.code)
        self.user_id = user.id
        self.token_in_use = token
        # Counted with the account's /ws connections: each may buffer OUTBOX_BYTES.
        if not self.live.hub.claim_connection(user.id, self.live.max_connections_per_user):
            self.live.counters.refused_connection_limit += 1
            return self._end(CLOSE_TOO_MANY_CONNECTIONS, "too many connections for this account")
        self.holds_slot = True
        self.live.hub.add_user_sink(self)
        await self._send(events.to_json({"type": "authenticated", "user_id": user.id}))
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                nursery.start_soon(self._writer)
                nursery.start_soon(self._drain_input)
                await self.live.shutdown.wait()
                self._end(CLOSE_GOING_AWAY, "server shutting down")
            finally:
                self._nursery = None  # closing: no new task (recheck_now) may start in it

    def recheck_now(self) -> None:
        """An admin revoked or rejected the account (``LiveHub.recheck_account``): check the
        token again, and close with 4401 if it no longer holds."""
        if self._nursery is not None and self.token_in_use is not None:
            self._nursery.start_soon(self._recheck, self.token_in_use)

    async def _recheck(self, token: str) -> None:
        try:
            await self.live.verify_token(token)
        except HeaperError as e:
            self._end(CLOSE_UNAUTHORIZED, e.code)

    async def _writer(self) -> None:
        while True:
            await self._send(await self.outbox.take())
            await trio.lowlevel.checkpoint()

    async def _send(self, frame: str | bytes) -> None:
        """Send and count it, as /ws counts its frames: the payload's bytes (UTF-8 here)."""
        await self.transport.send(frame)
        counters = self.live.counters
        counters.messages_out += 1
        counters.bytes_out += len(frame.encode() if isinstance(frame, str) else frame)

    async def _drain_input(self) -> None:
        """Old clients send nothing that matters after auth; reading notices the close."""
        while True:
            await self.transport.receive()
            self.live.counters.messages_in += 1


def _token_of(frame: bytes | str | None) -> str | None:
    if not isinstance(frame, str):
        return None
    try:
        data = json.loads(frame)
    except ValueError:
        return None
    token = data.get("token") if isinstance(data, dict) else None
    return token if isinstance(token, str) and token else None
