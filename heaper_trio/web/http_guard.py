"""Keeps HTTP/1.1 keep-alive connections usable, and closable, around Quart-Trio on hypercorn.

Root cause (hypercorn 0.18.0, quart-trio 0.12.0). When the app sends the last body message,
hypercorn's ``HTTPStream.app_send`` -> ``H11Protocol.stream_send(StreamClosed)`` ->
``_maybe_recycle`` runs *in the app's task*: it first delivers ``http.disconnect`` to the app
(``_close_stream``), then either restarts the keep-alive timer (``start_next_cycle`` and
``Updated(idle=True)``, when both h11 sides are DONE) or closes the socket
(``send(Closed())`` -> ``TCPServer._close``: ``send_eof`` then ``aclose``). Quart-Trio's
``TrioASGIHTTPConnection.handle_messages`` answers that ``http.disconnect`` by cancelling the
request's nursery, and the task running ``_maybe_recycle`` is in that nursery. Its next
checkpoint raises ``Cancelled``, so:

* with ``Connection: close`` (h11 ``our_state`` is MUST_CLOSE), ``send_eof`` is cancelled and
  ``aclose`` never runs: the socket stays open; the keep-alive timer was stopped when the request
  arrived and is never restarted, so nothing ever closes it;
* after an ordinary request, ``Updated(idle=True)`` is cancelled: the keep-alive timeout never
  applies to that connection again;
* when the answer goes out before the body is read (401/404 on a chunk PUT, 405, 413), h11's
  ``their_state`` is still SEND_BODY, so hypercorn means to close the connection (and would,
  without telling the client, which then sends its next request into a dead socket), but the
  close is cancelled as above; the rest of the body then arrives while ``H11Protocol.stream`` is
  None, ``_handle_events`` breaks on each event, and once h11 is DONE/DONE without
  ``start_next_cycle`` the next request only yields ``h11.PAUSED``: it is never answered.

``HttpGuard`` wraps the Quart app as plain ASGI (``http`` scopes only; ``websocket`` and
``lifespan`` pass through untouched) and works around all three without patching hypercorn:

* the final ``http.response.body`` is sent under a shielded cancel scope, so hypercorn's
  recycle-or-close bookkeeping always finishes;
* an answer ready before the request body is complete: with at most ``drain_bytes`` left, the
  body is waited for (Quart's receiver keeps reading and discarding it) before the final send, so
  h11 reaches DONE/DONE and the connection carries the next request; with more left, or an
  unknown amount (chunked), the answer says ``connection: close`` and the connection is closed
  after it. Either way the answer's bytes are flushed first and the wait is bounded by
  ``drain_timeout``, so a client still sending reads its answer rather than a reset;
* a request body that stalls (no bytes for ``read_timeout`` seconds before any answer started)
  is answered ``408 request_timeout`` with ``connection: close``; the app sees a disconnect.
  Quart's own ``BODY_TIMEOUT`` does not cover ``async for data in request.body`` (chunk PUTs).
* a request body that trickles (a byte every few seconds never trips ``read_timeout``) must
  arrive at ``min_body_rate`` on average: a body of N bytes (Content-Length) has
  ``read_timeout + N / min_body_rate`` seconds from the request's head, a chunked one must have
  sent ``(elapsed - read_timeout) * min_body_rate`` bytes so far; past that it is the same 408.
  Here, not in the upload code, because every route with a body holds a socket (and, for
  multipart forms, a spooled file) while it arrives, and only the framing knows the length.

The hypercorn and quart-trio internals this analysis names are listed in
``web/quart_compat.HOOKS``; a test fails when an upgrade loses one, the moment to re-read it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio

from heaper_trio.web.cors import EXPOSE_HEADERS

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

DRAIN_SECONDS = 5.0  # the longest an answer's connection waits for the rest of a body
# Set in the scope by an app that never cancels itself on http.disconnect (web/hot_routes.py):
# its final send needs no shield, which costs a cancel scope per request.
NO_DISCONNECT_CANCEL = "heaper.no_disconnect_cancel"


class HttpGuard:
    """ASGI middleware; see the module docstring for the hypercorn/quart-trio interaction."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        read_timeout: float,
        drain_bytes: int,
        min_body_rate: float = float("inf"),
    ) -> None:
        self.app = app
        self.read_timeout = read_timeout
        self.min_body_rate = min_body_rate
        self.drain_bytes = drain_bytes
        # A client silent for read_timeout is given up on anyway; waiting longer to drain
        # its body would hold the connection past the promise that setting makes.
        self.drain_timeout = min(DRAIN_SECONDS, read_timeout)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(self, scope, receive, send)
        await self.app(scope, exchange.receive, exchange.send)


def _request_framing(scope: MutableMapping[str, Any]) -> tuple[int | None, bool]:
    """(Content-Length, chunked) as h11 will frame the body (it has already validated both)."""
    length: int | None = None
    chunked = False
    for name, value in scope.get("headers", ()):
        lname = bytes(name).lower()
        if lname == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = None
        elif lname == b"transfer-encoding" and b"chunked" in bytes(value).lower():
            chunked = True
    if chunked:
        length = None  # chunked wins over Content-Length (RFC 9112 6.3)
    return length, chunked


class _Exchange:
    """One request/response on one connection: what of the body has arrived, what was sent."""

    def __init__(
        self, guard: HttpGuard, scope: MutableMapping[str, Any], receive: Receive, send: Send
    ) -> None:
        self.guard = guard
        self.scope = scope
        self._receive = receive
        self._send = send
        # connection: close is HTTP/1 only; h2 rejects connection-specific headers
        self.http1 = str(scope.get("http_version", "1.1")) in ("1.0", "1.1")
        self.length, chunked = _request_framing(scope)
        self.received = 0
        self.body_complete = trio.Event()
        if not chunked and not self.length:
            self.body_complete.set()
        self.started = False  # an answer (the app's or ours) has begun
        self.answered_by_guard = False
        self.head_at = trio.current_time()
        # hypercorn's receive is its app queue's (a trio memory channel): what is already
        # queued is taken without a deadline's cancel scope (quart_compat.HOOKS)
        queue = getattr(receive, "__self__", None)
        self._nowait = (
            queue.receive_nowait if isinstance(queue, trio.MemoryReceiveChannel) else None
        )

    def _body_deadline(self) -> float:
        """When the body must be in: a known length's whole allowance, or for a chunked
        body the allowance of what has arrived (so it must keep up, not just keep going)."""
        size = self.length if self.length is not None else self.received
        return self.head_at + self.guard.read_timeout + size / self.guard.min_body_rate

    def _note(self, message: Message) -> None:
        kind = message.get("type")
        if kind == "http.request":
            self.received += len(message.get("body", b""))
            if not message.get("more_body", False):
                self.body_complete.set()
        elif kind == "http.disconnect":
            self.body_complete.set()  # nothing more will come; stop any drain wait

    async def receive(self) -> Message:
        if self.answered_by_guard:
            return {"type": "http.disconnect"}
        if self._nowait is not None:
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                message = self._nowait()
            except trio.WouldBlock:
                pass
            else:
                self._note(message)
                return message
        if self.length is not None and self.received >= self.length:
            # every byte is in: the end of the body follows without the client (h11 ends a
            # Content-Length body at its last byte), so no deadline is needed to wait for it
            message = await self._receive()
            self._note(message)
            return message
        while not (self.body_complete.is_set() or self.started):
            deadline = min(trio.current_time() + self.guard.read_timeout, self._body_deadline())
            with trio.move_on_at(deadline):
                message = await self._receive()
                self._note(message)
                return message
            if not self.started:  # stalled or too slow, no answer begun: ours is a 408
                await self._answer_timeout()
                return {"type": "http.disconnect"}
        message = await self._receive()
        self._note(message)
        return message

    async def send(self, message: Message) -> None:
        if self.answered_by_guard:
            return  # our 408 went out; the connection is closing and has no room for more
        kind = message.get("type")
        if kind == "http.response.start":
            self.started = True
            if self.http1 and not self.body_complete.is_set() and not self._drainable():
                headers = [
                    (bytes(n), bytes(v))
                    for n, v in message.get("headers", ())
                    if bytes(n).lower() != b"connection"
                ]
                headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await self._send(message)
        elif kind == "http.response.body" and not message.get("more_body", False):
            if self.http1 and not self.body_complete.is_set():
                body = message.get("body", b"")
                if body:  # the client can read its whole answer while we wait for its body
                    await self._send(
                        {"type": "http.response.body", "body": body, "more_body": True}
                    )
                with trio.move_on_after(self.guard.drain_timeout):
                    await self.body_complete.wait()
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            if self.scope.get(NO_DISCONNECT_CANCEL):
                await self._send(message)
                return
            with trio.CancelScope(shield=True):  # see the module docstring: hypercorn's
                await self._send(message)  # recycle-or-close runs inside this call
        else:
            await self._send(message)

    def _drainable(self) -> bool:
        if self.length is None:
            return False
        return self.length - self.received <= self.guard.drain_bytes

    async def _answer_timeout(self) -> None:
        self.started = True
        self.answered_by_guard = True
        body = json.dumps(
            {
                "success": False,
                "error": "request_timeout",
                "message": "the request body stalled or arrived too slowly; send it again",
            }
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if self.http1:
            headers.append((b"connection", b"close"))
        origin = next(
            (bytes(v) for n, v in self.scope.get("headers", ()) if bytes(n).lower() == b"origin"),
            None,
        )
        if origin:  # as web/cors.py does for every other answer
            headers += [
                (b"access-control-allow-origin", origin),
                (b"access-control-allow-credentials", b"true"),
                (b"access-control-expose-headers", EXPOSE_HEADERS.encode()),
                (b"vary", b"Origin"),
            ]
        with trio.CancelScope(shield=True):
            await self._send({"type": "http.response.start", "status": 408, "headers": headers})
            await self._send({"type": "http.response.body", "body": body, "more_body": False})
