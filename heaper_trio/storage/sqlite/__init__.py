"""The embedded engine: one SQLite file in WAL mode, one writer thread with group commit,
readers on their own threads."""

from heaper_trio.storage.sqlite.engine import DB_FILE, SqliteStorage

__all__ = ["DB_FILE", "SqliteStorage"]
