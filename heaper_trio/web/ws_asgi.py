"""``/ws`` and ``/api/ws`` as raw ASGI, in front of Quart.

Quart's websocket wrapper costs, per message sent, a context-bound proxy, a message dict and a
channel hop, and per connection a nursery with two more tasks and a request context. The live
path needs none of it: :class:`LiveSockets` takes the WebSocket scopes of these two paths before
Quart sees them and runs the connection (``services/live``) over a transport of
``web/ws_transport.py``; every other scope (HTTP, lifespan, other WebSocket paths, which Quart
answers 404) goes on to the app.

What the Quart handlers did, this keeps: the token comes from ``Authorization: Bearer`` or
``?token=`` (browsers cannot set headers on a WebSocket); the connection is accepted at once
(authorization is per document, in the protocol); an error escaping the connection closes with
1011 rather than hypercorn's 1000 (stack-pitfalls 4); a connection that ends without a close
code of its own closes with 1000; a client that leaves cancels the connection. Shutdown is the
connection's own (it watches the services' shutdown event and closes with 1001). HttpGuard is
HTTP only, and WebSockets have no CORS: browsers send ``Origin``, the seed checks none, and the
token is what authorizes. The routes stay declared in ``web/ws.py`` (OpenAPI, docs tables).
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import parse_qs

import trio

from heaper_trio.protocol.close_codes import CLOSE_INTERNAL_ERROR
from heaper_trio.services import metrics
from heaper_trio.services.live.connection import LiveConnection
from heaper_trio.services.live.context import LiveContext
from heaper_trio.services.live.legacy import LegacyEventsConnection
from heaper_trio.web.http_guard import ASGIApp
from heaper_trio.web.quart_compat import websocket_socket, ws_compression_enabled
from heaper_trio.web.ws_transport import AsgiTransport, RawTransport, Receive, Send

log = logging.getLogger(__name__)
CLOSE_NORMAL = 1000
RUNNERS: dict[str, type[LiveConnection] | type[LegacyEventsConnection]] = {
    "/ws": LiveConnection,
    "/api/ws": LegacyEventsConnection,
}


def header(scope: MutableMapping[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if bytes(key).lower() == name:
            return bytes(value).decode("latin-1")
    return None


def connection_token(scope: MutableMapping[str, Any]) -> str | None:
    """The upgrade request's token: ``Authorization: Bearer`` or ``?token=``."""
    scheme, _, token = (header(scope, b"authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    return (parse_qs(query).get("token") or [""])[0] or None


def deflate_offered(scope: MutableMapping[str, Any]) -> bool:
    return "permessage-deflate" in (header(scope, b"sec-websocket-extensions") or "")


def open_transport(
    scope: MutableMapping[str, Any], receive: Receive, send: Send, gone: trio.CancelScope
) -> AsgiTransport:
    """The raw transport when frames go out as they are (no deflate negotiated) and the
    socket is reachable; ASGI messages otherwise."""
    if not (ws_compression_enabled() and deflate_offered(scope)):
        ws = websocket_socket(send)
        if ws is not None:
            return RawTransport(receive, send, gone, ws)
    return AsgiTransport(receive, send, gone)


class LiveSockets:
    """ASGI middleware: serves the live WebSocket paths, passes everything else on."""

    def __init__(self, app: ASGIApp, live: LiveContext) -> None:
        self.app = app
        self.live = live

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        runner = RUNNERS.get(scope["path"]) if scope["type"] == "websocket" else None
        if runner is None:
            await self.app(scope, receive, send)
            return
        first = await receive()
        if first["type"] != "websocket.connect":
            return  # the client left before the handshake finished
        await send({"type": "websocket.accept"})
        gone = trio.CancelScope()
        transport = open_transport(scope, receive, send, gone)
        try:
            with gone, metrics.ws_connection(scope["path"]):
                conn = runner(transport, self.live, connection_token(scope))
                try:
                    await conn.run()
                except Exception:  # an uncaught error would close with 1000 (stack-pitfalls 4)
                    log.exception("%s connection failed", scope["path"])
                    await transport.close(CLOSE_INTERNAL_ERROR, "internal error")
                    return
            await transport.close(CLOSE_NORMAL, "")  # nothing if closed or gone already
        finally:  # cancelled with a frame a direct write began (a close would have finished it)
            transport.abandon()
