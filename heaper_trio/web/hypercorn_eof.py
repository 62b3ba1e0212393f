"""Free a connection's socket as soon as its client has gone (hypercorn 0.18.0, trio worker).

``TCPServer.run`` starts the keep-alive idle timer in the connection's task group, then reads.
When the client closes (EOF) or the read fails, ``_read_data`` returns, but the task group
still waits for the idle timer, which sleeps out ``keep_alive_timeout`` before the ``finally``
closes the socket. Every connect-and-leave (no request, or after an answer) pins one descriptor
for that long, so a client looping connect/close exhausts the server's descriptors. The timer
is there to close idle connections; once the peer is gone there is nothing left to time, so we
stop it when reading ends. HttpGuard cannot do this: no ASGI call exists for such a connection.

A patch of a private method is the last resort (the alternative is a fork of ``TCPServer``);
``apply`` checks that TCPServer still keeps that idle timer and does nothing otherwise, and
``tests/test_harden_http.py`` pins the behaviour.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

import trio
from hypercorn.trio.tcp_server import TCPServer

log = logging.getLogger(__name__)
_PATCHED = "_heaper_stops_idle_at_eof"


def apply() -> None:
    original: Callable[[Any], Awaitable[None]] = TCPServer._read_data
    if getattr(original, _PATCHED, False):
        return
    if "idle_task" not in TCPServer.__init__.__code__.co_names:
        log.warning("hypercorn's TCPServer has no idle_task: EOF workaround not applied")
        return

    async def _read_data(self: TCPServer) -> None:
        try:
            await original(self)
        finally:  # the peer is gone: nothing left for the timer to close
            with trio.CancelScope(shield=True):  # stop() takes a lock: see it through
                await self.idle_task.stop()

    setattr(_read_data, _PATCHED, True)
    TCPServer._read_data = _read_data  # type: ignore[method-assign]
