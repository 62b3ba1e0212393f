"""SQLite: object-store state (upload claims, deletions under way, multipart ids). One
process per database and one writer, so each write below is atomic against the others
without locks; the rules are PostgreSQL's (``services/file_claims``)."""

from __future__ import annotations

import sqlite3

from heaper_trio.records import FileRecord
from heaper_trio.storage.rows import file_row
from heaper_trio.storage.sqlite.runtime import SqliteRuntime

FILE_COLUMNS = "hash, id, size, mime_type, name, source_path, meta, created_at"


def _claim(c: sqlite3.Connection, hash: str, token: str, now: int, deletions_after: int) -> bool:
    c.execute(
        "INSERT INTO file_claims (hash, token, created_at) VALUES (?, ?, ?) "
        "ON CONFLICT (hash, token) DO UPDATE SET created_at = excluded.created_at",
        (hash, token, now),
    )
    found = c.execute(
        "SELECT 1 FROM file_deletions WHERE hash=? AND started_at >= ?", (hash, deletions_after)
    ).fetchone()
    return found is not None


def _drop(
    c: sqlite3.Connection, hashes: list[str], now: int, claims_after: int
) -> list[FileRecord]:
    dropped = []
    for h in sorted(set(hashes)):
        if c.execute("SELECT 1 FROM block_files WHERE hash=? LIMIT 1", (h,)).fetchone():
            continue
        if c.execute(
            "SELECT 1 FROM file_claims WHERE hash=? AND created_at >= ? LIMIT 1", (h, claims_after)
        ).fetchone():
            continue  # an upload is about to hold it
        record = file_row(
            c.execute(f"SELECT {FILE_COLUMNS} FROM files WHERE hash=?", (h,)).fetchone()
        )
        if record is not None:
            c.execute("DELETE FROM files WHERE hash=?", (h,))
            c.execute("DELETE FROM file_grants WHERE hash=?", (h,))  # new bytes, new proofs
            c.execute(
                "INSERT INTO file_deletions (hash, started_at) VALUES (?, ?) "
                "ON CONFLICT (hash) DO UPDATE SET started_at = excluded.started_at",
                (h, now),
            )
            dropped.append(record)
    return dropped


def _sweep(c: sqlite3.Connection, claims_before: int, limit: int) -> int:
    return c.execute(
        "DELETE FROM file_claims WHERE rowid IN "
        "(SELECT rowid FROM file_claims WHERE created_at < ? LIMIT ?)",
        (claims_before, limit),
    ).rowcount


def _stale_deletions(c: sqlite3.Connection, started_before: int, limit: int) -> list[str]:
    rows = c.execute(
        "SELECT hash FROM file_deletions WHERE started_at < ? ORDER BY started_at LIMIT ?",
        (started_before, limit),
    )
    return [r[0] for r in rows]


def _resume(
    c: sqlite3.Connection, hashes: list[str], started_before: int, now: int, claims_after: int
) -> list[str]:
    resumed = []
    for h in sorted(set(hashes)):
        if not c.execute(
            "SELECT 1 FROM file_deletions WHERE hash=? AND started_at < ?", (h, started_before)
        ).fetchone():
            continue  # ended, or renewed by a deletion under way
        if c.execute("SELECT 1 FROM files WHERE hash=?", (h,)).fetchone():
            c.execute("DELETE FROM file_deletions WHERE hash=?", (h,))  # a file's bytes again
            continue
        if c.execute(
            "SELECT 1 FROM file_claims WHERE hash=? AND created_at >= ? LIMIT 1", (h, claims_after)
        ).fetchone():
            continue  # an upload is about to record them: looked at again next time
        c.execute("UPDATE file_deletions SET started_at=? WHERE hash=?", (now, h))
        resumed.append(h)
    return resumed


def _set_multipart(
    c: sqlite3.Connection, upload_id: str, multipart_id: str, expected: str | None
) -> str | None:
    c.execute(
        "UPDATE uploads SET multipart_id=? WHERE id=? AND multipart_id IS ?",
        (multipart_id, upload_id, expected),
    )
    row = c.execute("SELECT multipart_id FROM uploads WHERE id=?", (upload_id,)).fetchone()
    return None if row is None else row[0]


class SqliteFileState:
    """Mixed into SqliteStorage (``self.rt`` is its runtime)."""

    rt: SqliteRuntime

    async def claim_file(self, hash: str, token: str, now: int, deletions_after: int) -> bool:
        return await self.rt.write(_claim, hash, token, now, deletions_after)

    async def release_file_claim(self, hash: str, token: str) -> None:
        await self.rt.write(
            lambda c: c.execute("DELETE FROM file_claims WHERE hash=? AND token=?", (hash, token))
        )

    async def sweep_file_claims(self, claims_before: int, limit: int) -> int:
        return await self.rt.write(_sweep, claims_before, limit)

    async def stale_file_deletions(self, started_before: int, limit: int) -> list[str]:
        return await self.rt.read(_stale_deletions, started_before, limit)

    async def resume_file_deletions(
        self, hashes: list[str], *, started_before: int, now: int, claims_after: int
    ) -> list[str]:
        if not hashes:
            return []
        return await self.rt.write(_resume, hashes, started_before, now, claims_after)

    async def drop_unreferenced_files(
        self, hashes: list[str], *, now: int = 0, claims_after: int = 0
    ) -> list[FileRecord]:
        return await self.rt.write(_drop, hashes, now, claims_after)

    async def mark_file_deletions(self, hashes: list[str], started_at: int) -> None:
        def mark(c: sqlite3.Connection) -> None:
            c.executemany(
                "INSERT INTO file_deletions (hash, started_at) VALUES (?, ?) "
                "ON CONFLICT (hash) DO NOTHING",
                [(h, started_at) for h in hashes],
            )

        if hashes:
            await self.rt.write(mark)

    async def end_file_deletions(self, hashes: list[str], started_at: int) -> None:
        def end(c: sqlite3.Connection) -> None:
            c.executemany(
                "DELETE FROM file_deletions WHERE hash=? AND started_at=?",
                [(h, started_at) for h in hashes],
            )

        if hashes:
            await self.rt.write(end)

    async def set_multipart_id(
        self, upload_id: str, multipart_id: str, expected: str | None = None
    ) -> str | None:
        return await self.rt.write(_set_multipart, upload_id, multipart_id, expected)
