"""One socket write per small HTTP/1.1 answer, instead of two or three (hypercorn 0.18.0).

hypercorn's ``H11Protocol`` writes each h11 event on its own: the response head, then the
body, then the end of the message (empty for a ``Content-Length`` answer, yet still a trip
through ``TCPServer.protocol_send``: its lock, a shielded cancel scope, ``send_all``). Each
write is a ``send`` system call and a few trio checkpoints; for a small JSON answer the
writes cost about as much as everything else hypercorn does for the request (py-spy under
wrk, issue 12 item 3). Here the head of a ``Content-Length`` answer is held back and written
together with the first body part, and an empty write is not made at all.

Only fixed-length answers are held: their body follows at once (the app knows it whole, or
reads a file), while a chunked answer may be a stream whose head the client should see
before its first part. A body part larger than ``COALESCE_MAX`` is written after the head
rather than copied onto it. Anything else that passes ``stream_send`` while a head is held
(the stream closing, a WebSocket event) writes the head first, so nothing is reordered or
lost. The names used are in ``web/quart_compat.HOOKS``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import h11
from hypercorn.events import RawData
from hypercorn.protocol.events import Body, EndBody
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.h11 import H11Protocol

# Larger bodies are not copied onto the head. Copying is cheap next to a second write: a
# delta page of a thousand rows (about 170 KB) copies in under 10 µs, while its head written
# alone wakes the client for a few bytes and the body wakes it again, each wake-up costing the
# sender more than the copy (py-spy: the two sends of a page took equal time, issue 12 item 4).
COALESCE_MAX = 1024 * 1024
_HEAD = "_heaper_held_head"
_PATCHED = "_heaper_coalesces_writes"


def _fixed_length(event: h11.Response) -> bool:
    return any(name == b"content-length" for name, _ in event.headers)


def write_head_with_body() -> None:
    """Patch ``H11Protocol`` as the module docstring says. Idempotent."""
    original_send: Callable[[Any, Any], Awaitable[None]] = H11Protocol._send_h11_event
    original_stream_send: Callable[[Any, StreamEvent], Awaitable[None]] = H11Protocol.stream_send
    if getattr(original_send, _PATCHED, False):
        return

    async def _send_h11_event(self: H11Protocol, event: Any) -> None:
        if type(event) is h11.Response and _fixed_length(event):
            try:
                written = self.connection.send(event)
            except h11.LocalProtocolError:
                if self.connection.their_state != h11.ERROR:
                    raise
                return  # as upstream: nothing is written to a client in error
            if written:
                self.__dict__[_HEAD] = written
            return
        head: bytes = self.__dict__.pop(_HEAD, b"")
        try:
            data = self.connection.send(event)
        except h11.LocalProtocolError:
            if self.connection.their_state != h11.ERROR:
                raise
            data = b""
        if head and data and len(data) > COALESCE_MAX:
            await self.send(RawData(data=head))
            head = b""
        if head or data:
            await self.send(RawData(data=head + data if head else data))

    async def stream_send(self: H11Protocol, event: StreamEvent) -> None:
        if not isinstance(event, Body | EndBody):
            head: bytes = self.__dict__.pop(_HEAD, b"")
            if head:
                await self.send(RawData(data=head))
        await original_stream_send(self, event)

    for patched in (_send_h11_event, stream_send):
        setattr(patched, _PATCHED, True)
    H11Protocol._send_h11_event = _send_h11_event  # type: ignore[method-assign]
    H11Protocol.stream_send = stream_send  # type: ignore[method-assign]


def writes_coalesced() -> bool:
    return bool(getattr(H11Protocol._send_h11_event, _PATCHED, False))
