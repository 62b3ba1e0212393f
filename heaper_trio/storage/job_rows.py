"""The jobs table's columns and their mapping to ``JobRecord``, shared by both engines (they
differ in placeholders and booleans only; see sqlite/jobs.py and postgres/jobs.py)."""

from __future__ import annotations

import json
from typing import Any

from heaper_trio.records.jobs import ACTIVE_STATES, COUNTERS, JobProcess, JobRecord
from heaper_trio.storage.rows import Row

JOB_COLUMNS = (
    "id, owner_id, heap_id, kind, path, state, files_seen, files_done, bytes, current_path, "
    "counters, error, abort_requested, process_id, process_host, process_pid, heartbeat_at, "
    "created_at, started_at, finished_at"
)
ACTIVE_SQL = "(" + ", ".join(f"'{s}'" for s in ACTIVE_STATES) + ")"  # constants, not input
# The states of a job some process runs (and beats for): a queued job has no process yet, so
# the reaper leaves it to ``fail_queued_jobs``.
RUNNING_SQL = "(" + ", ".join(f"'{s}'" for s in ACTIVE_STATES if s != "queued") + ")"
# A beat never turns a job whose abort was asked back into a running one.
BEAT_STATE = "CASE WHEN abort_requested AND {new} = 'running' THEN 'aborting' ELSE {new} END"


def counters_text(job: JobRecord) -> str:
    return json.dumps({k: int(job.counters.get(k, 0)) for k in COUNTERS}, separators=(",", ":"))


def job_values(job: JobRecord) -> tuple[Any, ...]:
    """In JOB_COLUMNS order."""
    return (
        job.id,
        job.owner_id or None,  # a system job (upload expiry) belongs to no user
        job.heap_id,
        job.kind,
        job.path,
        job.state,
        job.files_seen,
        job.files_done,
        job.bytes,
        job.current_path,
        counters_text(job),
        job.error,
        job.abort_requested,
        job.process.id,
        job.process.host,
        job.process.pid,
        job.heartbeat_at,
        job.created_at,
        job.started_at,
        job.finished_at,
    )


def progress_values(job: JobRecord) -> tuple[Any, ...]:
    """What a beat or the end writes: state, the counters, error and finish time."""
    return (
        job.state,
        job.files_seen,
        job.files_done,
        job.bytes,
        job.current_path,
        counters_text(job),
        job.error,
        job.finished_at,
    )


def job_row(r: Row) -> JobRecord:
    try:
        counters = json.loads(r["counters"])
    except ValueError:  # never written so, but a bad row must not break a listing
        counters = {}
    return JobRecord(
        id=r["id"],
        owner_id=r["owner_id"] or "",
        heap_id=r["heap_id"],
        kind=r["kind"],
        path=r["path"],
        state=r["state"],
        process=JobProcess(r["process_id"], r["process_host"], r["process_pid"]),
        created_at=r["created_at"],
        heartbeat_at=r["heartbeat_at"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        files_seen=r["files_seen"],
        files_done=r["files_done"],
        bytes=r["bytes"],
        current_path=r["current_path"],
        counters={k: int(v) for k, v in counters.items() if k in COUNTERS},
        error=r["error"],
        abort_requested=bool(r["abort_requested"]),
    )


def roots_of(text: str) -> list[str]:
    """A process's advertised scan roots (a JSON list; anything else counts as none)."""
    try:
        roots = json.loads(text)
    except ValueError:
        return []
    return [r for r in roots if isinstance(r, str)] if isinstance(roots, list) else []


# Scans are started by heap: a new scan may not overlap (be, lie inside or hold) a folder an
# active scan of its heap holds. The unique index only refuses identical paths, so each engine
# checks this in the transaction that inserts, PostgreSQL under a lock per heap.
ACTIVE_SCANS_SQL = f"SELECT heap_id, path FROM jobs WHERE kind='scan' AND state IN {ACTIVE_SQL}"


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def clashes(jobs: list[JobRecord], active: list[tuple[str, str]]) -> bool:
    """Whether one of the new scans overlaps an active scan ``(heap_id, path)`` of its heap."""
    return any(
        job.kind == "scan"
        and heap == job.heap_id
        and (_inside(job.path, path) or _inside(path, job.path))
        for job in jobs
        for heap, path in active
    )
