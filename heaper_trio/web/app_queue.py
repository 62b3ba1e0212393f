"""A request body's messages queued for the app without a schedule point each (hypercorn
0.18.0).

hypercorn's ``HTTPStream.handle`` hands each body part, and the body's end, to the app with
``await app_put(message)``: the app queue's ``MemorySendChannel.send``, which ends in a
schedule point even when the queue has room. A small POST thus costs the connection's reading
task two extra turns through trio's scheduler (each one more pass of the run loop and its
epoll check) before the app can answer, which a GET does not pay: about a third of what
``POST /api/me`` cost above ``GET /api/health`` on hypercorn alone (issue 12, item 3). Here a
message the queue has room for is put with ``send_nowait``; a full queue (the app is not
reading: back-pressure) still goes through ``send`` and waits, as before. The reading task
reaches its next schedule point at its next socket read. The names used are in
``web/quart_compat.HOOKS``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.protocol.events import Body, EndBody
from hypercorn.protocol.http_stream import HTTPStream

_PATCHED = "_heaper_queues_without_yield"


def queue_body_without_yield() -> None:
    """Patch ``HTTPStream.handle`` as the module docstring says. Idempotent."""
    original: Callable[[Any, Any], Awaitable[None]] = HTTPStream.handle
    if getattr(original, _PATCHED, False):
        return

    async def handle(self: HTTPStream, event: Any) -> None:
        kind = type(event)
        if self.closed:
            return  # upstream ignores every event of a closed stream (no app may exist)
        if kind is Body or kind is EndBody:
            queue = getattr(self.app_put, "__self__", None)
            if isinstance(queue, trio.MemorySendChannel):
                if kind is Body:
                    message = {"type": "http.request", "body": bytes(event.data), "more_body": True}
                else:
                    message = {"type": "http.request", "body": b"", "more_body": False}
                try:
                    queue.send_nowait(message)
                except trio.WouldBlock:
                    await queue.send(message)  # the app is behind: wait for room, as upstream
                return
        await original(self, event)

    setattr(handle, _PATCHED, True)
    handle.__wrapped__ = original  # type: ignore[attr-defined]  # read by quart_compat.HOOKS
    HTTPStream.handle = handle  # type: ignore[method-assign]


def body_queued_without_yield() -> bool:
    return bool(getattr(HTTPStream.handle, _PATCHED, False))
