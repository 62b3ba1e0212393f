"""The PostgreSQL engine: asyncpg through trio-asyncio, live fan-out between processes over
LISTEN/NOTIFY."""

from heaper_trio.storage.postgres.engine import PostgresStorage

__all__ = ["PostgresStorage"]
