"""Storage: one interface (``base.Storage``), two engines. Nothing outside imports an engine
directly; ``open_storage`` picks one from the settings."""

from __future__ import annotations

from heaper_trio.settings import Settings
from heaper_trio.storage.base import Storage


def make_storage(settings: Settings, *, lone: bool = True) -> Storage:
    """Build (not yet open) the engine the settings ask for. ``lone``: no other worker
    serves beside this process (a worker of ``--workers`` runs with ``workers`` = 1 and
    ``lone`` False).

    PostgreSQL needs a trio-asyncio loop open around the caller (see ``app.run_server``).
    """
    if settings.database_url:
        from heaper_trio.storage.postgres.engine import PostgresStorage

        # A lone worker runs two group commits at once: the next one's round trip starts
        # while the previous one's statement and COMMIT run, so its event loop does not idle
        # through each (bench_push streams16, load 4.6-5.3: 0.98-1.33x the updates/s of one
        # at a time, median 1.22, 5 runs). Beside other workers it lost (0.58-0.97x of
        # e3d1973, 4 runs): each worker's groups are small already, and a second batch made
        # them smaller still (3.6 -> 2.4-2.9 updates per commit), each commit's database
        # CPU the same.
        in_flight = 2 if lone and settings.worker_count == 1 else 1
        return PostgresStorage(
            settings.database_url,
            min_size=settings.pg_pool_min,
            max_size=settings.pg_pool_max,
            commits_in_flight=in_flight,
        )
    from heaper_trio.storage.sqlite.engine import SqliteStorage

    return SqliteStorage(settings.data_path, settings.sqlite_synchronous)


def database_exists(settings: Settings) -> bool:
    """Whether the configured database is there to open, checked without creating it: an
    admin command pointed at the wrong data directory should say so, not leave an empty
    database behind. A PostgreSQL database is made by its administrator, never by us, so it
    counts as there (opening it tells otherwise)."""
    if settings.database_url:
        return True
    from heaper_trio.storage.sqlite.engine import DB_FILE

    return (settings.data_path / DB_FILE).exists()


__all__ = ["Storage", "database_exists", "make_storage"]
