"""Whole objects moved in bounded pieces, so that no worker thread holds a store slot for
longer than one piece (issue 14 review: one ``download_file`` of a large object held a slot
for minutes, and eight of them stalled every HEAD and Range read).

A piece is one thread call: a read of part of a GET's body (``PieceBody``), or one
UploadPart / UploadPartCopy. Between pieces the caller passes a trio checkpoint, so a cancel
(the client gone, an abort, shutdown) ends a transfer within one piece. ``Ahead`` starts the
next piece's read before the current one is used (read-ahead: one piece in flight while the
previous is sent, written or hashed), which is what lets a stream through the server approach
a direct client's speed; a stream then holds at most two pieces in memory. A whole object or
a Range is one GET read in pieces (not a ranged GET per piece): one version of the object,
and no store that slices ranges out of its whole copy (moto does) pays once per piece.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Generic, TypeVar

import outcome
import trio

T = TypeVar("T")
MiB = 1 << 20
BULK_PIECE = 8 * MiB  # whole-object reads and part-sized writes (S3 parts: 5 MiB at least)
FIRST_PIECE = MiB  # a Range read starts small (the first byte soon), then pieces double
RANGE_PIECE = 8 * MiB  # up to this
MAX_PARTS = 10_000  # S3's limit of parts in one multipart upload


class Ahead(Generic[T]):
    """One blocking call running in a worker thread under ``limiter`` while the caller
    does other things; ``result`` waits for it. A caller cancelled while waiting leaves the
    call to finish on its own (one piece at most): its slot is given back when it ends, its
    result dropped."""

    def __init__(self) -> None:
        self._done = trio.Event()
        self._outcome: outcome.Outcome[T] | None = None

    @classmethod
    async def start(cls, limiter: trio.CapacityLimiter, fn: Callable[[], T]) -> Ahead[T]:
        self = cls()
        await limiter.acquire_on_behalf_of(self)
        token = trio.lowlevel.current_trio_token()

        def back(result: outcome.Outcome[T]) -> None:
            limiter.release_on_behalf_of(self)
            self._outcome = result
            self._done.set()

        def deliver(result: outcome.Outcome[T]) -> None:
            try:
                token.run_sync_soon(back, result)
            except trio.RunFinishedError:  # the loop ended first: nothing waits for it
                pass

        try:
            trio.lowlevel.start_thread_soon(fn, deliver)
        except BaseException:
            limiter.release_on_behalf_of(self)
            raise
        return self

    async def result(self) -> T:
        await self._done.wait()
        assert self._outcome is not None
        return self._outcome.unwrap()


def spans(first: int, length: int, *, start: int, most: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of the pieces covering ``length`` bytes from ``first``: the first
    ``start`` long, each next one twice the last, up to ``most``."""
    size, end, at = start, first + length, first
    while at < end:
        take = min(size, end - at)
        yield at, take
        at += take
        size = min(size * 2, most)


def part_size(total: int, piece: int = BULK_PIECE) -> int:
    """The part size of a multipart upload of ``total`` bytes: ``piece``, or more when the
    file would need more than S3's 10,000 parts (past ~78 GiB at 8 MiB)."""
    return max(piece, -(-total // MAX_PARTS))


async def empty() -> AsyncIterator[bytes]:
    return
    yield


class PieceBody:
    """A GET's body read in pieces from worker threads, one read at a time; ``close`` from
    the event loop never waits for a read in flight: that read closes it when it ends."""

    def __init__(self, body: Any) -> None:
        self.body, self.lock = body, threading.Lock()
        self.busy = self.closed = False

    def read(self, n: int) -> bytes:
        with self.lock:
            if self.closed:
                return b""
            self.busy = True
        try:
            return bytes(self.body.read(n))
        finally:
            with self.lock:
                self.busy = False
                if self.closed:
                    self.body.close()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            if self.busy:
                return
        self.body.close()
