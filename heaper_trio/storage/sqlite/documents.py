"""SQLite units of work for heaps and blocks; each runs on a connection given by the runtime
(the writer thread for writes, a reader for reads)."""

from __future__ import annotations

import sqlite3
from typing import Any

from heaper_trio.records import (
    BlockChange,
    BlockQuery,
    BlockRecord,
    CommitResult,
    CommitStatus,
    Heap,
    StoredBlock,
    UpdateInfo,
)
from heaper_trio.records.text_segments import Text, raw_text
from heaper_trio.storage import block_query, history_rows, rules, text_pieces
from heaper_trio.storage.errors import HeapNotFound
from heaper_trio.storage.rows import heap_row
from heaper_trio.storage.sqlite import text_parts
from heaper_trio.storage.sqlite.files import write_block_files
from heaper_trio.storage.sqlite.search import index_block, reindex
from heaper_trio.storage.sqlite.text_parts import SQLITE_RECORD_COLUMNS


def get_heap(c: sqlite3.Connection, heap_id: str) -> Heap | None:
    return heap_row(c.execute("SELECT * FROM heaps WHERE id=?", (heap_id,)).fetchone())


def list_heaps(c: sqlite3.Connection, owner_id: str) -> list[Heap]:
    rows = c.execute("SELECT * FROM heaps WHERE owner_id=? ORDER BY created_at, id", (owner_id,))
    return [h for h in map(heap_row, rows.fetchall()) if h is not None]


def create_heap(c: sqlite3.Connection, heap: Heap, root: BlockChange, now: int) -> bool:
    taken = c.execute(
        "SELECT EXISTS (SELECT 1 FROM heaps WHERE id=?) "
        "OR EXISTS (SELECT 1 FROM blocks WHERE id=?) "
        "OR EXISTS (SELECT 1 FROM block_tombstones WHERE block_id=?)",
        (heap.id, root.block_id, root.block_id),
    ).fetchone()[0]
    if taken:
        return False
    c.execute(
        "INSERT INTO heaps (id, owner_id, name, root_block_id, created_at, clock) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (heap.id, heap.owner_id, heap.name, heap.root_block_id, heap.created_at, now - 1),
    )
    result = commit_change(c, root, now)
    assert result.status is CommitStatus.created
    return True


def load_block(c: sqlite3.Connection, block_id: str) -> StoredBlock | None:
    row = c.execute(
        "SELECT id, heap_id, sync_version, (SELECT snapshot FROM block_snapshots WHERE "
        "block_n=blocks.n) AS snapshot, snapshot_seq, last_seq, created_at, updated_at FROM blocks "
        "WHERE id=?",
        (block_id,),
    ).fetchone()
    if row is None:
        return None
    updates = c.execute(
        "SELECT data FROM block_updates WHERE block_id=? AND seq > ? AND seq <= ? ORDER BY seq",
        (block_id, row["snapshot_seq"], row["last_seq"]),
    ).fetchall()
    return StoredBlock(
        id=row["id"],
        heap_id=row["heap_id"],
        sync_version=row["sync_version"],
        snapshot=row["snapshot"],
        snapshot_seq=row["snapshot_seq"],
        updates=tuple(bytes(u[0]) for u in updates),
        last_seq=row["last_seq"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def get_blocks(c: sqlite3.Connection, block_ids: list[str]) -> dict[str, BlockRecord]:
    out: dict[str, BlockRecord] = {}
    for start in range(0, len(block_ids), 500):
        chunk = block_ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        rows = c.execute(f"SELECT {SQLITE_RECORD_COLUMNS} FROM blocks WHERE id IN ({marks})", chunk)
        out.update((r.id, r) for r in text_parts.records(c, rows.fetchall()))
    return out


def load_blocks(c: sqlite3.Connection, block_ids: list[str]) -> dict[str, StoredBlock]:
    found = {}
    for block_id in dict.fromkeys(block_ids):
        stored = load_block(c, block_id)
        if stored is not None:
            found[block_id] = stored
    return found


def push_reads(
    c: sqlite3.Connection, heap_ids: list[str], block_ids: list[str], load_ids: list[str]
) -> tuple[dict[str, str], dict[str, tuple[str, int]], dict[str, StoredBlock]]:
    owners = {}
    for heap_id in heap_ids:
        row = c.execute("SELECT owner_id FROM heaps WHERE id=?", (heap_id,)).fetchone()
        if row is not None:
            owners[heap_id] = row[0]
    return owners, tombstones(c, block_ids), load_blocks(c, load_ids)


def tombstones(c: sqlite3.Connection, block_ids: list[str]) -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    for start in range(0, len(block_ids), 500):
        chunk = block_ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        rows = c.execute(
            "SELECT block_id, heap_id, deleted_at FROM block_tombstones "
            f"WHERE block_id IN ({marks})",
            chunk,
        )
        out.update((r[0], (r[1], r[2])) for r in rows.fetchall())
    return out


def _tick(c: sqlite3.Connection, heap_id: str, now: int) -> int:
    """The heap's next change time; the writer thread serialises all callers."""
    row = c.execute(
        "UPDATE heaps SET clock = MAX(?, clock + 1) WHERE id=? RETURNING clock", (now, heap_id)
    ).fetchone()
    if row is None:
        raise HeapNotFound(heap_id)
    return int(row[0])


def commit_change(c: sqlite3.Connection, ch: BlockChange, now: int) -> CommitResult:
    current = c.execute(
        "SELECT heap_id, last_seq, sync_version, n, title, text, text_parts, "
        "EXISTS (SELECT 1 FROM block_lines_todo t WHERE t.block_n = blocks.n) AS stale "
        "FROM blocks WHERE id=?",
        (ch.block_id,),
    ).fetchone()
    tombstoned = (
        rules.creates(ch)
        and c.execute("SELECT 1 FROM block_tombstones WHERE block_id=?", (ch.block_id,)).fetchone()
        is not None
    )
    if rules.commit_conflict(ch, current, tombstoned):
        return rules.conflict(ch)
    updated_at = _tick(c, ch.heap_id, now)
    base = 0 if current is None else current["last_seq"]
    last_seq = base + len(ch.updates)
    columns = rules.block_columns(ch, updated_at, last_seq, text=False)
    if current is None:
        text = ch.projection.text
        columns.update(rules.created_columns(ch, updated_at))
        big = text_pieces.in_pieces(text, False)
        columns.update(text="" if big else text, text_parts=0)
        names = ", ".join(columns)
        block_n = c.execute(
            f"INSERT INTO blocks ({names}) VALUES ({', '.join('?' * len(columns))}) RETURNING n",
            tuple(columns.values()),
        ).fetchone()[0]
        if big:
            _, token = text_parts.store(c, block_n, None, text)
            c.execute("UPDATE blocks SET text_parts=? WHERE n=?", (token, block_n))
        index_block(c, block_n, None, ch.projection.title, text)
    else:
        n, token = current["n"], current["text_parts"]
        was = text_parts.stored(c, n, token) if token else None
        old_text = current["text"] if was is None else raw_text(was)
        new = raw_text(ch.projection)  # a big text stays in segments (``text_segments``)
        columns["text"], columns["text_parts"] = text_parts.store(c, n, was, new)
        sets = ", ".join(f"{k}=?" for k in columns)
        c.execute(f"UPDATE blocks SET {sets} WHERE id=?", (*columns.values(), ch.block_id))
        _index_edit(c, ch, current, old_text)
    c.executemany(
        "INSERT INTO block_updates (block_id, seq, data, created_at, author_id) "
        "VALUES (?, ?, ?, ?, ?)",
        rules.log_rows(ch, base, now),
    )
    if ch.compacted is not None:
        snapshot, covers = ch.compacted
        if c.execute(
            "UPDATE blocks SET snapshot_seq=? WHERE id=? AND snapshot_seq < ?",
            (covers, ch.block_id, covers),
        ).rowcount:
            keep_snapshot(c, ch.block_id, snapshot)
        c.execute(history_rows.move_sql(b="?", s="?"), (ch.block_id, covers))  # kept: history
        c.execute("DELETE FROM block_updates WHERE block_id=? AND seq <= ?", (ch.block_id, covers))
    c.execute("DELETE FROM block_relations WHERE block_id=?", (ch.block_id,))
    if relations := rules.relation_rows(ch.block_id, ch.heap_id, ch.projection):
        c.executemany(
            "INSERT OR IGNORE INTO block_relations (block_id, kind, target_id, heap_id) "
            "VALUES (?, ?, ?, ?)",
            relations,
        )
    write_block_files(c, ch.block_id, ch.heap_id, ch.projection.file_hashes)
    c.execute(
        "UPDATE heaps SET name=? WHERE id=? AND root_block_id=?",
        (ch.projection.title, ch.heap_id, ch.block_id),
    )
    return rules.commit_result(ch, current, updated_at, last_seq)


def keep_snapshot(c: sqlite3.Connection, block_id: str, snapshot: bytes) -> None:
    """The block's snapshot, kept out of its row (migration 0022): a row holding it would
    be written again whole, snapshot and all, by every push."""
    c.execute(
        "INSERT OR REPLACE INTO block_snapshots (block_n, snapshot) "
        "SELECT n, ? FROM blocks WHERE id=?",
        (snapshot, block_id),
    )


# Live edits of texts up to this many characters leave their search rows to the catch-up; a
# rebuild of that much text costs the writer about as much as one ordinary commit.
LATER_MAX_CHARS = 16_384


def _index_edit(
    c: sqlite3.Connection, ch: BlockChange, current: sqlite3.Row, old_text: Text
) -> None:
    """An existing block's search rows: changed lines now; or, for a live edit of a text up to
    ``LATER_MAX_CHARS``, a mark that the background re-index (``search.reindex_marked``)
    takes later. Rows already marked stale no longer match the block's old text, so they are
    rebuilt whole, not patched. A longer text is indexed now, by its changed lines: the
    catch-up rebuilds whole, which took the writer 1.2 s for 480,000 characters (review)."""
    text = raw_text(ch.projection)
    if ch.search_later and len(text) <= LATER_MAX_CHARS:
        if not current["stale"]:
            c.execute("INSERT INTO block_lines_todo (block_n) VALUES (?)", (current["n"],))
    elif current["stale"]:
        reindex(c, current["n"], ch.projection.title, ch.projection.text)
    else:
        old = (current["title"], old_text)
        index_block(c, current["n"], old, ch.projection.title, text)


def commit_changes(
    c: sqlite3.Connection, changes: list[BlockChange], now: int
) -> list[CommitResult]:
    results = []
    for ch in changes:
        if ch.heap_owner is not None:
            owner = c.execute("SELECT owner_id FROM heaps WHERE id=?", (ch.heap_id,)).fetchone()
            if rules.not_owner(ch, owner[0] if owner else None):
                results.append(rules.conflict(ch))
                continue
        # No savepoint per change: HeapNotFound comes from the clock tick, the change's first
        # write, so it leaves nothing to undo; any other failure undoes the writer's whole job
        # (``SqliteRuntime._run_batch``). Two statements less per pushed block.
        try:
            results.append(commit_change(c, ch, now))
        except HeapNotFound:  # the heap went away under us
            results.append(rules.conflict(ch))
    return results


def related(c: sqlite3.Connection, block_id: str) -> dict[str, list[str]]:
    """Outgoing lists are the block's own document; incoming ones (children, backlinks) come
    only from blocks in heaps of the block's owner, so another user who writes this id into
    their own blocks neither shows up here nor learns that the id exists."""
    outgoing = c.execute(
        "SELECT kind, target_id FROM block_relations WHERE block_id=? ORDER BY target_id",
        (block_id,),
    ).fetchall()
    incoming = c.execute(
        "SELECT r.kind, r.block_id FROM block_relations r JOIN blocks b ON b.id = r.block_id "
        "JOIN heaps h ON h.id = b.heap_id "
        "WHERE r.target_id=? AND b.deleted_at IS NULL AND h.owner_id = ("
        "SELECT o.owner_id FROM blocks t JOIN heaps o ON o.id = t.heap_id WHERE t.id=?) "
        "ORDER BY r.block_id",
        (block_id, block_id),
    ).fetchall()
    return rules.related_lists(outgoing, incoming)


def block_history(c: sqlite3.Connection, block_id: str) -> tuple[int, list[UpdateInfo]]:
    row = c.execute("SELECT snapshot_seq FROM blocks WHERE id=?", (block_id,)).fetchone()
    if row is None:
        return 0, []
    rows = c.execute(
        "SELECT seq, created_at, author_id, length(data) FROM block_updates WHERE block_id=? "
        "AND seq > ? ORDER BY seq",
        (block_id, row[0]),
    ).fetchall()
    return int(row[0]), [UpdateInfo(r[0], r[1], r[2], r[3]) for r in rows]


def marked_gone(c: sqlite3.Connection) -> dict[str, list[str]]:
    rows = c.execute(
        "SELECT heap_id, id FROM blocks WHERE permanently_deleted_at IS NOT NULL "
        "AND deleted_at IS NOT NULL ORDER BY heap_id, id"
    ).fetchall()
    return rules.by_heap(rows)


def trashed(c: sqlite3.Connection, heap_id: str) -> list[BlockRecord]:
    rows = c.execute(
        f"SELECT {SQLITE_RECORD_COLUMNS} FROM blocks WHERE heap_id=? AND deleted_at IS NOT NULL "
        "ORDER BY deleted_at DESC, id",
        (heap_id,),
    )
    return text_parts.records(c, rows.fetchall())


def purge_blocks(c: sqlite3.Connection, heap_id: str, block_ids: list[str], now: int) -> list[str]:
    purged = []
    for block_id in block_ids:
        row = c.execute(
            "SELECT 1 FROM blocks WHERE id=? AND heap_id=? AND deleted_at IS NOT NULL",
            (block_id, heap_id),
        ).fetchone()
        if row is None:
            continue
        at = _tick(c, heap_id, now)
        c.execute("DELETE FROM block_updates WHERE block_id=?", (block_id,))
        c.execute("DELETE FROM block_relations WHERE block_id=?", (block_id,))
        c.execute("DELETE FROM block_files WHERE block_id=?", (block_id,))
        c.execute("DELETE FROM blocks WHERE id=?", (block_id,))
        c.execute(
            "INSERT INTO block_tombstones (block_id, heap_id, deleted_at) VALUES (?, ?, ?)",
            (block_id, heap_id, at),
        )
        purged.append(block_id)
    return purged


def delete_heap(c: sqlite3.Connection, heap_id: str) -> bool:
    ids = [r[0] for r in c.execute("SELECT id FROM blocks WHERE heap_id=?", (heap_id,))]
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        c.execute(f"DELETE FROM block_updates WHERE block_id IN ({marks})", chunk)
        c.execute(f"DELETE FROM block_relations WHERE block_id IN ({marks})", chunk)
    c.execute("DELETE FROM block_files WHERE heap_id=?", (heap_id,))
    c.execute("DELETE FROM blocks WHERE heap_id=?", (heap_id,))
    c.execute("DELETE FROM block_tombstones WHERE heap_id=?", (heap_id,))
    return c.execute("DELETE FROM heaps WHERE id=?", (heap_id,)).rowcount > 0


def heap_stats(c: sqlite3.Connection, heap_id: str) -> dict[str, Any]:
    by_type = c.execute(
        "SELECT type, COUNT(*) FROM blocks WHERE heap_id=? AND deleted_at IS NULL GROUP BY type",
        (heap_id,),
    ).fetchall()
    trash = c.execute(
        "SELECT COUNT(*) FROM blocks WHERE heap_id=? AND deleted_at IS NOT NULL", (heap_id,)
    ).fetchone()[0]
    files = c.execute(
        "SELECT files FROM blocks WHERE heap_id=? AND files != '{}'", (heap_id,)
    ).fetchall()
    clock = c.execute("SELECT clock FROM heaps WHERE id=?", (heap_id,)).fetchone()
    return rules.heap_stats(by_type, trash, files, clock[0] if clock else None)


def query_blocks(
    c: sqlite3.Connection, heap_id: str, q: BlockQuery, limit: int
) -> list[BlockRecord]:
    sql, params = block_query.select_sql(
        block_query.SQLITE, heap_id, q, SQLITE_RECORD_COLUMNS, limit
    )
    return text_parts.records(c, c.execute(sql, params).fetchall())


def count_blocks(c: sqlite3.Connection, heap_id: str, q: BlockQuery) -> dict[str, int]:
    sql, params = block_query.count_sql(block_query.SQLITE, heap_id, q)
    return {(t or "unknown"): n for t, n in c.execute(sql, params).fetchall()}
