"""One access-log line per HTTP request and per WebSocket connection, written by us.

hypercorn's own access log (0.18.0) is off (``hypercorn_config``): it wrote a request twice
when the client half-closed its socket after sending it (``shutdown(SHUT_WR)``, as HTTP/1.0
clients, ``nc`` and some proxies do): the EOF closes the stream, ``HTTPStream.handle
(StreamClosed)`` logs the request with status ``-`` as abandoned, the app still answers, and
``_send_closed`` logs it again with its status (``app_send`` does not look at ``closed``). Its
format also put a second timestamp in each line. Here the line is written once, when the ASGI
call ends, with what was sent: for HTTP the status, body bytes and duration; for a WebSocket
the upgrade's status (101, or the rejection's), the connection's lifetime and the close code
the server sent (none when the client closed first: hypercorn reports any client close as 1006).
A request the client left before any answer logs status 499 (nginx's "client closed request").

``AccessLog`` is the outermost ASGI layer, so it also sets the request context every log line
written while serving the call carries (``heaper_trio.logs``), whether or not the access log
itself is on.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from heaper_trio import logs
from heaper_trio.web.http_guard import ASGIApp
from heaper_trio.web.ws_transport import Receive, Send

log = logging.getLogger(logs.ACCESS_LOGGER)
CLIENT_CLOSED = 499


def remote_address(scope: MutableMapping[str, Any], trust_forwarded_for: bool) -> str | None:
    """The client's address; behind a trusted proxy, the last ``X-Forwarded-For`` entry (the
    one the proxy itself added), as ``web/routing.client_address`` reads it."""
    if trust_forwarded_for:
        for key, value in scope.get("headers", ()):
            if bytes(key).lower() == b"x-forwarded-for":
                last = bytes(value).decode("latin-1").split(",")[-1].strip()
                if last:
                    return logs.printable(last)  # a header: the client's own text
    client = scope.get("client")
    return str(client[0]) if client else None


def access_message(fields: logs.RequestFields, duration_ms: float) -> str:
    status = "-" if fields.status is None else str(fields.status)
    who = f" user {fields.user_id}" if fields.user_id else ""
    if fields.kind == "websocket":
        code = "" if fields.close_code is None else f" close {fields.close_code}"
        return f'{fields.remote} "WS {fields.path}" {status}{code} {duration_ms:.0f} ms{who}'
    return (
        f'{fields.remote} "{fields.method} {fields.path}" {status} {fields.bytes_sent} B '
        f"{duration_ms:.1f} ms{who}"
    )


class AccessLog:
    """ASGI middleware: the request context for every scope, and the access line."""

    def __init__(self, app: ASGIApp, *, enabled: bool, trust_forwarded_for: bool) -> None:
        self.app = app
        self.enabled = enabled
        self.trust_forwarded_for = trust_forwarded_for

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        fields = logs.RequestFields(
            kind=kind,
            method=scope.get("method", "GET"),
            path=logs.printable(scope["path"]),
            remote=remote_address(scope, self.trust_forwarded_for),
        )
        token = logs.CURRENT.set(fields)
        try:
            await self.app(scope, receive, _WatchingSend(fields, send))
        except Exception:
            if fields.status is None:
                fields.status = 500  # what hypercorn answers for an app that failed
            raise
        finally:
            if self.enabled:
                self._write(fields)  # while the context is the request's: the line carries it
            logs.CURRENT.reset(token)

    @staticmethod
    def _write(fields: logs.RequestFields) -> None:
        if fields.status is None:
            fields.status = CLIENT_CLOSED
        log.info(access_message(fields, fields.finish()))


class _WatchingSend:
    """The app's ``send``: notes status, bytes and close code in ``fields`` on the way.
    Slotted, not a closure: an idle WebSocket holds one for its whole life, and a closure with
    its ``__wrapped__`` attribute (a function ``__dict__``) cost ~300 bytes more each."""

    __slots__ = ("__wrapped__", "fields")

    def __init__(self, fields: logs.RequestFields, send: Send) -> None:
        self.fields = fields
        self.__wrapped__ = send  # ws_asgi finds the socket behind hypercorn's send (quart_compat)

    async def __call__(self, message: MutableMapping[str, Any]) -> None:
        fields = self.fields
        event = message["type"]
        if event == "http.response.body":
            fields.bytes_sent += len(message.get("body", b""))
        elif event in ("http.response.start", "websocket.http.response.start"):
            fields.status = int(message["status"])
        elif event == "websocket.accept":
            fields.status = 101
        elif event == "websocket.close":
            if fields.status is None:  # closed before accepting: hypercorn answers 403
                fields.status = 403
            else:
                fields.close_code = int(message.get("code", 1000))
        await self.__wrapped__(message)
