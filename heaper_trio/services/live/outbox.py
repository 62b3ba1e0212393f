"""The bounded outbox between a connection's producers (document workers, the hub's fan-out)
and its single writer task."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import trio


class Outbox:
    """Frames waiting for the writer, bounded in bytes. Fan-out uses :meth:`offer` and never
    waits (a full outbox means a slow consumer); a document's own replies use :meth:`put`,
    which waits for room, so a big initial sync paces itself instead of tripping the bound.

    Waiting putters queue in arrival order and are admitted strictly first come, first served
    by whoever frees room (:meth:`take`): each waiter has its own event, so none can miss its
    wake-up (issue 9, item 10: one shared, replaced event stranded every waiter but the last,
    and a provider opening 20 large documents waited forever). A frame larger than the bound
    is admitted once the outbox is empty, so it cannot wait for ever either.

    A writer takes one frame (:meth:`take`) or every frame queued (:meth:`take_many`, for a
    transport that writes them in one system call). Idle, an outbox holds one empty deque
    and one event: the queue of waiting putters exists only while someone waits.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.frames: deque[bytes | str] = deque()
        self.size = 0
        self._readable = trio.Event()
        self._waiting: deque[_Putter] | None = None  # made on the first wait

    def _fits(self, n: int) -> bool:
        return not self.frames or self.size + n <= self.max_bytes

    def offer(self, frame: bytes | str) -> bool:
        if not self._fits(len(frame)):
            return False
        self._push(frame)
        return True

    async def put(self, frame: bytes | str) -> None:
        """Queue ``frame``; returns once it is in the outbox (never overtaking earlier putters).
        Cancelled while waiting, the frame was either queued already or never will be."""
        if not self._waiting and self._fits(len(frame)):
            self._push(frame)
            return
        putter = _Putter(frame)
        if self._waiting is None:
            self._waiting = deque()
        self._waiting.append(putter)
        try:
            await putter.admitted.wait()
        except BaseException:
            if not putter.admitted.is_set():
                self._waiting.remove(putter)
                self._admit()  # it may have been the head that held the others back
            raise

    @property
    def waiting(self) -> int:
        return len(self._waiting) if self._waiting else 0

    def _admit(self) -> None:
        """Move waiting frames into the outbox, in order, while they fit."""
        waiting = self._waiting
        if not waiting:
            return
        while waiting and self._fits(len(waiting[0].frame)):
            putter = waiting.popleft()
            self._push(putter.frame)
            putter.admitted.set()

    def _push(self, frame: bytes | str) -> None:
        self.frames.append(frame)
        self.size += len(frame)
        self._readable.set()

    async def _wait_readable(self) -> None:
        while not self.frames:
            if self._readable.is_set():
                self._readable = trio.Event()
            await self._readable.wait()

    async def take(self) -> bytes | str:
        while not self.frames:  # (inline: the writer's hot path)
            if self._readable.is_set():
                self._readable = trio.Event()
            await self._readable.wait()
        frame = self.frames.popleft()
        self.size -= len(frame)
        self._admit()
        return frame

    async def take_many(self) -> list[bytes | str]:
        """Every frame queued (at least one), in order; waiting putters are then admitted
        first come, first served, as with :meth:`take`."""
        await self._wait_readable()
        frames = list(self.frames)
        self.frames.clear()
        self.size = 0
        self._admit()
        return frames


@dataclass(eq=False)
class _Putter:
    frame: bytes | str
    admitted: trio.Event = field(default_factory=trio.Event)
