"""What backups need from the engines: a consistent copy of the database and the list of
stored files that copy references (``heaper_trio.backup`` drives them; SQL stays here).

SQLite: the online backup API copies the live database in one step (a read transaction:
the server keeps writing meanwhile, in WAL mode it is not blocked). PostgreSQL: a repeatable
read transaction exports its snapshot; ``pg_dump --snapshot`` dumps exactly what that
transaction sees, and the file list is read in it too.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from heaper_trio.storage.sqlite.engine import DB_FILE

T = TypeVar("T")
# A file row with no source_path has its bytes in the store (a scanned file lives elsewhere)
STORED_FILES = "SELECT hash, size FROM files WHERE source_path IS NULL ORDER BY hash"

__all__ = [
    "DB_FILE",
    "pg_is_empty",
    "pg_with_snapshot",
    "sqlite_check",
    "sqlite_copy",
    "sqlite_stored_files",
]


def sqlite_copy(live: Path, dest: Path) -> None:
    """A consistent copy of the live database at ``dest``, as one self-contained file
    (rollback journal mode: no ``-wal`` beside it)."""
    src = sqlite3.connect(live, timeout=60)
    try:
        out = sqlite3.connect(dest)
        try:
            src.backup(out, pages=-1)  # one step: a step-wise copy restarts on every write
            out.execute("PRAGMA journal_mode=DELETE")
        finally:
            out.close()
    finally:
        src.close()


def _open_ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)


def sqlite_check(path: Path) -> str | None:
    """None when ``PRAGMA integrity_check`` says ok, else its first complaint."""
    try:
        conn = _open_ro(path)
        try:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        return str(e)
    first = str(rows[0][0]) if rows else "no answer"
    return None if first == "ok" else first


def sqlite_stored_files(path: Path) -> list[tuple[str, int]]:
    """(hash, size) of every file whose bytes the store holds, in a database copy."""
    conn = _open_ro(path)
    try:
        return [(str(h), int(s)) for h, s in conn.execute(STORED_FILES)]
    finally:
        conn.close()


async def pg_with_snapshot(
    url: str, during: Callable[[str, list[tuple[str, int]]], Awaitable[T]]
) -> T:
    """Run ``during(snapshot_id, stored_files)`` while a transaction holds the exported
    snapshot (plain asyncio: the backup command runs no trio server)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = str(await conn.fetchval("SELECT pg_export_snapshot()"))
            files = [(str(r[0]), int(r[1])) for r in await conn.fetch(STORED_FILES)]
            return await during(snapshot, files)
    finally:
        await conn.close()


def pg_is_empty(url: str) -> bool:
    """Whether the database has no table of ours (a restore never writes over one)."""
    import asyncpg

    async def check() -> bool:
        conn = await asyncpg.connect(url)
        try:
            n = await conn.fetchval(
                "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
            )
            return int(n) == 0
        finally:
            await conn.close()

    return asyncio.run(check())
