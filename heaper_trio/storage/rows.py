"""Row mapping and change-feed paging shared by both engines.

sqlite3.Row and asyncpg.Record both read by column name, and both engines hand JSON columns
back as text (TEXT in SQLite, JSONB without a codec in asyncpg), so one mapping serves both.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import orjson

from heaper_trio.records import (
    BlockRecord,
    ChangedBlock,
    ChangePage,
    EncodedChangePage,
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


# What delta answers of a changed block (``web/json_sync.delta_json``), nothing more: the text
# and the JSON columns are neither read nor decoded on the feed's pages.
DELTA_COLUMNS = "id, heap_id, sync_version, type, title, updated_at, deleted_at"


UPLOAD_COLUMNS = (
    "id, user_id, heap_id, block_id, hash, size, chunk_size, name, mime_type, "
    "created_at, expires_at, multipart_id"
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
        r.multipart_id,
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


def delta_rows(rows: Iterable[Any]) -> list[ChangedBlock]:
    """``DELTA_COLUMNS`` rows, taken by position as they are: a page maps a thousand rows, and
    only a tuple per row is cheap enough (``records.ChangedBlock``)."""
    return list(map(ChangedBlock._make, rows))


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
    changed: list[ChangedBlock],
    deleted: list[tuple[str, int]],
    clock: int,
    limit: int,
    total_changed: int,
    total_deleted: int,
) -> ChangePage:
    """Cut both feeds at one change time so that asking again from it loses nothing.

    Change times are unique within a heap (each change ticks the heap's clock). Should two rows
    ever share one, the engines fetch the rest of a tie the page would end in (``tie_at``), so
    the cut takes the whole tie and the next page starts after it.
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


def tie_at(rows: Sequence[Row | tuple[Any, ...]], limit: int, time_key: int) -> int | None:
    """The change time a page of ``limit`` would end in, when the extra row fetched after
    them (``LIMIT limit + 1``, in (time, id) order) shares it: that tie may run on past
    what was fetched, and the engine fetches the rest of it (time = tie, id > the last one)."""
    if len(rows) <= limit:
        return None
    at = rows[limit][time_key]
    return int(at) if rows[limit - 1][time_key] == at else None


def encoded_page(p: ChangePage) -> EncodedChangePage:
    """``p`` with its rows encoded here, as the database would have: the encoded feed of an
    engine whose own JSON quoting is not orjson's (``feed.json_like_orjson``)."""
    changed = b",".join(
        orjson.dumps(
            {
                "block_id": b.id,
                "updated_at": b.updated_at,
                "sync_version": b.sync_version,
                "type": b.type,
                "title": b.title,
                "deleted_at": b.deleted_at,
            }
        )
        for b in p.changed
    )
    deleted = b",".join(orjson.dumps({"block_id": i, "deleted_at": at}) for i, at in p.deleted)
    return EncodedChangePage(
        changed.decode(),
        deleted.decode(),
        len(p.changed),
        len(p.deleted),
        p.server_time,
        p.has_more,
        p.total_changed,
        p.total_deleted,
    )


def finish_encoded_page(
    heap_id: str,
    clock: int,
    cut: int | None,
    changed: tuple[int, str | None],
    deleted: tuple[int, str | None],
    totals: tuple[int, int],
    memo: DeltaTotals | None,
) -> EncodedChangePage:
    """An encoded page from what the engine's statements gave (each feed's row count and
    JSON, ``None`` for no rows), the totals carried to the walk's next page by ``memo``."""
    server_time = clock if cut is None else cut
    if memo is not None:
        left = (totals[0] - changed[0], totals[1] - deleted[0])
        memo.carry_counts(heap_id, server_time, *left, clock)
    return EncodedChangePage(
        changed[1] or "",
        deleted[1] or "",
        changed[0],
        deleted[0],
        server_time,
        cut is not None,
        totals[0],
        totals[1],
    )


def page_end(changed_ends: Sequence[Any], deleted_ends: Sequence[Any]) -> int | None:
    """Where ``page`` would cut, from each feed's rows ``limit`` and ``limit + 1`` alone (in
    (time, id) order: ``LIMIT 2 OFFSET limit - 1``, the time first): a feed with a row past
    ``limit`` ends at its ``limit``-th time, the page at the earlier of those. None: nothing
    more follows, the page is all there is after ``since``. Everything up to the cut, ties
    included, is then one range query (``updated_at <= cut``) with no tie to fetch apart."""
    cuts = [int(ends[0][0]) for ends in (changed_ends, deleted_ends) if len(ends) > 1]
    return min(cuts) if cuts else None


class DeltaTotals:
    """The feed's totals carried from one page to the next, so a walk counts once.

    ``total_changed`` and ``total_deleted`` count what lies after ``since``. A page computes
    them in the same snapshot as its rows, so what lies after its cut is the totals minus the
    page's rows: remembered under (heap, cut) together with the heap's clock. The next page
    asks from that cut; if the heap's clock is unchanged nothing was written in between (every
    write ticks the clock), and the remembered totals are exact; otherwise it counts again.
    Per storage instance and per process (another worker just counts); a bounded LRU.
    """

    def __init__(self, kept: int = 1024) -> None:
        self._kept = kept
        self._totals: OrderedDict[tuple[str, int], tuple[int, int, int]] = OrderedDict()
        self.hits = 0  # pages answered without counting (tests and benchmarks read it)

    def take(self, heap_id: str, since: int) -> tuple[int, int, int] | None:
        """(clock, changed, deleted) remembered after ``since``, forgotten here: for an engine
        that compares the clock in the very statement that would count otherwise."""
        return self._totals.pop((heap_id, since), None)

    def get(self, heap_id: str, since: int, clock: int) -> tuple[int, int] | None:
        found = self.take(heap_id, since)
        if found is None or found[0] != clock:
            return None
        self.hits += 1
        return found[1], found[2]

    def carry(self, heap_id: str, answered: ChangePage, clock: int) -> None:
        """Remember what lies after ``answered`` (a page read at ``clock``)."""
        self.carry_counts(
            heap_id,
            answered.server_time,
            answered.total_changed - len(answered.changed),
            answered.total_deleted - len(answered.deleted),
            clock,
        )

    def carry_counts(self, heap_id: str, cut: int, changed: int, deleted: int, clock: int) -> None:
        """Remember that ``changed`` and ``deleted`` rows lie after ``cut`` at ``clock``."""
        key = (heap_id, cut)
        self._totals[key] = (clock, changed, deleted)
        self._totals.move_to_end(key)
        while len(self._totals) > self._kept:
            self._totals.popitem(last=False)


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
        row["multipart_id"],
    )
