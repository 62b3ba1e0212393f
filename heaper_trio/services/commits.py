"""The plumbing of a commit: what a durable change announces (``Committed``) and the per-block
locks that keep concurrent pushes in this process from conflicting with each other."""

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass

import trio


@dataclass(frozen=True)
class Committed:
    """A durably stored change of one block: what live subscribers and other processes hear.

    ``kind`` is a ``ChangeKind``: ``created``, ``changed``, ``deleted`` (moved to the trash),
    ``restored`` (out of it), ``purged`` (gone for good) or ``heap_deleted``. ``updates`` are
    the stored Yjs updates; empty when only the pointer is known (a change announced by
    another process, or a purge).
    ``origin`` is whoever asked for the change (a live connection), so it is not echoed back.
    """

    heap_id: str
    block_id: str
    kind: str
    seq: int = 0
    sync_version: int = 1
    updated_at: int = 0
    updates: tuple[bytes, ...] = ()
    origin: object | None = None


CommitListener = Callable[[Sequence[Committed]], None]
# Removes trashed blocks of a heap for good (``HeapService.purge``): heap id, block ids -> purged.
Purger = Callable[[str, list[str]], Awaitable[list[str]]]


class BlockLocks:
    """One trio.Lock per block id, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[trio.Lock, int]] = {}

    async def hold_all(self, stack: AsyncExitStack, block_ids: list[str]) -> None:
        for block_id in sorted(set(block_ids)):  # one global order: no deadlocks
            lock, users = self._locks.get(block_id, (trio.Lock(), 0))
            self._locks[block_id] = (lock, users + 1)
            stack.callback(self._release_user, block_id)
            await stack.enter_async_context(lock)

    def _release_user(self, block_id: str) -> None:
        lock, users = self._locks[block_id]
        if users <= 1:
            del self._locks[block_id]
        else:
            self._locks[block_id] = (lock, users - 1)
