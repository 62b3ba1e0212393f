"""One ERROR when PostgreSQL goes away, one INFO when it is back: not a line per failed call.

While the database is down every request fails (503 ``database_unavailable``), the LISTEN
connections retry every second or two, and asyncpg's pool tries to restore its floor of
connections, logging a 40-line traceback each time. A self-hoster needs two facts from all
that: when it went, and when it came back. ``DatabaseOutage`` keeps the state for one engine
(its bridge, its change listener and its user-row cache all report to it): the first failure
logs an ERROR with a one-line reason, later ones only at DEBUG; the first success after that
logs an INFO with how long it lasted. ``quiet_pool_retries`` keeps asyncpg's retry tracebacks
out of the log (at DEBUG, only the line).
"""

from __future__ import annotations

import logging
import time

import asyncpg

log = logging.getLogger("heaper_trio.storage.postgres")

# What says "the database, not the query, failed" (a lost or refused connection, a server
# shutting down or out of connections); runtime.CONNECTION_ERRORS is the same set.
LOST: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)


def one_line(reason: BaseException | str) -> str:
    if isinstance(reason, BaseException):
        text = str(reason).strip()
        reason = f"{type(reason).__name__}: {text}" if text else type(reason).__name__
    return " ".join(reason.split())


class DatabaseOutage:
    """Whether the database is reachable, as the engine's last calls saw it.

    Called from trio tasks and from asyncio callbacks of the trio-asyncio loop, which run on
    the same thread one at a time: no lock is needed."""

    def __init__(self) -> None:
        self.down_since: float | None = None
        self.outages = 0  # tests read it

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, reason: BaseException | str, where: str = "") -> None:
        line = one_line(reason) + (f" ({where})" if where else "")
        if self.down_since is not None:
            log.debug("postgres still unavailable: %s", line)
            return
        self.down_since = time.monotonic()
        self.outages += 1
        log.error(
            "postgres unavailable: %s; requests answer 503 database_unavailable until it is back",
            line,
        )

    def succeeded(self) -> None:
        if self.down_since is None:
            return
        lasted = time.monotonic() - self.down_since
        self.down_since = None
        log.info("postgres available again after %.1f s", lasted)


class _PoolRetryFilter(logging.Filter):
    """asyncpg's pool logs "Failed to restore the pool connection floor; retrying" with the
    connection error's traceback on each attempt; the outage is ours to report once."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, LOST):
            return True
        if not log.isEnabledFor(logging.DEBUG):
            return False
        record.msg = f"{record.getMessage()}: {one_line(error)}"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def quiet_pool_retries() -> None:
    """Install the filter on asyncpg's pool logger (idempotent)."""
    pool_log = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, _PoolRetryFilter) for f in pool_log.filters):
        pool_log.addFilter(_PoolRetryFilter())
