"""A bound on how long one HTTP write may wait for a client that stops reading (hypercorn 0.18.0).

hypercorn's ``TCPServer.protocol_send`` writes with ``send_all`` inside a shielded cancel scope
with no time limit. A client that requests a download (a file's bytes, a delta page, an
export) and then stops reading holds that write for ever, and with it the response's task, its
open file and the socket: nothing times it (``http_read_timeout`` only times the client's own
bytes), not even a server shutdown, which waits for the shielded write. Many such downloads
exhaust the server's file descriptors.

Here each write that cannot go out at once waits for the socket under a deadline. The deadline
follows the rule request bodies keep (web/http_guard.py): ``http_read_timeout`` plus the bytes
the client has accepted since the write blocked over ``http_min_body_rate``, so it moves on
whenever bytes move and a client reading steadily above that rate is never cut, while one that
stops (or trickles a few bytes now and then) is. The budget is the connection's, not one
write's: it runs on across writes until one goes out without waiting (the client caught
up). Past it the socket is aborted (a reset: the unsent bytes are dropped, not kept by the
kernel behind a FIN the client never reads), which ends the connection in hypercorn: the app
gets ``http.disconnect``, the response's task ends and its file is closed. A write cancelled
from outside (the server shutting down after ``graceful_timeout``, the client gone) gets
``FINISH_SEND_S`` more, shielded, to finish what is on the wire, then the socket is aborted
the same way.

The fast path is one ``write`` system call under hypercorn's send lock, as upstream's own
``send_all`` makes when the socket takes everything: no cancel scope, no clock read; the
deadline exists only while a write actually waits. Only plain sockets with a server config
that carries the limits (``hypercorn_config``) are handled here; anything else (TLS, a test's
own hypercorn) keeps upstream's ``protocol_send``. The WebSocket frames the live hub writes
itself (web/ws_transport.py) do not pass here and keep their own bound; hypercorn's own
WebSocket writes (handshake, pings, close frames) do, and get this bound too. The names used
are in ``web/quart_compat.HOOKS``.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.events import Closed, RawData
from hypercorn.trio.tcp_server import TCPServer

log = logging.getLogger("heaper_trio.web")

FINISH_SEND_S = 2.0  # a cancelled write's grace to finish what it began
_LIMITS = "_heaper_send_limits"
_PATCHED = "_heaper_bounds_sends"
_BEHIND = "_heaper_send_behind"  # (start, bytes taken) of the budget a slow client is on
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets


def set_send_limits(config: Config, read_timeout: float, min_rate: float) -> None:
    """Give a server's writes the bound the module docstring describes."""
    if read_timeout <= 0 or min_rate <= 0:
        raise ValueError("the send bound needs a positive timeout and rate")
    setattr(config, _LIMITS, (read_timeout, min_rate))


class _Write:
    """What is left of one write, and what the client has accepted since it blocked."""

    __slots__ = ("min_rate", "moved", "read_timeout", "rest", "sock", "started")

    def __init__(
        self,
        sock: trio.socket.SocketType,
        rest: memoryview,
        limits: tuple[float, float],
        behind: tuple[float, int] | None,
    ) -> None:
        self.sock = sock
        self.rest = rest
        self.read_timeout, self.min_rate = limits
        # A client still behind from an earlier write keeps that write's budget: a reader
        # taking each 1 MiB part just inside the bound would hold the connection for ever.
        self.started, self.moved = behind if behind else (trio.current_time(), 0)

    def deadline(self) -> float:
        return self.started + self.read_timeout + self.moved / self.min_rate

    async def drain(self, until: float = float("inf")) -> None:
        """Write the rest as the socket makes room, until the deadline (or ``until``)."""
        while self.rest:
            deadline = min(until, self.deadline())
            if trio.current_time() >= deadline:
                return
            with trio.move_on_at(deadline):
                try:
                    await trio.lowlevel.wait_writable(self.sock)
                except OSError as e:
                    raise trio.BrokenResourceError from e
            written = _write(self.sock, self.rest)
            self.rest = self.rest[written:]
            self.moved += written

    def abort(self) -> None:
        """Reset the connection: hypercorn's reader sees the end, its close sends a RST."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _write(sock: trio.socket.SocketType, data: memoryview | bytes) -> int:
    """One non-blocking write: the bytes the socket took (0 when full)."""
    fd = sock.fileno()
    if fd < 0:
        raise trio.ClosedResourceError
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
    except OSError as e:  # EPIPE, ECONNRESET: the peer is gone
        raise trio.BrokenResourceError from e


async def _send_bounded(
    server: TCPServer, sock: trio.socket.SocketType, data: bytes, limits: tuple[float, float]
) -> None:
    written = _write(sock, data)
    if written == len(data):
        setattr(server, _BEHIND, None)  # the socket took it all: the client has caught up
        return
    write = _Write(sock, memoryview(data)[written:], limits, getattr(server, _BEHIND, None))
    try:
        await write.drain()
    except trio.Cancelled:
        with trio.CancelScope(shield=True):
            try:
                await write.drain(until=trio.current_time() + FINISH_SEND_S)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # gone meanwhile: the cancel goes on
        if write.rest:
            write.abort()
        raise
    setattr(server, _BEHIND, (write.started, write.moved))
    if write.rest:
        write.abort()
        log.info(
            "closed an HTTP connection whose client stopped reading: a write waited %.1f s "
            "(%d bytes accepted since it blocked, %d left)",
            trio.current_time() - write.started,
            write.moved,
            len(write.rest),
        )
        raise trio.BrokenResourceError("the client stopped reading")


def bound_sends() -> None:
    """Patch ``TCPServer.protocol_send`` as the module docstring says. Idempotent."""
    original: Callable[[Any, Any], Awaitable[None]] = TCPServer.protocol_send
    if getattr(original, _PATCHED, False):
        return

    async def protocol_send(self: TCPServer, event: Any) -> None:
        limits = getattr(self.config, _LIMITS, None)
        stream = self.stream
        if limits is None or type(event) is not RawData or type(stream) is not trio.SocketStream:
            await original(self, event)
            return
        async with self.send_lock:
            try:
                await _send_bounded(self, stream.socket, event.data, limits)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self.protocol.handle(Closed())

    setattr(protocol_send, _PATCHED, True)
    protocol_send.__wrapped__ = original  # type: ignore[attr-defined]  # HOOKS reads upstream's
    TCPServer.protocol_send = protocol_send  # type: ignore[method-assign]


def sends_bounded() -> bool:
    """Whether ``bound_sends`` is in force (for tests and diagnostics)."""
    return bool(getattr(TCPServer.protocol_send, _PATCHED, False))
