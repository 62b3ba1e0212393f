"""PostgreSQL: object-store state shared by server processes (upload claims, deletions under
way, multipart ids). The claim and the deletion of one hash take turns on a transaction-level
advisory lock of that hash, so each sees what the other committed (``services/file_claims``
has the protocol); the lock costs no row and is gone at commit."""

from __future__ import annotations

from heaper_trio.records import FileRecord
from heaper_trio.storage.postgres.runtime import Conn, PostgresBridge, read, tx, write1
from heaper_trio.storage.rows import file_row

FILE_COLUMNS = "hash, id, size, mime_type, name, source_path, meta::text AS meta, created_at"
DROP_BATCH = 64  # hashes locked per transaction: advisory locks share a bounded lock table
LOCK = "pg_advisory_xact_lock(hashtextextended('file:' || {}, 0))"


async def _claim(c: Conn, hash: str, token: str, now: int, deletions_after: int) -> bool:
    await c.execute(f"SELECT {LOCK.format('$1::text')}", hash)
    await c.execute(
        "INSERT INTO file_claims (hash, token, created_at) VALUES ($1, $2, $3) "
        "ON CONFLICT (hash, token) DO UPDATE SET created_at = excluded.created_at",
        hash,
        token,
        now,
    )
    deleting = await c.fetchval(
        "SELECT EXISTS (SELECT 1 FROM file_deletions WHERE hash=$1 AND started_at >= $2)",
        hash,
        deletions_after,
    )
    return deleting is True


async def _claim_now(c: Conn, hash: str, token: str, deletion_ttl_ms: int) -> bool:
    # ``_claim`` with the database's clock read in the statement (data-modifying WITH
    # clauses always run to completion, referenced or not)
    await c.execute(f"SELECT {LOCK.format('$1::text')}", hash)
    deleting = await c.fetchval(
        "WITH t AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now), "
        "k AS (INSERT INTO file_claims (hash, token, created_at) SELECT $1, $2, now FROM t "
        "ON CONFLICT (hash, token) DO UPDATE SET created_at = excluded.created_at) "
        "SELECT EXISTS (SELECT 1 FROM file_deletions "
        "WHERE hash=$1 AND started_at >= (SELECT now FROM t) - $3::bigint)",
        hash,
        token,
        deletion_ttl_ms,
    )
    return deleting is True


async def _release(c: Conn, hash: str, token: str) -> None:
    await c.execute("DELETE FROM file_claims WHERE hash=$1 AND token=$2", hash, token)


async def _drop(c: Conn, hashes: list[str], now: int, claims_after: int) -> list[FileRecord]:
    # the locks first (in one order: two deletions never deadlock); the DELETE is a new
    # statement, so its snapshot holds every claim committed before the locks were granted
    await c.execute(
        f"SELECT {LOCK.format('h')} FROM (SELECT h FROM unnest($1::text[]) AS h ORDER BY h) s",
        hashes,
    )
    rows = await c.fetch(
        f"DELETE FROM files WHERE hash = ANY($1::text[]) AND NOT EXISTS "
        f"(SELECT 1 FROM block_files b WHERE b.hash = files.hash) AND NOT EXISTS "
        f"(SELECT 1 FROM file_claims k WHERE k.hash = files.hash AND k.created_at >= $2) "
        f"RETURNING {FILE_COLUMNS}",
        hashes,
        claims_after,
    )
    dropped = [f for f in map(file_row, rows) if f is not None]
    if dropped:  # new bytes, new proofs; and the bytes are going: uploads wait for that
        gone = [f.hash for f in dropped]
        await c.execute("DELETE FROM file_grants WHERE hash = ANY($1::text[])", gone)
        await c.execute(
            "INSERT INTO file_deletions (hash, started_at) SELECT h, $2 FROM "
            "unnest($1::text[]) AS h ON CONFLICT (hash) DO UPDATE SET started_at = $2",
            gone,
            now,
        )
    return dropped


async def _sweep(c: Conn, claims_before: int, limit: int) -> int:
    # No lock on the hash: the rows that go are ones no drop counts any more. The outer
    # DELETE repeats the age test: a row the sweep waits for (locked by a claim renewing it)
    # is rechecked after that commit against the outer condition only (EvalPlanQual), and a
    # renewed claim must stay.
    gone = await c.fetchval(
        "WITH k AS (DELETE FROM file_claims WHERE created_at < $1 AND ctid IN "
        "(SELECT ctid FROM file_claims WHERE created_at < $1 LIMIT $2) RETURNING 1) "
        "SELECT count(*) FROM k",
        claims_before,
        limit,
    )
    return int(gone)


async def _stale_deletions(c: Conn, started_before: int, limit: int) -> list[str]:
    rows = await c.fetch(
        "SELECT hash FROM file_deletions WHERE started_at < $1 ORDER BY started_at LIMIT $2",
        started_before,
        limit,
    )
    return [r[0] for r in rows]


async def _resume(
    c: Conn, hashes: list[str], started_before: int, now: int, claims_after: int
) -> list[str]:
    # the same turns as a drop: the locks first, then statements that see every claim and
    # file row committed before them
    await c.execute(
        f"SELECT {LOCK.format('h')} FROM (SELECT h FROM unnest($1::text[]) AS h ORDER BY h) s",
        hashes,
    )
    await c.execute(  # a file's bytes again: nothing to remove
        "DELETE FROM file_deletions d WHERE hash = ANY($1::text[]) AND started_at < $2 "
        "AND EXISTS (SELECT 1 FROM files f WHERE f.hash = d.hash)",
        hashes,
        started_before,
    )
    rows = await c.fetch(  # an upload's claim: it is about to record them, so left as is
        "UPDATE file_deletions d SET started_at = $3 WHERE hash = ANY($1::text[]) "
        "AND started_at < $2 AND NOT EXISTS "
        "(SELECT 1 FROM file_claims k WHERE k.hash = d.hash AND k.created_at >= $4) "
        "RETURNING hash",
        hashes,
        started_before,
        now,
        claims_after,
    )
    return sorted(r[0] for r in rows)


async def _clock(c: Conn) -> int:
    now = await c.fetchval("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")
    return int(now)


async def _mark_deletions(c: Conn, hashes: list[str], started_at: int) -> None:
    await c.execute(
        "INSERT INTO file_deletions (hash, started_at) SELECT h, $2 FROM unnest($1::text[]) AS h "
        "ON CONFLICT (hash) DO NOTHING",
        hashes,
        started_at,
    )


async def _end_deletion(c: Conn, hashes: list[str], started_at: int) -> None:
    await c.execute(
        "DELETE FROM file_deletions WHERE hash = ANY($1::text[]) AND started_at = $2",
        hashes,
        started_at,
    )


async def _set_multipart(
    c: Conn, upload_id: str, multipart_id: str, expected: str | None
) -> str | None:
    await c.execute(
        "UPDATE uploads SET multipart_id=$2 WHERE id=$1 AND multipart_id IS NOT DISTINCT FROM $3",
        upload_id,
        multipart_id,
        expected,
    )  # a racing UPDATE waits for this row, then finds the condition false
    row = await c.fetchrow("SELECT multipart_id FROM uploads WHERE id=$1", upload_id)
    return None if row is None else row[0]


class PostgresFileState(PostgresBridge):
    """Mixed into PostgresStorage (``self._run`` crosses to asyncio)."""

    async def claim_file(self, hash: str, token: str, now: int, deletions_after: int) -> bool:
        return await self._run(tx, _claim, hash, token, now, deletions_after)

    async def claim_file_now(self, hash: str, token: str, deletion_ttl_ms: int) -> bool:
        return await self._run(tx, _claim_now, hash, token, deletion_ttl_ms)

    async def release_file_claim(self, hash: str, token: str) -> None:
        await self._run(write1, _release, hash, token)

    async def sweep_file_claims(self, claims_before: int, limit: int) -> int:
        return await self._run(tx, _sweep, claims_before, limit)

    async def stale_file_deletions(self, started_before: int, limit: int) -> list[str]:
        return await self._run(read, _stale_deletions, started_before, limit)

    async def resume_file_deletions(
        self, hashes: list[str], *, started_before: int, now: int, claims_after: int
    ) -> list[str]:
        resumed: list[str] = []
        ordered = sorted(set(hashes))
        for start in range(0, len(ordered), DROP_BATCH):
            batch = ordered[start : start + DROP_BATCH]
            resumed += await self._run(tx, _resume, batch, started_before, now, claims_after)
        return resumed

    async def clock_ms(self) -> int:
        """The database's clock: every process's sweep ages rows by the same one."""
        return await self._run(read, _clock)

    async def drop_unreferenced_files(
        self, hashes: list[str], *, now: int = 0, claims_after: int = 0
    ) -> list[FileRecord]:
        dropped: list[FileRecord] = []
        ordered = sorted(set(hashes))
        for start in range(0, len(ordered), DROP_BATCH):
            batch = ordered[start : start + DROP_BATCH]
            dropped += await self._run(tx, _drop, batch, now, claims_after)
        return dropped

    async def mark_file_deletions(self, hashes: list[str], started_at: int) -> None:
        if hashes:
            await self._run(write1, _mark_deletions, hashes, started_at)

    async def end_file_deletions(self, hashes: list[str], started_at: int) -> None:
        if hashes:
            await self._run(write1, _end_deletion, hashes, started_at)

    async def set_multipart_id(
        self, upload_id: str, multipart_id: str, expected: str | None = None
    ) -> str | None:
        return await self._run(tx, _set_multipart, upload_id, multipart_id, expected)
