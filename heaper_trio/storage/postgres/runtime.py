"""The PostgreSQL engine's machinery: asyncio-side runners that cross the bridge once.

A runner (``read``, ``write1``, ``tx``) acquires a pooled connection, runs one unit of work and
gives the connection back, all inside one asyncio coroutine; see ``engine`` for why.
``GroupCommit`` (trio side) gathers concurrent block commits into one transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol, TypeVar

import outcome
import trio
from trio_asyncio import aio_as_trio

from heaper_trio.errors import Unavailable
from heaper_trio.storage import observe
from heaper_trio.storage.postgres.outage import LOST, DatabaseOutage
from heaper_trio.storage.rows import Row

log = logging.getLogger(__name__)

T = TypeVar("T")
Runner = Callable[..., Awaitable[Any]]  # read, write1 or tx


class Conn(Protocol):
    """The part of ``asyncpg.Connection`` the units of work use. asyncpg ships no type
    information (no ``py.typed``), so this states what it returns: rows are
    ``asyncpg.Record`` (by name or position), ``execute`` gives the command tag."""

    async def execute(self, query: str, *args: Any) -> str: ...

    async def executemany(self, query: str, args: Any) -> None: ...

    async def fetch(self, query: str, *args: Any) -> list[Row]: ...

    async def fetchrow(self, query: str, *args: Any) -> Row | None: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...

    def transaction(
        self, *, isolation: str | None = None, readonly: bool = False
    ) -> AbstractAsyncContextManager[Any]: ...

    def terminate(self) -> None: ...


class Pool(Protocol):
    """The part of ``asyncpg.Pool`` the runners use."""

    def acquire(self) -> AbstractAsyncContextManager[Conn]: ...

    async def close(self) -> None: ...

    def terminate(self) -> None: ...


CLOSE_TIMEOUT = 10.0  # seconds for a graceful pool close before connections are terminated

# The database, not the query, failed (connection lost or refused, server shutting down, too
# many connections, disk full): see outage.LOST.
CONNECTION_ERRORS = LOST

# Each runner is a plain asyncio coroutine taking (pool, work, *args) and calling
# ``work(conn, *args)``; the engine crosses the bridge once per call with one of them.


class _Progress:
    """Whether a write's outcome is already in the server's hands (COMMIT or statement sent)."""

    sent = False


async def _unless_sent(run: Callable[[_Progress], Awaitable[T]]) -> T:
    """Run ``run(progress)`` in its own task; pass a cancel on only until ``progress.sent``.

    Cancelled before that, the work rolls back (``async with conn.transaction()``) and the
    cancel propagates: nothing happened. Cancelled after, the call waits for the outcome and
    returns it, so "cancelled" never hides a committed write; the trio caller meets its cancel
    at its next checkpoint, as with the SQLite engine's shielded wait.
    """
    progress = _Progress()
    task = asyncio.ensure_future(run(progress))
    me = asyncio.current_task()
    while True:
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled() or me is None:
                raise
            me.uncancel()  # we wait for ``task`` to end either way
            if task.done():  # it ended just as the cancel came: report what it did
                return task.result()
            if not progress.sent:
                task.cancel()


@asynccontextmanager
async def _connection(pool: Pool) -> AsyncIterator[Conn]:
    """A pooled connection that is thrown away, not returned, once it fails as a connection.

    After a backend is terminated asyncpg can report odd states ("another operation is in
    progress") on the next use; terminating the connection makes the pool open a fresh one.
    """
    async with pool.acquire() as c:
        try:
            yield c
        except CONNECTION_ERRORS:
            c.terminate()
            raise


async def read(pool: Pool, work: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Read-only work, no transaction; cancellable at any point."""
    async with _connection(pool) as c:
        return await work(c, *args)


async def write1(pool: Pool, work: Callable[..., Awaitable[T]], *args: Any) -> T:
    """One autocommit statement: cancellable while waiting for a connection, not after."""

    async def run(progress: _Progress) -> T:
        async with _connection(pool) as c:
            progress.sent = True
            return await work(c, *args)

    return await _unless_sent(run)


async def tx(pool: Pool, work: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``work`` in one transaction: a cancel before COMMIT rolls back, one after waits."""

    async def run(progress: _Progress) -> T:
        # Always ``async with`` for the transaction: a connection released inside a transaction
        # asyncpg does not manage makes it call the loop's exception handler, and
        # trio-asyncio's default handler turns that into an error that kills the loop.
        async with _connection(pool) as c, c.transaction():
            result = await work(c, *args)
            progress.sent = True  # leaving the block sends COMMIT
        return result

    return await _unless_sent(run)


async def close_pool(pool: Pool) -> None:
    try:
        await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
    except TimeoutError:
        log.warning("postgres pool did not close within %ss; terminating", CLOSE_TIMEOUT)
        pool.terminate()


class PostgresBridge:
    """The trio side of the engine and of its mixins: one bridge crossing per call."""

    _pool: Pool | None = None
    _loop: Any = None  # the trio-asyncio loop the pool lives in
    outage: DatabaseOutage  # logs the database going away and coming back, once each

    async def _run(self, runner: Runner, work: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``runner(pool, work, *args)`` on the asyncio side: one bridge crossing per call."""
        if self._pool is None:
            raise RuntimeError("storage is closed")
        try:
            start = time.perf_counter()
            result: T = await aio_as_trio(runner, loop=self._loop)(self._pool, work, *args)
        except CONNECTION_ERRORS as e:
            # The database, not the request, is at fault: 503, and the client retries. One
            # ERROR for the outage, not one per request (outage.py).
            self.outage.failed(e)
            raise Unavailable(
                f"the database is unavailable: {type(e).__name__}", code="database_unavailable"
            ) from e
        self.outage.succeeded()
        kind = "write" if runner in (write1, tx) else "read"
        observe.observer.round_trip("postgres", kind, time.perf_counter() - start)
        return result


class _Job:
    """One caller's changes waiting for (or in) a group commit."""

    def __init__(self, changes: list[Any], now: int) -> None:
        self.changes = changes
        self.now = now
        self.taken = False  # in a batch: its outcome is no longer the caller's to abandon
        self.done = trio.Event()
        self.result: outcome.Outcome | None = None


class GroupCommit:
    """Concurrent ``commit_changes`` calls gathered into one transaction per batch, as the
    SQLite engine's writer thread does: one COMMIT (one WAL flush) acknowledges them all.

    Whoever finds no batch running leads one: it takes every waiting job (its own among them)
    and runs ``run_batch`` on their changes, in arrival order, under a shield; jobs that come
    meanwhile wait for the next batch, led by the first of them to wake (``_may_lead``). With
    ``depth`` 2 a second batch starts beside the first once as many jobs wait as the first
    holds: its round trip runs while the first's statement and COMMIT do, so the event loop
    does not idle through every round trip. The callers' block locks keep one block out of
    two running batches. Cancellation keeps the engine's promise (``_unless_sent``): a caller
    cancelled before its job is taken leaves the queue and nothing happens; once taken it
    waits for the outcome and returns it ("cancelled" never hides a committed write), meeting
    its cancel at its next checkpoint.

    ``run_batch(changes, now)`` returns one result per change; the job's slice goes back to
    it. If the batch fails as a whole and it held more than one job, a statement error
    (the transaction rolled back) is retried job by job, so one job's fault fails only that
    job; a connection error (the COMMIT's fate unknown) goes to every job of the batch.
    """

    def __init__(
        self, run_batch: Callable[[list[Any], int], Awaitable[list[Any]]], depth: int = 1
    ) -> None:
        self._run_batch = run_batch
        self._pending: list[_Job] = []
        self.depth = depth  # batches running at once
        self._running: list[int] = []  # the running batches' sizes (jobs), oldest first
        self._idle: trio.Event | None = None
        self.batches = 0  # batches run; tests and benchmarks read it
        self.jobs = 0

    async def submit(self, changes: list[Any], now: int) -> list[Any]:
        job = _Job(changes, now)
        self._pending.append(job)
        try:
            while not job.taken:
                if not self._may_lead():
                    if self._idle is None:
                        self._idle = trio.Event()
                    await self._idle.wait()
                else:
                    await self._lead()
        except trio.Cancelled:
            if not job.taken:
                self._pending.remove(job)
                raise
        with trio.CancelScope(shield=True):
            await job.done.wait()
        assert job.result is not None
        return job.result.unwrap()  # type: ignore[no-any-return]

    def _may_lead(self) -> bool:
        """No batch running, or fewer than ``depth`` and as many jobs waiting as the newest
        running batch holds: a batch started beside another is as large as it, not one job
        (one job per round trip costs the database more than it saves the event loop)."""
        if not self._running:
            return True
        return len(self._running) < self.depth and len(self._pending) >= self._running[-1]

    async def _lead(self) -> None:
        batch, self._pending = self._pending, []
        size = len(batch)
        self._running.append(size)
        for job in batch:
            job.taken = True
        try:
            with trio.CancelScope(shield=True):
                await self._run(batch)
        finally:
            self._running.remove(size)
            idle, self._idle = self._idle, None
            if idle is not None:
                idle.set()

    async def _run(self, batch: list[_Job]) -> None:
        self.batches += 1
        self.jobs += len(batch)
        changes = [ch for job in batch for ch in job.changes]
        start = time.perf_counter()
        got = await outcome.acapture(self._run_batch, changes, max(job.now for job in batch))
        if isinstance(got, outcome.Value):
            observe.observer.commit_batch("postgres", len(batch), time.perf_counter() - start)
        if (
            isinstance(got, outcome.Error)
            and len(batch) > 1
            and not isinstance(got.error, (*CONNECTION_ERRORS, Unavailable))
        ):
            for job in batch:  # rolled back: each job alone, as if never batched
                job.result = await outcome.acapture(self._run_batch, job.changes, job.now)
                job.done.set()
            return
        at = 0
        for job in batch:
            if isinstance(got, outcome.Value):
                job.result = outcome.Value(got.value[at : at + len(job.changes)])
                at += len(job.changes)
            else:  # an Outcome unwraps once: each caller its own
                job.result = outcome.Error(got.error)
            job.done.set()
