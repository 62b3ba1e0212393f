"""What the server says about itself: identity (``GET /api/``) and health.

Values only; ``web/routes_instance.py`` writes the contract's JSON from them (the license
fields of a self-hosted server, the ``success`` flag, the 503 of a degraded health).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from weakref import WeakKeyDictionary

import trio

from heaper_trio.services.container import Services
from heaper_trio.storage import Storage

DB_PING_TIMEOUT_S = 5.0
HEALTH_SAMPLE_S = 1.0  # at most one database ping per second, whatever the request rate


class HealthStatus(StrEnum):
    ok = "ok"
    error = "error"  # the database: did not answer, or failed
    degraded = "degraded"  # the server as a whole, when its database is in error


@dataclass(frozen=True, slots=True)
class Identity:
    version: str
    name: str
    public_url: str
    public_key: str


@dataclass(frozen=True, slots=True)
class DatabaseHealth:
    engine: str
    status: HealthStatus
    round_trip_ms: float | None = None  # when it answered
    error: str | None = None  # the exception's type name when it did not
    message: str | None = None  # its text, at most 200 characters


@dataclass(frozen=True, slots=True)
class Health:
    identity: Identity
    database: DatabaseHealth
    uptime_s: float
    pid: int
    realtime: dict[str, int]  # live-sync counters

    @property
    def status(self) -> HealthStatus:
        return HealthStatus.ok if self.database.status is HealthStatus.ok else HealthStatus.degraded


@dataclass(frozen=True, slots=True)
class SyncHealth:
    version: str
    engine: str
    realtime: dict[str, int]


def identity(s: Services) -> Identity:
    return Identity(s.version, s.settings.name, s.settings.public_url, s.server_key.public_key)


async def ping_database(storage: Storage) -> DatabaseHealth:
    """Status and round-trip time of one trivial query; never raises."""
    started = time.perf_counter()
    try:
        with trio.fail_after(DB_PING_TIMEOUT_S):
            await storage.ping()
    except Exception as e:
        return DatabaseHealth(
            storage.engine, HealthStatus.error, error=type(e).__name__, message=str(e)[:200]
        )
    rtt_ms = (time.perf_counter() - started) * 1000
    return DatabaseHealth(storage.engine, HealthStatus.ok, round_trip_ms=round(rtt_ms, 3))


class DatabaseProbe:
    """The database's health, sampled: at most one ping per ``interval_s``, shared by every
    caller meanwhile (issue 12, item 3: a ping per ``GET /api/health`` cost a thread hop or
    a pool round trip per request). An answer is reused until ``interval_s`` after its ping
    began, so a database that goes away shows within that interval. Callers arriving while a
    ping runs wait for it; if its caller is cancelled, the next one pings again.
    ``clock`` is trio's (the fake clock in tests)."""

    def __init__(
        self,
        storage: Storage,
        interval_s: float = HEALTH_SAMPLE_S,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.storage = storage
        self.interval_s = interval_s
        self.clock = clock
        self.pings = 0  # pings sent; tests read it
        self._last: DatabaseHealth | None = None
        self._taken_at = 0.0
        self._running: trio.Event | None = None

    async def check(self) -> DatabaseHealth:
        while True:
            if self._last is not None and self.clock() - self._taken_at < self.interval_s:
                return self._last
            if self._running is None:
                break
            await self._running.wait()  # another caller's ping: share it
        running = self._running = trio.Event()
        started = self.clock()
        try:
            self.pings += 1
            found = await ping_database(self.storage)
            self._last, self._taken_at = found, started
            return found
        finally:
            self._running = None
            running.set()


# One probe per storage (``Services`` is frozen, and hashing it would hash every field).
_probes: WeakKeyDictionary[Storage, DatabaseProbe] = WeakKeyDictionary()


def database_probe(s: Services) -> DatabaseProbe:
    """The server's one probe, made on first use."""
    probe = _probes.get(s.storage)
    if probe is None:
        probe = _probes[s.storage] = DatabaseProbe(s.storage)
    return probe


async def database_health(s: Services) -> DatabaseHealth:
    """The sampled status and round-trip time of the database; never raises."""
    return await database_probe(s).check()


async def health(s: Services) -> Health:
    return Health(
        identity(s),
        await database_health(s),
        round(time.time() - s.started_at, 3),
        os.getpid(),
        s.realtime.snapshot(),
    )


def sync_health(s: Services) -> SyncHealth:
    return SyncHealth(s.version, s.storage.engine, s.realtime.snapshot())
