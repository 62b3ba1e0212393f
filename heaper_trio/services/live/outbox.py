"""The bounded outbox between a connection's producers (document workers, the hub's fan-out)
and the writer task that drains it (a connection starts one only while frames wait: a frame
with nothing queued before it goes straight to the socket, services/live/connection.py)."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import trio

BATCH_BYTES = 256 * 1024  # what one write of a writer takes at most (take_many)
# A writer that took frames this recently has a reader that keeps reading: fan-out to its full
# outbox may stretch the bound (see Outbox).
DRAINING_S = 2.0
STRETCH = 2  # how far, as a multiple of the bound


class Outbox:
    """Frames waiting for the writer, bounded in bytes. Fan-out uses :meth:`offer` and never
    waits (a full outbox means a slow consumer); a document's own replies use :meth:`put`,
    which waits for room, so a big initial sync paces itself instead of tripping the bound.

    Waiting putters queue in arrival order and are admitted strictly first come, first served
    by whoever frees room (:meth:`take`): each waiter has its own event, so none can miss its
    wake-up (issue 9, item 10: one shared, replaced event stranded every waiter but the last,
    and a provider opening 20 large documents waited forever). A frame larger than the bound
    is admitted once the outbox is empty, so it cannot wait for ever either.

    The bound tells a reader that stopped from one that is busy: a provider opening 20
    documents of 1 MB on one socket fills its outbox with its own paced replies, and a
    presence frame fanned out then found no room and dropped a reader that was draining as
    fast as it could (CI, under load: 1006 at 894 ms). So fan-out to a full outbox is still
    taken, up to ``STRETCH`` times the bound, while the writer has taken frames within the
    last ``DRAINING_S`` (the socket keeps accepting bytes); a reader that stopped stalls its
    writer, and past that window its outbox refuses fan-out at the bound as before.

    A writer takes one frame (:meth:`take`) or the frames queued first, bounded
    (:meth:`take_many`, for a transport that writes them in one system call). Idle, an outbox
    holds one empty deque and one event: the queue of waiting putters exists only while
    someone waits.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        # Idle, every outbox shares _IDLE (a deque costs ~760 bytes): nothing ever changes an
        # empty deque here, as _push replaces it and the rest only touches a non-empty one.
        self.frames: deque[bytes | str] = _IDLE
        self.size = 0
        self._readable = trio.Event()
        self._waiting: deque[_Putter] | None = None  # made on the first wait
        self.taken_at = -math.inf  # when the writer last took frames

    def _fits(self, n: int) -> bool:
        return not self.frames or self.size + n <= self.max_bytes

    def offer(self, frame: bytes | str) -> bool:
        n = len(frame)
        if not self._fits(n) and not (
            self.size + n <= STRETCH * self.max_bytes
            and trio.current_time() - self.taken_at < DRAINING_S
        ):
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
        if self.frames:
            self.frames.append(frame)
        else:
            self.frames = deque((frame,))
        self.size += len(frame)
        self._readable.set()

    async def take(self) -> bytes | str:
        while not self.frames:  # (inline: the writer's hot path)
            if self._readable.is_set():
                self._readable = trio.Event()
            await self._readable.wait()
        frame = self.frames.popleft()
        if not self.frames:
            self.frames = _IDLE
        self.size -= len(frame)
        self.taken_at = trio.current_time()
        self._admit()
        return frame

    async def take_many(self, max_bytes: int = BATCH_BYTES) -> list[bytes | str]:
        """The frames queued first (at least one), in order, up to ``max_bytes`` together (a
        first frame larger than that goes alone): one write of the transport for all of them.
        Bounded so that a writer does not hold a whole outbox outside its bound while the
        outbox fills again behind it. Waiting putters are then admitted first come, first
        served, as with :meth:`take`."""
        while not self.frames:
            if self._readable.is_set():
                self._readable = trio.Event()
            await self._readable.wait()
        return self.take_ready(max_bytes)

    def take_ready(self, max_bytes: int = BATCH_BYTES) -> list[bytes | str]:
        """What :meth:`take_many` takes, without waiting: empty when nothing is queued (a
        writer started on demand, which ends once the outbox is empty)."""
        frames = self.frames
        if not frames:
            return []
        self.taken_at = trio.current_time()
        if self.size <= max_bytes:
            batch = list(frames)
            self.frames = _IDLE
            self.size = 0
        else:
            first = frames.popleft()
            batch = [first]
            taken = len(first)
            while frames and taken + len(frames[0]) <= max_bytes:
                frame = frames.popleft()
                batch.append(frame)
                taken += len(frame)
            self.size -= taken
        if self._waiting:
            self._admit()
        return batch


class _Idle(deque[bytes | str]):
    """The empty deque idle outboxes share: a frame appended to it would be every outbox's."""

    def append(self, frame: bytes | str) -> None:
        raise RuntimeError("a frame pushed onto the shared idle deque")


_IDLE: deque[bytes | str] = _Idle()


@dataclass(eq=False)
class _Putter:
    frame: bytes | str
    admitted: trio.Event = field(default_factory=trio.Event)
