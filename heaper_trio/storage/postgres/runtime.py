"""The PostgreSQL engine's machinery: asyncio-side runners that cross the bridge once.

A runner (``read``, ``write1``, ``tx``) acquires a pooled connection, runs one unit of work and
gives the connection back, all inside one asyncio coroutine; see ``engine`` for why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol, TypeVar

import asyncpg
from trio_asyncio import aio_as_trio

from heaper_trio.errors import Unavailable
from heaper_trio.storage.rows import Row

log = logging.getLogger(__name__)

T = TypeVar("T")
Runner = Callable[..., Awaitable[Any]]  # read, write1 or tx


class Conn(Protocol):
    """The part of ``asyncpg.Connection`` the units of work use. asyncpg ships no type
    information (no ``py.typed``), so this states what it returns: rows are
    ``asyncpg.Record`` (by name or position), ``execute`` gives the command tag."""

    async def execute(self, query: str, *args: Any) -> str: ...

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

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,  # connection lost, refused, does not exist
    asyncpg.InterfaceError,  # e.g. "connection is closed"
    asyncpg.exceptions.InternalClientError,  # protocol state broken by a lost backend
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
)

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

    async def _run(self, runner: Runner, work: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``runner(pool, work, *args)`` on the asyncio side: one bridge crossing per call."""
        if self._pool is None:
            raise RuntimeError("storage is closed")
        try:
            result: T = await aio_as_trio(runner, loop=self._loop)(self._pool, work, *args)
            return result
        except CONNECTION_ERRORS as e:
            # The database, not the request, is at fault: 503, and the client retries.
            log.error("postgres: %s: %s", type(e).__name__, e)
            raise Unavailable(
                f"the database is unavailable: {type(e).__name__}", code="database_unavailable"
            ) from e
