"""SQLite units of work for block history (``block_history``; see ``storage.history_rows``)."""

from __future__ import annotations

import sqlite3

from heaper_trio.records import BlockChange, CommitResult, CommitStatus
from heaper_trio.records.history import HistoryKind, HistoryRow
from heaper_trio.storage import history_rows as hr
from heaper_trio.storage.sqlite import documents as docs
from heaper_trio.storage.sqlite.runtime import SqliteRuntime


def move_to_history(c: sqlite3.Connection, block_id: str, covers: int) -> int:
    """Move the log rows up to ``covers`` (now in the snapshot) to the history; how many."""
    c.execute(hr.move_sql(b="?", s="?"), (block_id, covers))
    return c.execute(
        "DELETE FROM block_updates WHERE block_id=? AND seq <= ?", (block_id, covers)
    ).rowcount


def history_page(
    c: sqlite3.Connection, block_id: str, before_seq: int, limit: int, with_data: bool
) -> list[HistoryRow]:
    sql = hr.page_sql(with_data, b=":b", s=":s", n=":n")
    rows = c.execute(sql, {"b": block_id, "s": before_seq, "n": limit}).fetchall()
    return [hr.history_row(r) for r in rows]


def version_rows(c: sqlite3.Connection, block_id: str, seq: int) -> list[HistoryRow]:
    rows = c.execute(hr.version_sql(b=":b", s=":s"), {"b": block_id, "s": seq}).fetchall()
    return [hr.history_row(r) for r in rows]


def compact_block(
    c: sqlite3.Connection, block_id: str, expected_last_seq: int, snapshot: bytes
) -> int | None:
    """Snapshot the block as of its last row and move its log to the history; None if the
    log moved on meanwhile. The block's change time stays: nothing a client sees changed."""
    done = c.execute(
        "UPDATE blocks SET snapshot_seq=last_seq WHERE id=? AND last_seq=? "
        "AND snapshot_seq < last_seq",
        (block_id, expected_last_seq),
    ).rowcount
    if done:
        docs.keep_snapshot(c, block_id, snapshot)
    else:
        row = c.execute("SELECT last_seq FROM blocks WHERE id=?", (block_id,)).fetchone()
        return 0 if row is not None and row[0] == expected_last_seq else None
    return move_to_history(c, block_id, expected_last_seq)


def restore_block(c: sqlite3.Connection, change: BlockChange, now: int) -> CommitResult:
    """Commit ``change`` (its one update is the restored state, compacted at once), raise the
    block's sync_version and mark the history row as the restore; one transaction."""
    [result] = docs.commit_changes(c, [change], now)
    if result.status is CommitStatus.conflict:
        return result
    version = c.execute(
        "UPDATE blocks SET sync_version = sync_version + 1 WHERE id=? RETURNING sync_version",
        (change.block_id,),
    ).fetchone()[0]
    c.execute(
        "UPDATE block_history SET kind=?, sync_version=? WHERE block_id=? AND seq=?",
        (HistoryKind.restore.value, version, change.block_id, result.last_seq),
    )
    return CommitResult(
        result.block_id, result.status, result.updated_at, result.last_seq, int(version)
    )


def thin_candidates(c: sqlite3.Connection, day: int, week: int, gone: int, limit: int) -> list[str]:
    sql = hr.candidates_sql(day=":d", week=":w", gone=":g", n=":n")
    rows = c.execute(sql, {"d": day, "w": week, "g": gone, "n": limit}).fetchall()
    return [r[0] for r in rows]


def old_history(c: sqlite3.Connection, block_id: str, before: int) -> list[HistoryRow]:
    """The block's history rows created before ``before``, bytes included, oldest first."""
    rows = c.execute(
        f"SELECT {hr.COLUMNS}, length(data) AS size FROM block_history "
        "WHERE block_id=? AND created_at < ? ORDER BY seq",
        (block_id, before),
    ).fetchall()
    return [hr.history_row(r) for r in rows]


def replace_history(
    c: sqlite3.Connection,
    block_id: str,
    spans: list[tuple[int, int, int]],
    added: list[HistoryRow],
) -> bool:
    """Delete the rows of each span (first seq, last seq, how many rows it holds) and insert
    ``added``; nothing if a span no longer holds that many rows (another pass got there)."""
    for lo, hi, count in spans:
        found = c.execute(
            "SELECT COUNT(*) FROM block_history WHERE block_id=? AND seq BETWEEN ? AND ?",
            (block_id, lo, hi),
        ).fetchone()[0]
        if found != count:
            return False
    for lo, hi, _ in spans:
        c.execute(
            "DELETE FROM block_history WHERE block_id=? AND seq BETWEEN ? AND ?",
            (block_id, lo, hi),
        )
    c.executemany(
        f"INSERT INTO block_history ({hr.COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [hr.values(r) for r in added],
    )
    return True


class SqliteHistory:
    """The history methods of SqliteStorage (mixed in; ``self.rt`` is its runtime)."""

    rt: SqliteRuntime

    async def history_page(
        self, block_id: str, before_seq: int, limit: int, with_data: bool
    ) -> list[HistoryRow]:
        return await self.rt.read(history_page, block_id, before_seq, limit, with_data)

    async def version_rows(self, block_id: str, seq: int) -> list[HistoryRow]:
        return await self.rt.read(version_rows, block_id, seq)

    async def compact_block(
        self, block_id: str, expected_last_seq: int, snapshot: bytes
    ) -> int | None:
        return await self.rt.write(compact_block, block_id, expected_last_seq, snapshot)

    async def restore_block(self, change: BlockChange, now: int) -> CommitResult:
        return await self.rt.write(restore_block, change, now)

    async def thin_candidates(self, day: int, week: int, gone: int, limit: int) -> list[str]:
        return await self.rt.read(thin_candidates, day, week, gone, limit)

    async def old_history(self, block_id: str, before: int) -> list[HistoryRow]:
        return await self.rt.read(old_history, block_id, before)

    async def replace_history(
        self, block_id: str, spans: list[tuple[int, int, int]], added: list[HistoryRow]
    ) -> bool:
        return await self.rt.write(replace_history, block_id, spans, added)
