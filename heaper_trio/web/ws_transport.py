"""The transports of a raw ASGI WebSocket (``web/ws_asgi.py``): what a live connection reads
from and writes to.

:class:`AsgiTransport` speaks ASGI messages: hypercorn's wsproto connection frames each message
(and deflates it when ``ws_compression`` negotiated permessage-deflate). :class:`RawTransport`
writes data frames itself, straight to the connection's socket (``web/ws_frames.py``: unmasked,
no extension, the encoding cached per fan-out frame), and keeps hypercorn for everything else:
the handshake, reading, pings and the close handshake. Per write that is one synchronous
``send``/``sendmsg`` system call under hypercorn's send lock, taken without waiting when free; no
message dicts, no shielded cancel scope, no lock context manager and no trio socket wrapper on
the way. :meth:`RawTransport.send_many` writes several frames in one call.

Only when the socket cannot take everything at once does a write wait for writability. A frame
half on the wire must be finished, or hypercorn's next frame (a ping, the close) would land
inside it, so a write cancelled then (the connection is closing) gets a few seconds, shielded,
to finish its frame; a peer that reads nothing even then has its socket shut down. (hypercorn
shields its own ``send_all`` without a limit: a peer that stops reading holds it for ever.) A
slow reader fills the connection's bounded outbox first and is closed with 1013.

Both end the connection the same way when the client goes (``websocket.disconnect``): they
cancel the scope the connection runs in, as Quart-Trio cancelled the handler's nursery.

**Direct writes** (:meth:`RawTransport.write_now`, issue 12 item 1). Fan-out to 1,000 sockets
cost one writer task's wake-up, turn and wait per socket per update; the hub now writes the
frame itself, synchronously, when the connection has nothing queued and the send lock is free.
If the socket takes only part of it, the transport keeps the rest *and the lock* (a
``trio.Semaphore(1)``, web/quart_compat.py ``transferable_send_lock``: the hub's task takes it,
the writer task releases it) and the caller wakes the connection's writer, whose next write
finishes that frame before anything else. A transport that ends with such a rest still held
finishes it (:meth:`RawTransport.close`, with the same grace as a cancelled write) or, when it
cannot wait, shuts the socket down and releases the lock (:meth:`RawTransport.abandon`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import trio

from heaper_trio.services.live.rooms import BUSY, PARTIAL, WRITTEN
from heaper_trio.web.quart_compat import WebSocketSocket
from heaper_trio.web.ws_frames import encode

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_CLOSE_REASON = 120  # a close frame's reason fits in 123 bytes
IOV_MAX = 1024  # buffers one writev takes (POSIX's minimum, Linux's value)
FINISH_FRAME_S = 5.0  # a cancelled write's grace to finish the frame it began


class AsgiTransport:
    """Reads and writes ASGI messages (hypercorn frames them)."""

    __slots__ = ("_gone", "_receive", "_send", "closed")

    def __init__(self, receive: Receive, send: Send, gone: trio.CancelScope) -> None:
        self._receive = receive
        self._send = send
        self._gone = gone  # cancelled when the client has gone
        self.closed = False  # a close was sent, or the client has gone

    async def receive(self) -> bytes | str | None:
        message = await self._receive()
        if message["type"] == "websocket.receive":
            data = message.get("bytes")
            return data if data is not None else message.get("text")
        self.closed = True  # websocket.disconnect: nothing more will come or go out
        self._gone.cancel()
        await trio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async def send(self, data: bytes | str) -> None:
        if self.closed:
            return
        if isinstance(data, str):
            await self._send({"type": "websocket.send", "text": data})
        else:
            await self._send({"type": "websocket.send", "bytes": data})

    async def send_many(self, frames: Iterable[bytes | str]) -> None:
        for frame in frames:
            await self.send(frame)

    def write_now(self, data: bytes | str) -> int:
        """No direct path through ASGI messages: always ``BUSY`` (queue it)."""
        return BUSY

    @property
    def holding(self) -> bool:
        """Whether a frame begun by :meth:`write_now` waits for the writer (never, here)."""
        return False

    def abandon(self) -> None:
        """The connection is over: let go of anything held (nothing, here)."""

    async def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        await self._send(
            {"type": "websocket.close", "code": code, "reason": reason[:MAX_CLOSE_REASON]}
        )


class RawTransport(AsgiTransport):
    """Writes data frames to the socket itself; see the module docstring."""

    __slots__ = ("_lock", "_raw", "_rest", "_socket", "_ws", "broken")

    def __init__(
        self, receive: Receive, send: Send, gone: trio.CancelScope, ws: WebSocketSocket
    ) -> None:
        super().__init__(receive, send, gone)
        self._ws = ws
        self._socket = ws.socket
        # The stdlib socket trio's wraps: its fileno() is one C call, trio's a Python frame
        # around it (3% of the server at 1,000 subscribers, py-spy); -1 once closed, as trio's.
        self._raw: socket.socket | trio.socket.SocketType = getattr(ws.socket, "_sock", ws.socket)
        self._lock = ws.send_lock
        self._rest: memoryview | None = None  # a frame write_now began; the lock held for it
        self.broken = False  # the socket refused a write: the peer is gone

    async def send(self, data: bytes | str) -> None:
        await self._write(encode(data))

    async def send_many(self, frames: Iterable[bytes | str]) -> None:
        buffers: list[bytes] = []
        for frame in frames:
            buffers += encode(frame)
        if buffers or self._rest is not None:
            await self._write(buffers)

    @property
    def holding(self) -> bool:
        return self._rest is not None

    def write_now(self, data: bytes | str) -> int:
        """Write one frame now, without waiting (the hub's fan-out: see the module
        docstring). The caller guarantees nothing of its own is queued before it.

        The lock is only looked at, not taken, while the write is one synchronous call: no
        other task can run meanwhile, so a free lock stays free, and a frame that went out
        whole never needed it (taking and releasing it cost 1.2 us, a quarter of a delivery,
        measured). A frame the socket takes only part of takes it then, before anything else
        can run, and keeps it for the writer."""
        if self.closed or self.broken:
            return WRITTEN  # dropped, as hypercorn drops a send after close
        lock = self._lock
        if not lock.value:  # a write in progress: the writer's, a begun frame, hypercorn's
            return BUSY
        if not self._ws.open():
            return WRITTEN
        buffers = encode(data)
        if len(buffers) == 1:  # (inline: the fan-out's hot path, one small frame)
            frame = buffers[0]
            fd = self._raw.fileno()
            if fd < 0:
                self.broken = True
                return WRITTEN
            try:
                written = os.write(fd, frame)
            except BlockingIOError:
                written = 0
            except OSError:  # EPIPE, ECONNRESET: the peer is gone; hypercorn's reader notices
                self.broken = True
                return WRITTEN
            if written == len(frame):
                return WRITTEN
            rest: memoryview | None = memoryview(frame)[written:]
        else:
            rest = self._write_now(buffers)
            if rest is None:
                return WRITTEN
        lock.acquire_nowait()  # free (looked at above, nothing ran since): ours until finished
        self._rest = rest
        return PARTIAL

    async def _write(self, buffers: list[bytes]) -> None:
        lock = self._lock
        held, self._rest = self._rest, None
        if held is None:
            if self.closed or self.broken or not self._ws.open():
                return  # as hypercorn does with a send after close: dropped
            try:
                lock.acquire_nowait()
            except trio.WouldBlock:  # hypercorn is writing (a ping, a pong, the close frame)
                await lock.acquire()
                if not self._ws.open():
                    lock.release()
                    return
        try:
            if held is not None:  # finish the frame write_now began, then the rest
                await self._write_rest(held)
                if self.broken or self.closed or not buffers or not self._ws.open():
                    return
            rest = self._write_now(buffers)
            if rest is not None:
                await self._write_rest(rest)
        finally:
            lock.release()

    def abandon(self) -> None:
        """Let go of a begun frame nobody will finish: the socket is shut down (the peer
        would read a torn frame), which ends the connection in hypercorn too, and the lock is
        released so that hypercorn's own sends do not wait for it forever."""
        if self._rest is not None:
            self._rest = None
            self._abort()
            self._lock.release()

    async def close(self, code: int, reason: str) -> None:
        held, self._rest = self._rest, None
        if held is not None:  # a begun frame first, or the close frame would land inside it
            try:
                with trio.CancelScope(shield=True) as grace:
                    grace.deadline = trio.current_time() + FINISH_FRAME_S
                    held = await self._drain(held)
                if held:
                    self._abort()
            finally:
                self._lock.release()
        await super().close(code, reason)

    def _write_now(self, buffers: list[bytes]) -> memoryview | None:
        """Write what the socket takes now; what is left, or None when all went out."""
        # The descriptor is read at each write: once hypercorn has closed the socket it is -1
        # (its number may belong to another connection by then, never written to here).
        fd = self._socket.fileno()
        if fd < 0:
            self.broken = True
            return None
        written = 0
        try:
            if len(buffers) == 1:
                written = os.write(fd, buffers[0])
                if written == len(buffers[0]):
                    return None
            else:
                for start in range(0, len(buffers), IOV_MAX):
                    chunk = buffers[start : start + IOV_MAX]
                    n = os.writev(fd, chunk)
                    written += n
                    if n < sum(map(len, chunk)):
                        break  # the socket is full: the rest waits, in order
        except BlockingIOError:
            pass
        except OSError:  # EPIPE, ECONNRESET: the peer is gone; hypercorn's reader notices
            self.broken = True
            return None
        data = b"".join(buffers)
        if written >= len(data):
            return None
        return memoryview(data)[written:]

    async def _write_rest(self, rest: memoryview) -> None:
        """Write the rest as the socket makes room. Cancelled meanwhile (the connection is
        closing), the frame on the wire still gets ``FINISH_FRAME_S`` to complete, shielded;
        a peer that does not read even then has its socket shut down, which ends the
        connection in hypercorn too (its own shielded sends would wait for ever)."""
        try:
            rest = await self._drain(rest)
        except trio.Cancelled:
            with trio.CancelScope(shield=True) as grace:
                grace.deadline = trio.current_time() + FINISH_FRAME_S
                rest = await self._drain(rest)
            if rest:
                self._abort()
            raise

    async def _drain(self, rest: memoryview) -> memoryview:
        while rest and not self.broken:
            try:
                await trio.lowlevel.wait_writable(self._socket)
            except (trio.ClosedResourceError, OSError):
                self.broken = True
                break
            fd = self._socket.fileno()
            if fd < 0:
                self.broken = True
                break
            try:
                rest = rest[os.write(fd, rest) :]
            except BlockingIOError:
                continue
            except OSError:
                self.broken = True
        return rest

    def _abort(self) -> None:
        self.broken = True
        try:
            self._socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
