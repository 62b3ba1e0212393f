"""Cached user rows for the PostgreSQL engine, exact across server processes and the CLI.

Every authenticated request reads its user row (state, token generation, admin flag): on
PostgreSQL a pool round trip of several hundred µs (issue 12, item 3). The rows are kept here
instead, and dropped when they change: migration 0010 adds a trigger that runs
``pg_notify('heaper_users', id)`` in the transaction of every UPDATE or DELETE of a user row,
whoever makes it (this process, another worker, ``python -m heaper_trio users revoke-tokens``),
and this process LISTENs on a connection of its own. PostgreSQL delivers the notification when
that transaction commits, so a revoked or rejected account is refused from the moment its
change is visible plus the notification's delivery (loopback: well under a millisecond); this
process's own changes also drop the row synchronously, before their call returns.

The cache answers only while that connection listens: until it is up, after it is lost, and
until it is back (retried every ``RETRY_S`` in the background), every read goes to the
database. A read that raced an invalidation is not stored (``epoch``), so a stale row can
never outlive the notification that condemned it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import asyncpg

from heaper_trio.records import User
from heaper_trio.storage.postgres.outage import DatabaseOutage

log = logging.getLogger(__name__)

CHANNEL = "heaper_users"
MAX_USERS = 10_000
RETRY_S = 2.0
CONNECT_TIMEOUT_S = 5.0


class UserRowCache:
    """Its methods run on the trio-asyncio loop's thread; ``start``/``stop`` on asyncio."""

    def __init__(self, dsn: str, outage: DatabaseOutage) -> None:
        self.dsn = dsn
        self.outage = outage
        self._rows: OrderedDict[str, User] = OrderedDict()
        self._conn: Any = None  # the LISTEN connection, while it listens
        self._retry: asyncio.Task[None] | None = None
        self._stopped = False
        self.epoch = 0  # bumped by every invalidation
        self.on_change: Callable[[str], None] | None = None  # told each notified user id
        self.hits = 0  # tests and benchmarks read these
        self.misses = 0

    @property
    def live(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    def get(self, user_id: str) -> User | None:
        if not self.live:
            return None
        user = self._rows.get(user_id)
        if user is None:
            self.misses += 1
        else:
            self.hits += 1
        return user

    def put(self, user: User | None, epoch: int) -> None:
        """Keep a row read from the database, unless an invalidation came since ``epoch``."""
        if user is None or epoch != self.epoch or not self.live:
            return
        self._rows[user.id] = user
        if len(self._rows) > MAX_USERS:
            self._rows.popitem(last=False)

    def forget(self, user_id: str) -> None:
        self.epoch += 1
        self._rows.pop(user_id, None)

    def _forget_all(self) -> None:
        self.epoch += 1
        self._rows.clear()

    # -- the LISTEN connection (asyncio side) -----------------------------------------------
    async def start(self) -> None:
        """Listen now if the database lets us; else keep retrying in the background."""
        try:
            await self._connect()
        except (OSError, asyncpg.PostgresError, TimeoutError) as e:
            self.outage.failed(e, "user-row LISTEN")
            self._schedule_retry()

    async def stop(self) -> None:
        self._stopped = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        conn, self._conn = self._conn, None
        self._forget_all()
        if conn is not None and not conn.is_closed():
            await conn.close(timeout=2)

    async def _connect(self) -> None:
        conn = await asyncpg.connect(self.dsn, timeout=CONNECT_TIMEOUT_S)
        try:
            await conn.add_listener(CHANNEL, self._notified)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._lost)
        self._forget_all()  # whatever changed while nobody listened
        self._conn = conn

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.forget(payload)
        if self.on_change is not None:
            self.on_change(payload)

    def _lost(self, conn: Any) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        self._forget_all()
        if not self._stopped:
            self.outage.failed("connection lost", "user-row LISTEN")
            self._schedule_retry()

    def _schedule_retry(self) -> None:
        if self._stopped or (self._retry is not None and not self._retry.done()):
            return
        self._retry = asyncio.get_event_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        while not self._stopped and not self.live:
            await asyncio.sleep(RETRY_S)
            try:
                await self._connect()
                log.debug("postgres user-row LISTEN connection back")
                self.outage.succeeded()
            except (OSError, asyncpg.PostgresError, TimeoutError) as e:
                self.outage.failed(e, "user-row LISTEN")
