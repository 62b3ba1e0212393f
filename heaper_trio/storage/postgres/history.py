"""PostgreSQL units of work for block history, the counterpart of ``sqlite.history``.

Writers of a block's history take the block's locks as commits do (``documents``: the
advisory lock, then the block row), so a compaction or restore never interleaves with a push.
"""

from __future__ import annotations

from heaper_trio.records import BlockChange, CommitResult, CommitStatus
from heaper_trio.records.history import HistoryKind, HistoryRow
from heaper_trio.storage import history_rows as hr
from heaper_trio.storage.postgres import documents as docs
from heaper_trio.storage.postgres.notify import block_pointer, notify
from heaper_trio.storage.postgres.runtime import Conn, PostgresBridge, read, tx


async def move_to_history(c: Conn, block_id: str, covers: int) -> int:
    """Move the log rows up to ``covers`` (now in the snapshot) to the history; how many."""
    await c.execute(hr.move_sql(b="$1", s="$2::bigint"), block_id, covers)
    status = await c.execute(
        "DELETE FROM block_updates WHERE block_id=$1 AND seq <= $2", block_id, covers
    )
    return int(status.split()[-1])


async def history_page(
    c: Conn, block_id: str, before_seq: int, limit: int, with_data: bool
) -> list[HistoryRow]:
    rows = await c.fetch(
        hr.page_sql(with_data, b="$1", s="$2::bigint", n="$3"), block_id, before_seq, limit
    )
    return [hr.history_row(r) for r in rows]


async def version_rows(c: Conn, block_id: str, seq: int) -> list[HistoryRow]:
    rows = await c.fetch(hr.version_sql(b="$1", s="$2::bigint"), block_id, seq)
    return [hr.history_row(r) for r in rows]


async def compact_block(
    c: Conn, block_id: str, expected_last_seq: int, snapshot: bytes
) -> int | None:
    await docs._lock_blocks(c, [block_id])
    last = await c.fetchval("SELECT last_seq FROM blocks WHERE id=$1 FOR UPDATE", block_id)
    if last is None or last != expected_last_seq:
        return None
    status = await c.execute(
        "UPDATE blocks SET snapshot=$1, snapshot_seq=last_seq WHERE id=$2 "
        "AND snapshot_seq < last_seq",
        snapshot,
        block_id,
    )
    if status.split()[-1] == "0":
        return 0
    return await move_to_history(c, block_id, expected_last_seq)


async def restore_block(
    c: Conn, change: BlockChange, now: int, announce_as: str | None
) -> CommitResult:
    """As in SQLite (``commit_changes`` takes the locks); the announcement, with the new
    sync_version, goes out at COMMIT."""
    [result] = await docs.commit_changes(c, [change], now, None)
    if result.status is CommitStatus.conflict:
        return result
    version = await c.fetchval(
        "UPDATE blocks SET sync_version = sync_version + 1 WHERE id=$1 RETURNING sync_version",
        change.block_id,
    )
    await c.execute(
        "UPDATE block_history SET kind=$1, sync_version=$2 WHERE block_id=$3 AND seq=$4",
        HistoryKind.restore.value,
        version,
        change.block_id,
        result.last_seq,
    )
    if announce_as is not None:
        pointer = block_pointer(
            announce_as,
            "changed",
            change.heap_id,
            change.block_id,
            result.last_seq,
            version,
            result.updated_at,
        )
        await notify(c, [pointer])
    return CommitResult(
        result.block_id, result.status, result.updated_at, result.last_seq, int(version)
    )


async def thin_candidates(c: Conn, day: int, week: int, gone: int, limit: int) -> list[str]:
    sql = hr.candidates_sql(day="$1::bigint", week="$2::bigint", gone="$3::bigint", n="$4")
    return [r[0] for r in await c.fetch(sql, day, week, gone, limit)]


async def old_history(c: Conn, block_id: str, before: int) -> list[HistoryRow]:
    rows = await c.fetch(
        f"SELECT {hr.COLUMNS}, length(data) AS size FROM block_history "
        "WHERE block_id=$1 AND created_at < $2 ORDER BY seq",
        block_id,
        before,
    )
    return [hr.history_row(r) for r in rows]


async def replace_history(
    c: Conn, block_id: str, spans: list[tuple[int, int, int]], added: list[HistoryRow]
) -> bool:
    await docs._lock_blocks(c, [block_id])
    for lo, hi, count in spans:
        found = await c.fetchval(
            "SELECT COUNT(*) FROM block_history WHERE block_id=$1 AND seq BETWEEN $2 AND $3",
            block_id,
            lo,
            hi,
        )
        if found != count:
            return False
    for lo, hi, _ in spans:
        await c.execute(
            "DELETE FROM block_history WHERE block_id=$1 AND seq BETWEEN $2 AND $3",
            block_id,
            lo,
            hi,
        )
    for r in added:  # a handful: one per hour or day thinned
        await c.execute(
            f"INSERT INTO block_history ({hr.COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            *hr.values(r),
        )
    return True


class PostgresHistory(PostgresBridge):
    """The history methods of PostgresStorage (mixed in), but ``restore_block``, which
    announces in its commit and so lives with the engine's announcement bookkeeping."""

    async def history_page(
        self, block_id: str, before_seq: int, limit: int, with_data: bool
    ) -> list[HistoryRow]:
        return await self._run(read, history_page, block_id, before_seq, limit, with_data)

    async def version_rows(self, block_id: str, seq: int) -> list[HistoryRow]:
        return await self._run(read, version_rows, block_id, seq)

    async def compact_block(
        self, block_id: str, expected_last_seq: int, snapshot: bytes
    ) -> int | None:
        return await self._run(tx, compact_block, block_id, expected_last_seq, snapshot)

    async def thin_candidates(self, day: int, week: int, gone: int, limit: int) -> list[str]:
        return await self._run(read, thin_candidates, day, week, gone, limit)

    async def old_history(self, block_id: str, before: int) -> list[HistoryRow]:
        return await self._run(read, old_history, block_id, before)

    async def replace_history(
        self, block_id: str, spans: list[tuple[int, int, int]], added: list[HistoryRow]
    ) -> bool:
        return await self._run(tx, replace_history, block_id, spans, added)
