"""Row mapping and change-feed paging shared by both engines.

sqlite3.Row and asyncpg.Record both read by column name, and both engines hand JSON columns
back as text (TEXT in SQLite, JSONB without a codec in asyncpg), so one mapping serves both.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from heaper_trio.records import (
    BlockRecord,
    ChangePage,
    FileRecord,
    Heap,
    ScanEntry,
    UploadRecord,
    User,
)


class Row(Protocol):
    """What both engines hand back for a row (``sqlite3.Row``, ``asyncpg.Record``): columns
    by name or by position."""

    def __getitem__(self, key: str | int, /) -> Any: ...


RECORD_COLUMNS = (
    "id, heap_id, sync_version, type, title, text, relations, files, apps, created_at, "
    "created_by, updated_at, deleted_at, permanently_deleted_at, size, last_seq"
)


UPLOAD_COLUMNS = (
    "id, user_id, heap_id, block_id, hash, size, chunk_size, name, mime_type, "
    "created_at, expires_at"
)


def file_values(r: FileRecord) -> tuple[Any, ...]:
    """A file row's values for an INSERT, in the order both engines list the columns
    (hash, id, size, mime_type, name, source_path, meta as JSON text, created_at)."""
    return (
        r.hash,
        r.id,
        r.size,
        r.mime_type,
        r.name,
        r.source_path,
        json.dumps(r.meta),
        r.created_at,
    )


def upload_values(r: UploadRecord) -> tuple[Any, ...]:
    """An upload row's values for an INSERT, in ``UPLOAD_COLUMNS`` order."""
    return (
        r.id,
        r.user_id,
        r.heap_id,
        r.block_id,
        r.hash,
        r.size,
        r.chunk_size,
        r.name,
        r.mime_type,
        r.created_at,
        r.expires_at,
    )


ENTRY_COLUMNS = (
    "heap_id, path, kind, block_id, folder_id, size, mtime_ns, hash, missing, "
    "scan_id, updated_at, dev, ino, ctime_ns"
)


def user_row(row: Row | None) -> User | None:
    """``SELECT * FROM users``; ``is_admin`` is 0/1 in SQLite, a boolean in PostgreSQL."""
    if row is None:
        return None
    return User(
        id=row["id"],
        public_key=row["public_key"],
        email=row["email"],
        state=row["state"],
        is_admin=bool(row["is_admin"]),
        token_generation=row["token_generation"],
        created_at=row["created_at"],
        approved_at=row["approved_at"],
    )


def heap_row(row: Row | None) -> Heap | None:
    if row is None:
        return None
    return Heap(
        row["id"],
        row["owner_id"],
        row["name"],
        row["root_block_id"],
        row["created_at"],
        row["clock"],
    )


def record_row(row: Row) -> BlockRecord:
    return BlockRecord(
        id=row["id"],
        heap_id=row["heap_id"],
        sync_version=row["sync_version"],
        type=row["type"],
        title=row["title"],
        text=row["text"],
        relations=json.loads(row["relations"]),
        files=json.loads(row["files"]),
        apps=json.loads(row["apps"]),
        created_at=row["created_at"],
        created_by=row["created_by"],
        updated_at=row["updated_at"],
        deleted_at=row["deleted_at"],
        permanently_deleted_at=row["permanently_deleted_at"],
        size=row["size"],
        last_seq=row["last_seq"],
    )


def entry_row(row: Row) -> ScanEntry:
    """``ENTRY_COLUMNS``; ``missing`` is 0/1 in SQLite, a boolean in PostgreSQL."""
    return ScanEntry(
        row["heap_id"],
        row["path"],
        row["kind"],
        row["block_id"],
        row["folder_id"],
        row["size"],
        row["mtime_ns"],
        row["hash"],
        bool(row["missing"]),
        row["scan_id"],
        row["updated_at"],
        row["dev"],
        row["ino"],
        row["ctime_ns"],
    )


def page(
    changed: list[BlockRecord],
    deleted: list[tuple[str, int]],
    clock: int,
    limit: int,
    total_changed: int,
    total_deleted: int,
) -> ChangePage:
    """Cut both feeds at one change time so that asking again from it loses nothing.

    Change times are unique within a heap, so the cut never splits a tie.
    """
    has_more = len(changed) > limit or len(deleted) > limit
    if not has_more:
        return ChangePage(changed, deleted, clock, False, total_changed, total_deleted)
    cut = min(
        x
        for x in (
            changed[limit - 1].updated_at if len(changed) > limit else None,
            deleted[limit - 1][1] if len(deleted) > limit else None,
        )
        if x is not None
    )
    return ChangePage(
        [b for b in changed if b.updated_at <= cut],
        [d for d in deleted if d[1] <= cut],
        cut,
        True,
        total_changed,
        total_deleted,
    )


def file_row(row: Row | None) -> FileRecord | None:
    if row is None:
        return None
    return FileRecord(
        row["hash"],
        row["id"],
        row["size"],
        row["mime_type"],
        row["name"],
        row["source_path"],
        json.loads(row["meta"]),
        row["created_at"],
    )


def upload_row(row: Row | None) -> UploadRecord | None:
    if row is None:
        return None
    return UploadRecord(
        row["id"],
        row["user_id"],
        row["heap_id"],
        row["block_id"],
        row["hash"],
        row["size"],
        row["chunk_size"],
        row["name"],
        row["mime_type"],
        row["created_at"],
        row["expires_at"],
    )
