"""A connection streaming a large body reads the socket in large pieces (hypercorn 0.18.0, trio).

hypercorn's ``TCPServer._read_data`` asks the socket for at most ``MAX_RECV`` (64 KiB) at a
time, and every piece then makes its own trip: an h11 event, an app-queue message, a pass of
the app's body loop and, with a writer thread on the other side (the chunk PUT), one more
hand-over of the GIL. A 128 MiB upload was 2,048 such trips: the socket reads were about half
of the server's main thread in py-spy, and the upload reached 0.62 of a bare hypercorn PUT
(issue 12, item 5; ``scripts/bench_files_uploads.py``). Read 1 MiB at a time, the same upload
took about a fifth less server CPU and reached 0.89 (1 chunk in flight) and 1.05 (4).

The read grows only for a connection whose last read filled what it asked for (more is
waiting: a body larger than a read), up to ``BULK_READ``, and falls back to upstream's size
as soon as a read comes in under it. A request that fits one ordinary read (every JSON call)
is read exactly as upstream reads it.

Memory: a body part is now up to ``BULK_READ``, so an app that does not read its body holds
up to ``max_app_queue_size`` (10) such parts per connection before hypercorn stops reading
(10 x 64 KiB before). Every route that takes a large body reads it as it comes (the chunk PUT
writes it to the disk), and upload requests are capped per user (``UploadSlots``).

The loop is upstream's own, with the read size as its one change; it is installed only while
upstream's method still names what this copy does (``UPSTREAM_NAMES``), else upstream's stays
(and the HOOKS test says so).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from math import inf
from typing import Any

import trio
from hypercorn.events import Closed, RawData
from hypercorn.trio import tcp_server
from hypercorn.trio.tcp_server import TCPServer

log = logging.getLogger(__name__)
BULK_READ = 1024 * 1024
# What upstream's _read_data names, in order: the loop copied below does the same.
UPSTREAM_NAMES = (
    "trio",
    "fail_after",
    "config",
    "read_timeout",
    "inf",
    "stream",
    "receive_some",
    "MAX_RECV",
    "protocol",
    "handle",
    "RawData",
    "bytes",
    "ClosedResourceError",
    "BrokenResourceError",
    "TooSlowError",
    "Closed",
)
_INSTALLED = False


def next_read(size: int, got: int, base: int) -> int:
    """The size of the next read after one of ``size`` bytes brought ``got``: large while
    reads come back full or at least ``base`` long, ``base`` (upstream's) once one does not."""
    if got >= size:
        return max(size, BULK_READ)
    return size if got >= base else base


async def _read_data(self: TCPServer) -> None:
    """``TCPServer._read_data`` of hypercorn 0.18.0, the read size aside."""
    base: int = tcp_server.MAX_RECV
    size = base
    while True:
        try:
            with trio.fail_after(self.config.read_timeout or inf):
                data = await self.stream.receive_some(size)
        except (
            trio.ClosedResourceError,
            trio.BrokenResourceError,
            trio.TooSlowError,
        ):
            break
        else:
            await self.protocol.handle(RawData(bytes(data)))
            if data == b"":
                break
            size = next_read(size, len(data), base)
    await self.protocol.handle(Closed())


def read_bulk_in_large_pieces() -> bool:
    """Install :func:`_read_data`, before ``quart_compat.stop_idle_timer_at_eof`` wraps it
    (that wrapper calls whatever ``_read_data`` it found). Idempotent; False (upstream's
    kept) if upstream's loop is not the one copied here."""
    global _INSTALLED
    if _INSTALLED:
        return True
    original: Callable[[Any], Awaitable[None]] = TCPServer._read_data
    code = getattr(original, "__code__", None)
    if code is None or code.co_names != UPSTREAM_NAMES:
        log.warning("hypercorn's TCPServer._read_data changed: socket reads stay at 64 KiB")
        return False
    _read_data.__wrapped__ = original  # type: ignore[attr-defined]
    TCPServer._read_data = _read_data  # type: ignore[method-assign]
    _INSTALLED = True
    return True


def reads_bulk_in_large_pieces() -> bool:
    return _INSTALLED
