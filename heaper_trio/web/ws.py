"""``GET /ws`` (live sync, Hocuspocus protocol) and the deprecated ``GET /api/ws`` (scan events).

The routes are declared here (OpenAPI, the docs tables). A running server answers them before
Quart, as raw ASGI with a transport that writes frames to the socket (``web/ws_asgi.py``); the
Quart handlers below serve only an app used without that front (``create_app`` alone, as some
tests do). The protocol is in ``protocol/``, the connection runner in
``services/live/connection.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from quart import Blueprint, websocket

from heaper_trio.protocol.close_codes import CLOSE_INTERNAL_ERROR
from heaper_trio.services.live.connection import LiveConnection
from heaper_trio.services.live.legacy import LegacyEventsConnection
from heaper_trio.services.live.rooms import BUSY
from heaper_trio.web.quart_compat import current_websocket
from heaper_trio.web.routing import services, websocket_route

log = logging.getLogger(__name__)
bp = Blueprint("ws", __name__)


class QuartTransport:
    def __init__(self) -> None:
        # the object itself, usable from the connection's child tasks (quart's proxy API)
        self._ws = current_websocket()

    async def receive(self) -> bytes | str | None:
        return await self._ws.receive()  # type: ignore[no-any-return]

    async def send(self, data: bytes | str) -> None:
        await self._ws.send(data)

    async def send_many(self, frames: Iterable[bytes | str]) -> None:
        for frame in frames:
            await self._ws.send(frame)

    def write_now(self, data: bytes | str) -> int:
        return BUSY  # no direct path: every frame goes through the connection's writer

    holding = False

    async def close(self, code: int, reason: str) -> None:
        await self._ws.close(code, reason[:120])


def connection_token() -> str | None:
    """The upgrade request's token: ``Authorization: Bearer`` or ``?token=`` (the contract
    allows both on WebSocket routes, as browsers cannot set headers on a WebSocket)."""
    scheme, _, token = websocket.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return websocket.args.get("token") or None


@websocket_route(
    bp,
    "/ws",
    tag="live",
    summary="Live sync: the Hocuspocus WebSocket protocol.",
    description="Binary frames: y-protocols sync and awareness per document, "
    "auth per document, sync-status acks after durable commits, typed JSON "
    "events on the `events` channel. See docs/protocol.md.",
)
async def live_sync() -> None:
    ctx = services().live
    await websocket.accept()
    conn = LiveConnection(QuartTransport(), ctx, connection_token())
    try:
        await conn.run()
    except Exception:  # an uncaught error would close with 1000 (stack-pitfalls 4)
        log.exception("live connection failed")
        await websocket.close(CLOSE_INTERNAL_ERROR, "internal error")


@websocket_route(
    bp,
    "/api/ws",
    tag="live",
    deprecated=True,
    summary="Deprecated: scan events only, as JSON text frames.",
    description="For old clients. Authenticate with the Authorization header, "
    'the token query parameter or a first text frame {"token": ...}; then '
    "scan.progress / scan.done / scan.failed / scan.aborted events arrive as "
    "JSON text frames. New clients use the events channel of /ws.",
)
async def legacy_events() -> None:
    ctx = services().live
    await websocket.accept()
    conn = LegacyEventsConnection(QuartTransport(), ctx, connection_token())
    try:
        await conn.run()
    except Exception:
        log.exception("legacy events connection failed")
        await websocket.close(CLOSE_INTERNAL_ERROR, "internal error")
