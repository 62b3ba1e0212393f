"""The bounded queue between a connection's reader and one open document's worker.

One producer (the reader, which waits while the queue is full, so a client flooding one
document is read no faster than that document is served) and one consumer (the worker). A
trio memory channel does the same but costs about 1.8 KiB per open document even when idle
(its buffer deque, two task dictionaries, two channel objects; measured with tracemalloc);
this one allocates its buffer when a message waits and drops it once drained, and an event
only while a side waits (issue 12: memory per idle WebSocket).
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import trio
import trio.lowlevel

T = TypeVar("T")


class Inbox(Generic[T]):
    __slots__ = ("_items", "_max", "_reader", "_writer")

    def __init__(self, max_items: int) -> None:
        self._max = max_items
        self._items: deque[T] | None = None
        self._reader: trio.Event | None = None  # set when an item arrives
        self._writer: trio.Event | None = None  # set when room is made

    def __len__(self) -> int:
        return len(self._items) if self._items is not None else 0

    async def send(self, item: T) -> None:
        """Queue ``item``, waiting while ``max_items`` wait already. Cancelled while waiting,
        the item was not queued. A checkpoint, as a channel's send is."""
        await trio.lowlevel.checkpoint()
        while len(self) >= self._max:
            self._writer = event = trio.Event()
            await event.wait()
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        if self._reader is not None:
            self._reader.set()
            self._reader = None

    def receive_nowait(self) -> T:
        if not self._items:
            raise trio.WouldBlock
        item = self._items.popleft()
        if not self._items:
            self._items = None  # an idle document holds no buffer
        if self._writer is not None:
            self._writer.set()
            self._writer = None
        return item

    async def receive(self) -> T:
        await trio.lowlevel.checkpoint()
        while not self._items:
            self._reader = event = trio.Event()
            await event.wait()
        return self.receive_nowait()

    def __aiter__(self) -> Inbox[T]:
        return self

    async def __anext__(self) -> T:
        return await self.receive()
