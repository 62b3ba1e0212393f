"""What both engines share about ``block_history``: the columns, the row mapper and the
union of history rows with the live log rows after the snapshot (the same SQL on both engines,
parameters written ``{b}`` for the block id, ``{s}`` for a sequence, ``{n}`` for a limit)."""

from __future__ import annotations

from typing import Any

from heaper_trio.records.history import HistoryKind, HistoryRow
from heaper_trio.storage.rows import Row

COLUMNS = "block_id, seq, first_seq, kind, level, sync_version, created_at, author_id, data"


def history_row(r: Row) -> HistoryRow:
    data = r["data"]
    return HistoryRow(
        block_id=r["block_id"],
        seq=int(r["seq"]),
        first_seq=int(r["first_seq"]),
        kind=HistoryKind(r["kind"]),
        level=int(r["level"]),
        sync_version=int(r["sync_version"]),
        created_at=int(r["created_at"]),
        author_id=r["author_id"],
        size=int(r["size"]),
        data=None if data is None else bytes(data),
    )


def values(r: HistoryRow) -> tuple[Any, ...]:
    """A row's values in ``COLUMNS`` order."""
    return (
        r.block_id,
        r.seq,
        r.first_seq,
        r.kind.value,
        r.level,
        r.sync_version,
        r.created_at,
        r.author_id,
        bytes(r.data or b""),
    )


def move_sql(*, b: str, s: str) -> str:
    """Copy block ``b``'s log rows up to ``s`` into the history (compaction, in the commit
    that snapshots them; the commit then deletes them from the log)."""
    return (
        f"INSERT INTO block_history ({COLUMNS}) "
        "SELECT u.block_id, u.seq, u.seq, 'update', 0, bl.sync_version, u.created_at, "
        "u.author_id, u.data FROM block_updates u JOIN blocks bl ON bl.id = u.block_id "
        f"WHERE u.block_id = {b} AND u.seq <= {s} ON CONFLICT DO NOTHING"
    )


def union(with_data: bool, *, b: str, s: str) -> str:
    """History rows and live log rows of block ``b`` with seq < ``s``: one sequence."""
    h_data, u_data = ("h.data", "u.data") if with_data else ("NULL", "NULL")
    return (
        "SELECT h.block_id, h.seq, h.first_seq, h.kind, h.level, h.sync_version, h.created_at, "
        f"h.author_id, length(h.data) AS size, {h_data} AS data "
        f"FROM block_history h WHERE h.block_id = {b} AND h.seq < {s} "
        "UNION ALL "
        "SELECT u.block_id, u.seq, u.seq, 'update', 0, bl.sync_version, u.created_at, "
        f"u.author_id, length(u.data), {u_data} "
        "FROM block_updates u JOIN blocks bl ON bl.id = u.block_id "
        f"WHERE u.block_id = {b} AND u.seq > bl.snapshot_seq AND u.seq <= bl.last_seq "
        f"AND u.seq < {s}"
    )


def page_sql(with_data: bool, *, b: str, s: str, n: str) -> str:
    """The newest ``n`` rows before ``s``, newest first."""
    return f"SELECT * FROM ({union(with_data, b=b, s=s)}) AS x ORDER BY seq DESC LIMIT {n}"


def version_sql(*, b: str, s: str) -> str:
    """The rows the state as of ``s`` is merged from (bytes included), oldest first: from the
    latest base row at or before ``s`` (or the first row), through ``s``."""
    return (
        f"SELECT * FROM ({union(True, b=b, s=f'{s} + 1')}) AS x WHERE seq >= COALESCE(("
        f"SELECT MAX(seq) FROM block_history WHERE block_id = {b} AND kind <> 'update' "
        f"AND seq <= {s}), 0) ORDER BY seq"
    )


def candidates_sql(*, day: str, week: str, gone: str, n: str) -> str:
    """Blocks with history rows older than a cut-off and not yet thinned to it."""
    return (
        "SELECT DISTINCT block_id FROM block_history WHERE "
        f"(created_at < {day} AND level < 1) OR (created_at < {week} AND level < 2) "
        f"OR (created_at < {gone} AND level < 3) LIMIT {n}"
    )
