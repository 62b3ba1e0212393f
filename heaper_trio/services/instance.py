"""What the server says about itself: identity (``GET /api/``) and health.

Values only; ``web/routes_instance.py`` writes the contract's JSON from them (the license
fields of a self-hosted server, the ``success`` flag, the 503 of a degraded health).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from enum import StrEnum

import trio

from heaper_trio.services.container import Services

DB_PING_TIMEOUT_S = 5.0


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


async def database_health(s: Services) -> DatabaseHealth:
    """Status and round-trip time of one trivial query; never raises."""
    started = time.perf_counter()
    try:
        with trio.fail_after(DB_PING_TIMEOUT_S):
            await s.storage.ping()
    except Exception as e:
        return DatabaseHealth(
            s.storage.engine, HealthStatus.error, error=type(e).__name__, message=str(e)[:200]
        )
    rtt_ms = (time.perf_counter() - started) * 1000
    return DatabaseHealth(s.storage.engine, HealthStatus.ok, round_trip_ms=round(rtt_ms, 3))


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
