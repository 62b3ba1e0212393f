"""Local copies of bucket files, shared, and turns at bulk work per user.

Pillow and ffmpeg need a path, so a bucket file is staged in a temporary file before a
thumbnail or probe reads it. Before this module every request staged its own copy: eight
thumbnail requests at distinct video positions downloaded the same large object eight times
and held eight full-size temporary files. ``SharedStages`` makes one download per key at a
time: later requests wait for it and share the file; it is removed when its last user is
done. A waiter that is cancelled takes nothing from the others; when the one downloading is
cancelled (its client went away), a waiting request starts the download again instead of
failing; any other failure is every waiter's answer.

``UserTurns`` bounds the whole-object transfers one user runs at once
(``s3_bulk_per_user``): the next one waits for a turn rather than failing, as a gallery of
video thumbnails asks for many at once and each should arrive. Other users' transfers and
every interactive request go on meanwhile (the bucket's own limiters, ``storage/blobs/s3``).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio


@dataclass(eq=False)
class _Stage:
    path: Path
    ready: trio.Event = field(default_factory=trio.Event)
    users: int = 1
    failed: bool = False
    error: Exception | None = None  # None with failed: the downloader was cancelled


class SharedStages:
    def __init__(self, folder: Path, remove: Callable[[Path], Awaitable[None]]) -> None:
        self.folder = folder
        self._remove = remove  # the temporary file, gone (no error if it is not there)
        self._stages: dict[str, _Stage] = {}
        self.downloads = 0  # made, not joined (for tests and metrics)

    @asynccontextmanager
    async def use(self, key: str, make: Callable[[Path], Awaitable[None]]) -> AsyncIterator[Path]:
        """A path holding ``key``'s bytes while the block runs: ``make`` writes them there,
        once for all concurrent users of the key."""
        stage = await self._join(key, make)
        try:
            yield stage.path
        finally:
            await self._leave(key, stage)

    async def _join(self, key: str, make: Callable[[Path], Awaitable[None]]) -> _Stage:
        while True:
            stage = self._stages.get(key)
            if stage is None:
                return await self._lead(key, make)
            stage.users += 1
            try:
                await stage.ready.wait()
            except BaseException:
                await self._leave(key, stage)
                raise
            if not stage.failed:
                return stage
            await self._leave(key, stage)
            if stage.error is not None:
                raise copy.copy(stage.error)
            # the downloader was cancelled: this request leads the next attempt

    async def _lead(self, key: str, make: Callable[[Path], Awaitable[None]]) -> _Stage:
        stage = self._stages[key] = _Stage(self.folder / f"stage-{uuid.uuid4().hex}.part")
        self.downloads += 1
        try:
            await make(stage.path)
        except BaseException as exc:
            stage.failed = True
            stage.error = exc if isinstance(exc, Exception) else None
            stage.ready.set()
            await self._leave(key, stage)
            raise
        stage.ready.set()
        return stage

    async def _leave(self, key: str, stage: _Stage) -> None:
        stage.users -= 1
        if self._stages.get(key) is stage and (stage.failed or stage.users == 0):
            del self._stages[key]  # the next request starts anew
        if stage.users == 0 or stage.failed:
            with trio.CancelScope(shield=True):
                await self._remove(stage.path)


class UserTurns:
    def __init__(self, per_user: int) -> None:
        self.per_user = per_user
        self._turns: dict[str, tuple[trio.CapacityLimiter, list[int]]] = {}

    @asynccontextmanager
    async def turn(self, owner: str | None) -> AsyncIterator[None]:
        """One of the owner's ``per_user`` turns, waited for in order; None (a command, no
        user): no per-user bound, the bucket's bulk limiter still applies."""
        if owner is None:
            yield
            return
        limiter, holders = self._turns.setdefault(owner, (trio.CapacityLimiter(self.per_user), [0]))
        holders[0] += 1
        try:
            async with limiter:
                yield
        finally:
            holders[0] -= 1
            if holders[0] == 0:
                self._turns.pop(owner, None)
