"""PostgreSQL: the jobs table, shared by every server process on the database.

A process's heartbeat is one statement for all its active jobs (``unnest`` of their
progress). An abort asked through another process is written to the row and announced by
``pg_notify`` in the same transaction, so the running process hears of it at once; if that
notification is lost, the abort flag comes back with its next beat. The reaper's UPDATE fails
each stale job once, however many processes reap at the same time.
"""

from __future__ import annotations

import json

import asyncpg

from heaper_trio.protocol import announce
from heaper_trio.records.jobs import JobProcess, JobRecord
from heaper_trio.storage.job_rows import (
    ACTIVE_SCANS_SQL,
    ACTIVE_SQL,
    BEAT_STATE,
    JOB_COLUMNS,
    RUNNING_SQL,
    clashes,
    job_row,
    job_values,
    progress_values,
    roots_of,
)
from heaper_trio.storage.postgres.notify import notify
from heaper_trio.storage.postgres.runtime import Conn, PostgresBridge, read, tx, write1

_PROGRESS = (
    "state=$1, files_seen=$2, files_done=$3, bytes=$4, current_path=$5, counters=$6, "
    "error=$7, finished_at=$8"
)
_BEAT = (
    f"UPDATE jobs SET state={BEAT_STATE.format(new='u.state')}, files_seen=u.files_seen, "
    "files_done=u.files_done, bytes=u.bytes, current_path=u.current_path, counters=u.counters, "
    "error=u.error, finished_at=u.finished_at, heartbeat_at=$1 "
    "FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::text[], "
    "$8::text[], $9::text[], $10::bigint[]) AS u(id, state, files_seen, files_done, bytes, "
    "current_path, counters, error, finished_at) "
    f"WHERE jobs.id = u.id AND jobs.state IN {ACTIVE_SQL} RETURNING jobs.id, jobs.abort_requested"
)


# The transaction-scoped advisory lock a scan's start holds on its heap, from the overlap check
# to COMMIT: two processes starting /a and /a/b at once check one after the other.
SCAN_START_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('heaper.scan_start:' || $1, 0))"


async def _insert(c: Conn, jobs: list[JobRecord]) -> bool:
    heaps = sorted({job.heap_id for job in jobs if job.kind == "scan"})
    for heap in heaps:  # one heap in practice; sorted, so two starts never lock crosswise
        await c.execute(SCAN_START_LOCK, heap)
    if heaps:
        found = await c.fetch(ACTIVE_SCANS_SQL + " AND heap_id = ANY($1::text[])", heaps)
        if clashes(jobs, [(r["heap_id"], r["path"]) for r in found]):
            return False
    for job in jobs:  # a few at most (a heap's scanned folders), in one transaction
        values = job_values(job)
        marks = ", ".join(f"${i}" for i in range(1, len(values) + 1))
        await c.execute(f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({marks})", *values)
    return True


async def _beat(c: Conn, now: int, jobs: list[JobRecord]) -> list[str]:
    columns = list(zip(*[(j.id, *progress_values(j)) for j in jobs], strict=True))
    rows = await c.fetch(_BEAT, now, *[list(col) for col in columns])
    beaten = {r["id"] for r in rows if not r["abort_requested"]}
    return sorted({j.id for j in jobs} - beaten)  # asked to abort, or no longer active


async def _finish(c: Conn, job: JobRecord) -> None:
    await c.execute(
        f"UPDATE jobs SET {_PROGRESS} WHERE id=$9 AND state IN {ACTIVE_SQL}",
        *progress_values(job),
        job.id,
    )


async def _get(c: Conn, job_id: str) -> JobRecord | None:
    row = await c.fetchrow(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id=$1", job_id)
    return None if row is None else job_row(row)


async def _list(
    c: Conn, owner_id: str | None, active_only: bool, since: int, limit: int
) -> list[JobRecord]:
    rows = await c.fetch(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE (state IN {ACTIVE_SQL} OR "
        "(NOT $1::boolean AND finished_at >= $2)) AND ($3::text IS NULL OR owner_id = $3) "
        "ORDER BY created_at DESC, seq DESC LIMIT $4",
        active_only,
        since,
        owner_id,
        limit,
    )
    return [job_row(r) for r in rows]


async def _abort(c: Conn, job_id: str, origin: str) -> JobRecord | None:
    asked = await c.fetchval(
        "UPDATE jobs SET abort_requested=TRUE, state=CASE WHEN state='running' THEN 'aborting' "
        f"ELSE state END WHERE id=$1 AND state IN {ACTIVE_SQL} RETURNING id",
        job_id,
    )
    if asked is not None:  # delivered at COMMIT, with the row that says so
        await notify(c, [announce.encode(announce.JobAbortAnnouncement(origin, job_id))])
    return await _get(c, job_id)


async def _fail_stale(c: Conn, before: int, now: int, error: str) -> list[JobRecord]:
    rows = await c.fetch(
        f"UPDATE jobs SET state='failed', error=$1, finished_at=$2 WHERE state IN {RUNNING_SQL} "
        f"AND heartbeat_at < $3 RETURNING {JOB_COLUMNS}",
        error,
        now,
        before,
    )
    return [job_row(r) for r in rows]


async def _claim(c: Conn, job_id: str, process: JobProcess, now: int) -> JobRecord | None:
    row = await c.fetchrow(
        "UPDATE jobs SET state='running', process_id=$2, process_host=$3, process_pid=$4, "
        "heartbeat_at=$5, started_at=$5 WHERE id=$1 AND state='queued' AND NOT abort_requested "
        f"RETURNING {JOB_COLUMNS}",
        job_id,
        process.id,
        process.host,
        process.pid,
        now,
    )
    return None if row is None else job_row(row)


async def _fail_queued(c: Conn, before: int, now: int, error: str) -> list[JobRecord]:
    rows = await c.fetch(
        "UPDATE jobs SET state='failed', error=$1, finished_at=$2 WHERE state='queued' "
        f"AND created_at < $3 RETURNING {JOB_COLUMNS}",
        error,
        now,
        before,
    )
    return [job_row(r) for r in rows]


async def _beat_process(
    c: Conn, process: JobProcess, roots: str, now: int, forget_before: int
) -> None:
    await c.execute(
        "INSERT INTO job_processes (id, host, pid, scan_roots, heartbeat_at) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET "
        "scan_roots=excluded.scan_roots, heartbeat_at=excluded.heartbeat_at",
        process.id,
        process.host,
        process.pid,
        roots,
        now,
    )
    await c.execute("DELETE FROM job_processes WHERE heartbeat_at < $1", forget_before)


async def _process_roots(c: Conn, since: int) -> dict[str, list[str]]:
    rows = await c.fetch("SELECT id, scan_roots FROM job_processes WHERE heartbeat_at >= $1", since)
    return {r["id"]: roots_of(r["scan_roots"]) for r in rows}


async def _forget(c: Conn, before: int) -> int:
    status = await c.execute("DELETE FROM jobs WHERE finished_at < $1", before)
    return int(status.split()[-1])


class PostgresJobs(PostgresBridge):
    """The jobs methods of PostgresStorage (mixed in; ``self._run`` crosses to asyncio)."""

    announce_as: str | None  # PostgresStorage.announce_commits_as

    async def insert_jobs(self, jobs: list[JobRecord]) -> bool:
        if not jobs:
            return True
        try:
            inserted: bool = await self._run(tx, _insert, jobs)
        except asyncpg.UniqueViolationError:  # jobs_one_active_scan, jobs_one_active_reindex
            return False
        return inserted

    async def beat_jobs(self, now: int, jobs: list[JobRecord]) -> list[str]:
        if not jobs:
            return []
        asked: list[str] = await self._run(write1, _beat, now, jobs)
        return asked

    async def finish_job(self, job: JobRecord) -> None:
        await self._run(write1, _finish, job)

    async def get_job(self, job_id: str) -> JobRecord | None:
        job: JobRecord | None = await self._run(read, _get, job_id)
        return job

    async def list_jobs(
        self, owner_id: str | None, active_only: bool, since: int, limit: int
    ) -> list[JobRecord]:
        jobs: list[JobRecord] = await self._run(read, _list, owner_id, active_only, since, limit)
        return jobs

    async def request_job_abort(self, job_id: str) -> JobRecord | None:
        job: JobRecord | None = await self._run(tx, _abort, job_id, self.announce_as or "")
        return job

    async def fail_stale_jobs(self, before: int, now: int, error: str) -> list[JobRecord]:
        failed: list[JobRecord] = await self._run(write1, _fail_stale, before, now, error)
        return failed

    async def claim_job(self, job_id: str, process: JobProcess, now: int) -> JobRecord | None:
        job: JobRecord | None = await self._run(write1, _claim, job_id, process, now)
        return job

    async def fail_queued_jobs(self, created_before: int, now: int, error: str) -> list[JobRecord]:
        failed: list[JobRecord] = await self._run(write1, _fail_queued, created_before, now, error)
        return failed

    async def beat_process(
        self, process: JobProcess, scan_roots: list[str], now: int, forget_before: int
    ) -> None:
        roots = json.dumps(scan_roots)
        await self._run(tx, _beat_process, process, roots, now, forget_before)

    async def process_scan_roots(self, since: int) -> dict[str, list[str]]:
        roots: dict[str, list[str]] = await self._run(read, _process_roots, since)
        return roots

    async def forget_jobs(self, finished_before: int) -> int:
        count: int = await self._run(write1, _forget, finished_before)
        return count
