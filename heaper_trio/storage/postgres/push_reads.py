"""What concurrent pushes read first (heap owners, tombstones), in one round trip for them all.

Every push reads its heaps' owners and its blocks' tombstones before it prepares anything. One
read per push, on a 2-core machine with 16 pushing streams, meant 16 statements (and, before,
32: a heap read and a tombstone read each) between two group commits, and the asyncio socket
writes of those round trips were a quarter of the server's CPU (issue 12, push on
PostgreSQL). The reads are gathered as ``GroupCommit`` gathers commits: whoever finds no read
running leads one for every push waiting, with one statement over the union of their ids.

A read gathered with others answers exactly what the caller's own read would: a read made
after the call (a job is only taken by a batch that starts after it was queued), of the rows
committed by then.
"""

from __future__ import annotations

from typing import Any

import outcome

from heaper_trio.records import StoredBlock
from heaper_trio.storage.postgres.runtime import Conn, GroupCommit, _Job

# One statement: kind 0 rows are heaps (id, owner), kind 1 rows tombstones (id, heap, time).
_READ = (
    "SELECT 0 AS kind, id, owner_id AS heap_id, NULL::bigint AS deleted_at FROM heaps "
    "WHERE id = ANY($1::text[]) UNION ALL "
    "SELECT 1, block_id, heap_id, deleted_at FROM block_tombstones WHERE block_id = ANY($2::text[])"
)

# Block rows with their logs after the snapshot, as ``StoredBlock`` holds them; a WHERE follows.
LOAD_BLOCKS = (
    "SELECT id, heap_id, sync_version, snapshot, snapshot_seq, last_seq, created_at, "
    "updated_at, ARRAY(SELECT u.data FROM block_updates u WHERE u.block_id = b.id "
    "AND u.seq > b.snapshot_seq AND u.seq <= b.last_seq ORDER BY u.seq) AS updates "
    "FROM blocks b"
)

Owners = dict[str, str]
Gone = dict[str, tuple[str, int]]
Loaded = dict[str, StoredBlock]


async def read_both(
    c: Conn, heap_ids: list[str], block_ids: list[str], load_ids: list[str]
) -> tuple[Owners, Gone, Loaded]:
    """Owners and tombstones in one statement; the blocks to load, when any, in a second on
    the same connection (one bridge crossing)."""
    owners: Owners = {}
    gone: Gone = {}
    for row in await c.fetch(_READ, heap_ids, block_ids):
        if row["kind"] == 0:
            owners[row["id"]] = row["heap_id"]
        else:
            gone[row["id"]] = (row["heap_id"], row["deleted_at"])
    return owners, gone, await load_blocks(c, load_ids) if load_ids else {}


def stored_block(row: Any) -> StoredBlock:
    return StoredBlock(
        id=row["id"],
        heap_id=row["heap_id"],
        sync_version=row["sync_version"],
        snapshot=None if row["snapshot"] is None else bytes(row["snapshot"]),
        snapshot_seq=row["snapshot_seq"],
        updates=tuple(bytes(u) for u in row["updates"]),
        last_seq=row["last_seq"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def load_blocks(c: Conn, block_ids: list[str]) -> dict[str, StoredBlock]:
    """Blocks the cache lacks, for a push of many: one statement (one snapshot, so no row is
    split from its log by a compaction) instead of one per block."""
    rows = await c.fetch(f"{LOAD_BLOCKS} WHERE id = ANY($1::text[])", list(block_ids))
    return {r["id"]: stored_block(r) for r in rows}


class GroupedReads(GroupCommit):
    """``GroupCommit``'s gathering and cancellation for reads: a job's changes are its keys,
    ``("heap", id)``, ``("block", id)`` (its tombstone) or ``("load", id)``; its result, one
    answer per key (an owner id, a tombstone, a ``StoredBlock``, or None). A failed read fails
    every job of the batch alike (a read has no one job's fault to isolate)."""

    def __init__(self, read: Any) -> None:
        super().__init__(self._answer)
        self._read = read  # async (heap_ids, block_ids, load_ids) -> (Owners, Gone, Loaded)

    async def read(
        self, heap_ids: list[str], block_ids: list[str], load_ids: list[str]
    ) -> tuple[Owners, Gone, Loaded]:
        asked = {"heap": heap_ids, "block": block_ids, "load": load_ids}
        keys = [(kind, i) for kind, ids in asked.items() for i in ids]
        answers = iter(await self.submit(keys, 0))
        found = {
            kind: {i: a for i in ids if (a := next(answers)) is not None}
            for kind, ids in asked.items()
        }
        return found["heap"], found["block"], found["load"]

    async def _answer(self, keys: list[tuple[str, str]], _now: int) -> list[Any]:
        ids = {
            kind: sorted({k for c, k in keys if c == kind}) for kind in ("heap", "block", "load")
        }
        owners, gone, loaded = await self._read(ids["heap"], ids["block"], ids["load"])
        by_kind: dict[str, dict[str, Any]] = {"heap": owners, "block": gone, "load": loaded}
        return [by_kind[kind].get(k) for kind, k in keys]

    async def _run(self, batch: list[_Job]) -> None:
        self.batches += 1
        self.jobs += len(batch)
        keys = [k for job in batch for k in job.changes]
        try:
            answers = await self._answer(keys, 0)
        except BaseException as e:
            for job in batch:
                job.result = outcome.Error(e)
                job.done.set()
            if not isinstance(e, Exception):
                raise
            return
        at = 0
        for job in batch:
            job.result = outcome.Value(answers[at : at + len(job.changes)])
            at += len(job.changes)
            job.done.set()
