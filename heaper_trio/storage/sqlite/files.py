"""SQLite: files by content hash, the blocks holding them, resumable uploads."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from heaper_trio.records import FileRecord, UploadRecord
from heaper_trio.storage.rows import (
    UPLOAD_COLUMNS,
    file_row,
    file_values,
    upload_row,
    upload_values,
)
from heaper_trio.storage.sqlite.runtime import SqliteRuntime

FILE_COLUMNS = "hash, id, size, mime_type, name, source_path, meta, created_at"


def write_block_files(
    c: sqlite3.Connection, block_id: str, heap_id: str, hashes: tuple[str, ...]
) -> None:
    """Called in the commit of every block change, with the projection's hashes."""
    c.execute("DELETE FROM block_files WHERE block_id=?", (block_id,))
    if hashes:  # most blocks hold no file: no empty executemany
        c.executemany(
            "INSERT OR IGNORE INTO block_files (block_id, hash, heap_id) VALUES (?, ?, ?)",
            [(block_id, h, heap_id) for h in hashes],
        )


def _get_file(c: sqlite3.Connection, key: str) -> FileRecord | None:
    return file_row(
        c.execute(f"SELECT {FILE_COLUMNS} FROM files WHERE hash=? OR id=?", (key, key)).fetchone()
    )


def _add_file(c: sqlite3.Connection, r: FileRecord) -> FileRecord:
    c.execute(
        f"INSERT OR IGNORE INTO files ({FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        file_values(r),
    )
    stored = _get_file(c, r.hash)
    assert stored is not None
    return stored


def _update_file(
    c: sqlite3.Connection,
    hash: str,
    meta: dict[str, Any] | None,
    mime_type: str | None,
    source_path: str | None,
    clear_source: bool,
) -> None:
    if meta is not None:
        c.execute("UPDATE files SET meta=? WHERE hash=?", (json.dumps(meta), hash))
    if mime_type is not None:
        c.execute("UPDATE files SET mime_type=? WHERE hash=?", (mime_type, hash))
    if source_path is not None or clear_source:
        c.execute("UPDATE files SET source_path=? WHERE hash=?", (source_path, hash))


# A block of the user's holds the hash (a claim: files_v0 is what the user pushed) AND the user
# proved the bytes: sent them (a grant) or a scan of theirs hashed them (an entry, even one
# marked missing since: the scan read those bytes, so a gone file answers `file_missing`).
READABLE = (
    "SELECT 1 FROM block_files f JOIN heaps h ON h.id = f.heap_id "
    "WHERE f.hash=:hash AND h.owner_id=:user AND ("
    "EXISTS (SELECT 1 FROM file_grants g WHERE g.user_id=:user AND g.hash=:hash) OR "
    "EXISTS (SELECT 1 FROM scan_entries e JOIN heaps eh ON eh.id = e.heap_id "
    "WHERE e.hash=:hash AND eh.owner_id=:user AND e.kind='file')) LIMIT 1"
)


def _readable_by(c: sqlite3.Connection, hash: str, user_id: str) -> bool:
    return c.execute(READABLE, {"hash": hash, "user": user_id}).fetchone() is not None


def _grant(c: sqlite3.Connection, hash: str, user_id: str, now: int) -> None:
    c.execute(
        "INSERT OR IGNORE INTO file_grants (user_id, hash, created_at) VALUES (?, ?, ?)",
        (user_id, hash, now),
    )


def _hashes_of_heap(c: sqlite3.Connection, heap_id: str, block_ids: list[str] | None) -> list[str]:
    if block_ids is None:
        rows = c.execute("SELECT DISTINCT hash FROM block_files WHERE heap_id=?", (heap_id,))
        return [r[0] for r in rows]
    out: set[str] = set()
    for start in range(0, len(block_ids), 500):
        chunk = block_ids[start : start + 500]
        rows = c.execute(
            f"SELECT hash FROM block_files WHERE heap_id=? AND block_id IN "
            f"({','.join('?' * len(chunk))})",
            (heap_id, *chunk),
        )
        out.update(r[0] for r in rows)
    return sorted(out)


def _get_upload(
    c: sqlite3.Connection, heap_id: str, block_id: str, hash: str
) -> UploadRecord | None:
    return upload_row(
        c.execute(
            f"SELECT {UPLOAD_COLUMNS} FROM uploads WHERE heap_id=? AND block_id=? AND hash=?",
            (heap_id, block_id, hash),
        ).fetchone()
    )


def _save_upload(c: sqlite3.Connection, r: UploadRecord) -> UploadRecord:
    c.execute(
        f"INSERT OR IGNORE INTO uploads ({UPLOAD_COLUMNS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        upload_values(r),
    )
    stored = _get_upload(c, r.heap_id, r.block_id, r.hash)
    assert stored is not None
    return stored


class SqliteFiles:
    """The file methods of SqliteStorage (mixed in; ``self.rt`` is its runtime)."""

    rt: SqliteRuntime

    async def get_file(self, key: str) -> FileRecord | None:
        return await self.rt.read_point(_get_file, key)

    async def add_file(self, record: FileRecord) -> FileRecord:
        return await self.rt.write(_add_file, record)

    async def update_file(
        self,
        hash: str,
        *,
        meta: dict[str, Any] | None = None,
        mime_type: str | None = None,
        source_path: str | None = None,
        clear_source: bool = False,
    ) -> None:
        await self.rt.write(_update_file, hash, meta, mime_type, source_path, clear_source)

    async def file_readable_by(self, hash: str, user_id: str) -> bool:
        return await self.rt.read_point(_readable_by, hash, user_id)

    async def grant_file(self, hash: str, user_id: str) -> None:
        await self.rt.write(_grant, hash, user_id, int(time.time() * 1000))

    async def file_hashes_of_heap(
        self, heap_id: str, block_ids: list[str] | None = None
    ) -> list[str]:
        return await self.rt.read(_hashes_of_heap, heap_id, block_ids)

    async def blocks_holding_files(self, heap_id: str) -> list[str]:
        def q(c: sqlite3.Connection) -> list[str]:
            rows = c.execute(
                "SELECT DISTINCT block_id FROM block_files WHERE heap_id=?", (heap_id,)
            )
            return sorted(r[0] for r in rows)

        return await self.rt.read(q)

    async def save_upload(self, record: UploadRecord) -> UploadRecord:
        return await self.rt.write(_save_upload, record)

    async def get_upload(self, heap_id: str, block_id: str, hash: str) -> UploadRecord | None:
        return await self.rt.read_point(_get_upload, heap_id, block_id, hash)

    async def delete_upload(self, upload_id: str) -> None:
        await self.rt.write(lambda c: c.execute("DELETE FROM uploads WHERE id=?", (upload_id,)))

    async def expired_uploads(self, now: int) -> list[UploadRecord]:
        def q(c: sqlite3.Connection) -> list[UploadRecord]:
            rows = c.execute(
                f"SELECT {UPLOAD_COLUMNS} FROM uploads WHERE expires_at < ?", (now,)
            ).fetchall()
            return [u for u in map(upload_row, rows) if u is not None]

        return await self.rt.read(q)

    async def has_upload_of(self, hash: str) -> bool:
        def q(c: sqlite3.Connection) -> bool:
            return (
                c.execute("SELECT 1 FROM uploads WHERE hash = ? LIMIT 1", (hash,)).fetchone()
                is not None
            )

        return await self.rt.read(q)

    async def uploads_present(self, upload_ids: list[str]) -> set[str]:
        def q(c: sqlite3.Connection) -> set[str]:
            out: set[str] = set()
            for start in range(0, len(upload_ids), 500):
                part = upload_ids[start : start + 500]
                rows = c.execute(
                    f"SELECT id FROM uploads WHERE id IN ({','.join('?' * len(part))})", part
                )
                out.update(r[0] for r in rows)
            return out

        return await self.rt.read(q)
