"""PostgreSQL: files by content hash, the blocks holding them, resumable uploads."""

from __future__ import annotations

import json
import time
from typing import Any

from heaper_trio.records import FileRecord, UploadRecord
from heaper_trio.storage.postgres.runtime import Conn, PostgresBridge, read, tx, write1
from heaper_trio.storage.rows import (
    UPLOAD_COLUMNS,
    file_row,
    file_values,
    upload_row,
    upload_values,
)

FILE_COLUMNS = "hash, id, size, mime_type, name, source_path, meta::text AS meta, created_at"


async def write_block_files(c: Conn, block_id: str, heap_id: str, hashes: tuple[str, ...]) -> None:
    """Called in the commit of every block change, with the projection's hashes."""
    await c.execute("DELETE FROM block_files WHERE block_id=$1", block_id)
    if hashes:
        await c.execute(
            "INSERT INTO block_files (block_id, hash, heap_id) "
            "SELECT $1, h, $2 FROM unnest($3::text[]) AS h ON CONFLICT DO NOTHING",
            block_id,
            heap_id,
            list(hashes),
        )


async def _get_file(c: Conn, key: str) -> FileRecord | None:
    return file_row(
        await c.fetchrow(f"SELECT {FILE_COLUMNS} FROM files WHERE hash=$1 OR id=$1", key)
    )


async def _add_file(c: Conn, r: FileRecord) -> FileRecord:
    await c.execute(
        "INSERT INTO files (hash, id, size, mime_type, name, source_path, meta, created_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8) ON CONFLICT DO NOTHING",
        *file_values(r),
    )
    stored = await _get_file(c, r.hash)
    assert stored is not None
    return stored


async def _update_file(
    c: Conn,
    hash: str,
    meta: dict[str, Any] | None,
    mime_type: str | None,
    source_path: str | None,
    clear_source: bool,
) -> None:
    if meta is not None:
        await c.execute("UPDATE files SET meta=$1::jsonb WHERE hash=$2", json.dumps(meta), hash)
    if mime_type is not None:
        await c.execute("UPDATE files SET mime_type=$1 WHERE hash=$2", mime_type, hash)
    if source_path is not None or clear_source:
        await c.execute("UPDATE files SET source_path=$1 WHERE hash=$2", source_path, hash)


async def _readable_by(c: Conn, hash: str, user_id: str) -> bool:
    """A block of the user's holds the hash (a claim: files_v0 is what the user pushed) AND the
    user proved the bytes: sent them (a grant) or a scan of theirs hashed them (an entry, even
    one marked missing since: the scan did read those bytes)."""
    return (
        await c.fetchval(
            "SELECT EXISTS (SELECT 1 FROM block_files f JOIN heaps h ON h.id = f.heap_id "
            "WHERE f.hash=$1 AND h.owner_id=$2) AND ("
            "EXISTS (SELECT 1 FROM file_grants g WHERE g.user_id=$2 AND g.hash=$1) OR "
            "EXISTS (SELECT 1 FROM scan_entries e JOIN heaps eh ON eh.id = e.heap_id "
            "WHERE e.hash=$1 AND eh.owner_id=$2 AND e.kind='file'))",
            hash,
            user_id,
        )
        is True
    )


async def _grant(c: Conn, hash: str, user_id: str, now: int) -> None:
    await c.execute(
        "INSERT INTO file_grants (user_id, hash, created_at) VALUES ($1, $2, $3) "
        "ON CONFLICT DO NOTHING",
        user_id,
        hash,
        now,
    )


async def _hashes_of_heap(c: Conn, heap_id: str, block_ids: list[str] | None) -> list[str]:
    if block_ids is None:
        rows = await c.fetch("SELECT DISTINCT hash FROM block_files WHERE heap_id=$1", heap_id)
    else:
        rows = await c.fetch(
            "SELECT DISTINCT hash FROM block_files WHERE heap_id=$1 AND block_id = ANY($2::text[])",
            heap_id,
            block_ids,
        )
    return sorted(r[0] for r in rows)


async def _holders(c: Conn, heap_id: str) -> list[str]:
    rows = await c.fetch("SELECT DISTINCT block_id FROM block_files WHERE heap_id=$1", heap_id)
    return sorted(r[0] for r in rows)


async def _get_upload(c: Conn, heap_id: str, block_id: str, hash: str) -> UploadRecord | None:
    return upload_row(
        await c.fetchrow(
            f"SELECT {UPLOAD_COLUMNS} FROM uploads WHERE heap_id=$1 AND block_id=$2 AND hash=$3",
            heap_id,
            block_id,
            hash,
        )
    )


async def _save_upload(c: Conn, r: UploadRecord) -> UploadRecord:
    await c.execute(
        f"INSERT INTO uploads ({UPLOAD_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, "
        "$10, $11, $12) ON CONFLICT DO NOTHING",
        *upload_values(r),
    )
    stored = await _get_upload(c, r.heap_id, r.block_id, r.hash)
    assert stored is not None
    return stored


async def _delete_upload(c: Conn, upload_id: str) -> None:
    await c.execute("DELETE FROM uploads WHERE id=$1", upload_id)


async def _has_upload_of(c: Conn, hash: str) -> bool:
    return await c.fetchval("SELECT 1 FROM uploads WHERE hash = $1 LIMIT 1", hash) is not None


async def _present(c: Conn, upload_ids: list[str]) -> set[str]:
    rows = await c.fetch("SELECT id FROM uploads WHERE id = ANY($1::text[])", upload_ids)
    return {r[0] for r in rows}


async def _expired(c: Conn, now: int) -> list[UploadRecord]:
    rows = await c.fetch(f"SELECT {UPLOAD_COLUMNS} FROM uploads WHERE expires_at < $1", now)
    return [u for u in map(upload_row, rows) if u is not None]


class PostgresFiles(PostgresBridge):
    """The file methods of PostgresStorage (mixed in; ``self._run`` crosses to asyncio)."""

    async def get_file(self, key: str) -> FileRecord | None:
        return await self._run(read, _get_file, key)

    async def add_file(self, record: FileRecord) -> FileRecord:
        return await self._run(tx, _add_file, record)

    async def update_file(
        self,
        hash: str,
        *,
        meta: dict[str, Any] | None = None,
        mime_type: str | None = None,
        source_path: str | None = None,
        clear_source: bool = False,
    ) -> None:
        await self._run(tx, _update_file, hash, meta, mime_type, source_path, clear_source)

    async def file_readable_by(self, hash: str, user_id: str) -> bool:
        return await self._run(read, _readable_by, hash, user_id)

    async def grant_file(self, hash: str, user_id: str) -> None:
        await self._run(write1, _grant, hash, user_id, int(time.time() * 1000))

    async def file_hashes_of_heap(
        self, heap_id: str, block_ids: list[str] | None = None
    ) -> list[str]:
        return await self._run(read, _hashes_of_heap, heap_id, block_ids)

    async def blocks_holding_files(self, heap_id: str) -> list[str]:
        return await self._run(read, _holders, heap_id)

    async def save_upload(self, record: UploadRecord) -> UploadRecord:
        return await self._run(tx, _save_upload, record)

    async def get_upload(self, heap_id: str, block_id: str, hash: str) -> UploadRecord | None:
        return await self._run(read, _get_upload, heap_id, block_id, hash)

    async def delete_upload(self, upload_id: str) -> None:
        await self._run(write1, _delete_upload, upload_id)

    async def expired_uploads(self, now: int) -> list[UploadRecord]:
        return await self._run(read, _expired, now)

    async def has_upload_of(self, hash: str) -> bool:
        return await self._run(read, _has_upload_of, hash)

    async def uploads_present(self, upload_ids: list[str]) -> set[str]:
        return await self._run(read, _present, upload_ids)
