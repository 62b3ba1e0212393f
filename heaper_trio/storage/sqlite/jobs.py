"""SQLite: the jobs table (one server process per database, so nobody else beats or reaps;
the same rules as PostgreSQL all the same, so a restarted server fails the jobs it left)."""

from __future__ import annotations

import json
import sqlite3

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
from heaper_trio.storage.sqlite.runtime import SqliteRuntime

_PROGRESS = (
    "state=?, files_seen=?, files_done=?, bytes=?, current_path=?, counters=?, error=?, "
    "finished_at=?"
)


def _insert(c: sqlite3.Connection, jobs: list[JobRecord]) -> bool:
    """The overlap check and the rows in the writer's one transaction (one process writes)."""
    if clashes(jobs, c.execute(ACTIVE_SCANS_SQL).fetchall()):
        return False
    for job in jobs:  # a unique index refusing one rolls back all (the job's SAVEPOINT)
        marks = ",".join("?" * len(job_values(job)))
        c.execute(f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({marks})", job_values(job))
    return True


def _beat(c: sqlite3.Connection, now: int, jobs: list[JobRecord]) -> list[str]:
    asked: list[str] = []
    for job in jobs:
        state, *rest = progress_values(job)
        row = c.execute(
            f"UPDATE jobs SET state={BEAT_STATE.format(new='?')}, "
            "files_seen=?, files_done=?, bytes=?, current_path=?, counters=?, error=?, "
            f"finished_at=?, heartbeat_at=? WHERE id=? AND state IN {ACTIVE_SQL} "
            "RETURNING abort_requested",
            (state, state, *rest, now, job.id),
        ).fetchone()
        if row is None or row[0]:
            asked.append(job.id)
    return asked


def _finish(c: sqlite3.Connection, job: JobRecord) -> None:
    c.execute(
        f"UPDATE jobs SET {_PROGRESS} WHERE id=? AND state IN {ACTIVE_SQL}",
        (*progress_values(job), job.id),
    )


def _get(c: sqlite3.Connection, job_id: str) -> JobRecord | None:
    row = c.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id=?", (job_id,)).fetchone()
    return None if row is None else job_row(row)


def _list(
    c: sqlite3.Connection, owner_id: str | None, active_only: bool, since: int, limit: int
) -> list[JobRecord]:
    where = f"(state IN {ACTIVE_SQL}" + ("" if active_only else " OR finished_at >= ?") + ")"
    args: list[object] = [] if active_only else [since]
    if owner_id is not None:
        where += " AND owner_id=?"
        args.append(owner_id)
    rows = c.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE {where} ORDER BY created_at DESC, rowid DESC "
        "LIMIT ?",
        (*args, limit),
    )
    return [job_row(r) for r in rows]


def _abort(c: sqlite3.Connection, job_id: str) -> JobRecord | None:
    c.execute(
        "UPDATE jobs SET abort_requested=1, state=CASE WHEN state='running' THEN 'aborting' "
        f"ELSE state END WHERE id=? AND state IN {ACTIVE_SQL}",
        (job_id,),
    )
    return _get(c, job_id)


def _fail_stale(c: sqlite3.Connection, before: int, now: int, error: str) -> list[JobRecord]:
    rows = c.execute(
        f"UPDATE jobs SET state='failed', error=?, finished_at=? WHERE state IN {RUNNING_SQL} "
        f"AND heartbeat_at < ? RETURNING {JOB_COLUMNS}",
        (error, now, before),
    ).fetchall()
    return [job_row(r) for r in rows]


def _claim(c: sqlite3.Connection, job_id: str, process: JobProcess, now: int) -> JobRecord | None:
    row = c.execute(
        "UPDATE jobs SET state='running', process_id=?, process_host=?, process_pid=?, "
        "heartbeat_at=?, started_at=? WHERE id=? AND state='queued' AND NOT abort_requested "
        f"RETURNING {JOB_COLUMNS}",
        (process.id, process.host, process.pid, now, now, job_id),
    ).fetchone()
    return None if row is None else job_row(row)


def _fail_queued(c: sqlite3.Connection, before: int, now: int, error: str) -> list[JobRecord]:
    rows = c.execute(
        "UPDATE jobs SET state='failed', error=?, finished_at=? WHERE state='queued' "
        f"AND created_at < ? RETURNING {JOB_COLUMNS}",
        (error, now, before),
    ).fetchall()
    return [job_row(r) for r in rows]


def _beat_process(
    c: sqlite3.Connection, process: JobProcess, roots: str, now: int, forget_before: int
) -> None:
    c.execute(
        "INSERT INTO job_processes (id, host, pid, scan_roots, heartbeat_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
        "scan_roots=excluded.scan_roots, heartbeat_at=excluded.heartbeat_at",
        (process.id, process.host, process.pid, roots, now),
    )
    c.execute("DELETE FROM job_processes WHERE heartbeat_at < ?", (forget_before,))


def _process_roots(c: sqlite3.Connection, since: int) -> dict[str, list[str]]:
    rows = c.execute(
        "SELECT id, scan_roots FROM job_processes WHERE heartbeat_at >= ?", (since,)
    ).fetchall()
    return {r[0]: roots_of(r[1]) for r in rows}


def _forget(c: sqlite3.Connection, before: int) -> int:
    return c.execute("DELETE FROM jobs WHERE finished_at < ?", (before,)).rowcount


class SqliteJobs:
    """The jobs methods of SqliteStorage (mixed in; ``self.rt`` is its runtime)."""

    rt: SqliteRuntime

    async def insert_jobs(self, jobs: list[JobRecord]) -> bool:
        try:
            return await self.rt.write(_insert, jobs)
        except sqlite3.IntegrityError:  # jobs_one_active_scan, jobs_one_active_reindex
            return False

    async def beat_jobs(self, now: int, jobs: list[JobRecord]) -> list[str]:
        return await self.rt.write(_beat, now, jobs)

    async def finish_job(self, job: JobRecord) -> None:
        await self.rt.write(_finish, job)

    async def get_job(self, job_id: str) -> JobRecord | None:
        return await self.rt.read(_get, job_id)

    async def list_jobs(
        self, owner_id: str | None, active_only: bool, since: int, limit: int
    ) -> list[JobRecord]:
        return await self.rt.read(_list, owner_id, active_only, since, limit)

    async def request_job_abort(self, job_id: str) -> JobRecord | None:
        return await self.rt.write(_abort, job_id)

    async def fail_stale_jobs(self, before: int, now: int, error: str) -> list[JobRecord]:
        return await self.rt.write(_fail_stale, before, now, error)

    async def claim_job(self, job_id: str, process: JobProcess, now: int) -> JobRecord | None:
        return await self.rt.write(_claim, job_id, process, now)

    async def fail_queued_jobs(self, created_before: int, now: int, error: str) -> list[JobRecord]:
        return await self.rt.write(_fail_queued, created_before, now, error)

    async def beat_process(
        self, process: JobProcess, scan_roots: list[str], now: int, forget_before: int
    ) -> None:
        roots = json.dumps(scan_roots)
        await self.rt.write(_beat_process, process, roots, now, forget_before)

    async def process_scan_roots(self, since: int) -> dict[str, list[str]]:
        return await self.rt.read(_process_roots, since)

    async def forget_jobs(self, finished_before: int) -> int:
        return await self.rt.write(_forget, finished_before)
