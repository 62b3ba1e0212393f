"""The storage contract for block history (``block_history``), on both engines: compaction
moves the log there, pages, the rows a version is merged from, compaction on request, restore,
thinning's reads and conditional replace, and the history going with its block."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from heaper_trio.records import CommitStatus
from heaper_trio.records.history import HistoryKind, HistoryRow
from heaper_trio.settings import Settings
from heaper_trio.storage import Storage
from heaper_trio.storage.migrate import migration_scripts
from tests.test_storage import NOW, opened
from tests.test_storage_contract import add_users, change, new_heap


def seqs(rows: list[HistoryRow]) -> list[int]:
    return [r.seq for r in rows]


async def test_history_rows(make_settings: Callable[..., Settings]) -> None:
    async with opened(make_settings()) as storage:
        await add_users(storage)
        await new_heap(storage, "h1")
        await storage.commit_changes([change("b1", "h1", updates=(b"1", b"2", b"3"))], NOW)
        compact = change("b1", "h1", expected=3, updates=(b"4",), compacted=(b"S3", 3))
        assert (await storage.commit_changes([compact], NOW + 5))[0].status is CommitStatus.ok

        # Compaction moved rows 1..3 to the history; the log keeps row 4; one sequence.
        block = await storage.load_block("b1")
        assert block is not None and block.updates == (b"4",) and block.snapshot_seq == 3
        rows = await storage.history_page("b1", 100, 10, True)
        assert seqs(rows) == [4, 3, 2, 1] and [r.data for r in rows] == [b"4", b"3", b"2", b"1"]
        assert all(r.kind is HistoryKind.update and r.sync_version == 1 for r in rows)
        assert rows[0].created_at == NOW + 5 and rows[1].created_at == NOW
        assert rows[0].author_id == "u1" and rows[0].size == 1
        assert [r.data for r in await storage.history_page("b1", 3, 1, False)] == [None]
        assert seqs(await storage.history_page("b1", 3, 5, False)) == [2, 1]
        assert await storage.history_page("nope", 10, 10, False) == []

        # A version: from the latest base at or before it (none yet: the first row).
        assert seqs(await storage.version_rows("b1", 2)) == [1, 2]
        assert seqs(await storage.version_rows("b1", 4)) == [1, 2, 3, 4]

        # Compaction on request: conflict when the log moved, 0 when there is nothing.
        assert await storage.compact_block("b1", 3, b"S") is None
        assert await storage.compact_block("b1", 4, b"S4") == 1
        assert await storage.compact_block("b1", 4, b"S4") == 0
        block = await storage.load_block("b1")
        assert block is not None and (block.snapshot, block.snapshot_seq) == (b"S4", 4)
        assert block.updates == () and block.updated_at == NOW + 5  # no change time taken

        # Restore: the state as one row, a base with the new sync_version.
        restore = change("b1", "h1", expected=4, updates=(b"R",), compacted=(b"R", 5))
        result = await storage.restore_block(restore, NOW + 9)
        assert (result.status, result.last_seq, result.sync_version) == (CommitStatus.ok, 5, 2)
        assert (await storage.restore_block(restore, NOW + 9)).status is CommitStatus.conflict
        block = await storage.load_block("b1")
        assert block is not None and (block.sync_version, block.snapshot, block.updates) == (
            2,
            b"R",
            (),
        )
        [top] = await storage.history_page("b1", 100, 1, True)
        assert (top.seq, top.kind, top.sync_version, top.data) == (5, HistoryKind.restore, 2, b"R")
        await storage.commit_changes([change("b1", "h1", expected=5, updates=(b"6",))], NOW + 10)
        assert seqs(await storage.version_rows("b1", 6)) == [5, 6]
        assert seqs(await storage.version_rows("b1", 4)) == [1, 2, 3, 4]

        # Thinning reads old rows and replaces spans, unless another pass got there first.
        assert await storage.thin_candidates(NOW + 1, NOW, NOW, 10) == ["b1"]
        assert await storage.thin_candidates(NOW, NOW, NOW, 10) == []
        old = await storage.old_history("b1", NOW + 6)
        assert seqs(old) == [1, 2, 3, 4] and old[0].data == b"1"
        merged = replace(old[2], first_seq=1, level=1, data=b"123", size=3)
        assert await storage.replace_history("b1", [(1, 3, 3)], [merged])
        assert not await storage.replace_history("b1", [(1, 3, 3)], [merged])
        assert seqs(await storage.history_page("b1", 100, 10, False)) == [6, 5, 4, 3]
        assert seqs(await storage.version_rows("b1", 2)) == []  # inside the merged row
        assert [r.data for r in await storage.version_rows("b1", 3)] == [b"123"]
        assert await storage.thin_candidates(NOW + 1, NOW, NOW, 10) == []  # 1..3 thinned
        assert await storage.thin_candidates(NOW + 6, NOW, NOW, 10) == ["b1"]  # row 4 is raw

        # The history goes with its block.
        trashed = change("b1", "h1", expected=6, updates=(b"7",), deleted_at=NOW)
        await storage.commit_changes([trashed], NOW + 11)
        assert await storage.purge_blocks("h1", ["b1"], NOW + 12) == ["b1"]
        assert await storage.history_page("b1", 100, 10, False) == []
        assert await storage.thin_candidates(2**62, 2**62, 2**62, 10) == []


async def test_migration_keeps_existing_snapshots_as_base_rows(
    make_settings: Callable[..., Settings],
) -> None:
    """A block compacted before history existed (its old rows deleted) gets its snapshot as the
    first entry of its history: versions from there on, none before."""
    async with opened(make_settings()) as storage:
        await add_users(storage)
        await new_heap(storage, "h1")
        await storage.commit_changes([change("b1", "h1", updates=(b"1", b"2", b"3"))], NOW)
        compact = change("b1", "h1", expected=3, updates=(b"4",), compacted=(b"S3", 3))
        await storage.commit_changes([compact], NOW + 5)
        script = {v: sql for v, _, sql in migration_scripts(storage.engine)}
        backfill = script[8 if storage.engine == "sqlite" else 9].split(";")[-2]
        assert backfill.strip().startswith("INSERT INTO block_history")
        await raw(storage, "DELETE FROM block_history")  # as before the migration
        if storage.engine == "sqlite":  # and before 0022 moved snapshots out of the row
            await raw(
                storage,
                "UPDATE blocks SET snapshot = "
                "(SELECT snapshot FROM block_snapshots WHERE block_n = blocks.n)",
            )
        assert seqs(await storage.history_page("b1", 100, 10, False)) == [4]
        await raw(storage, backfill)
        rows = await storage.history_page("b1", 100, 10, True)
        assert seqs(rows) == [4, 3] and rows[1].kind is HistoryKind.snapshot
        assert (rows[1].data, rows[1].first_seq, rows[1].created_at) == (b"S3", 1, NOW + 5)
        assert seqs(await storage.version_rows("b1", 4)) == [3, 4]
        assert await storage.version_rows("b1", 2) == []  # compacted away before the migration


async def raw(storage: Storage, sql: str) -> None:
    store: Any = storage
    if storage.engine == "sqlite":
        await store.rt.write(lambda c: c.execute(sql))
    else:
        from heaper_trio.storage.postgres.runtime import tx

        async def run(c: Any) -> None:
            await c.execute(sql)

        await store._run(tx, run)
