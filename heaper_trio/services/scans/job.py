"""One job of the scan service (a folder scan or a reindex): its counters, its cancel scopes,
and the frozen snapshots that ``active_scans`` and the progress events are made of; the row
of the jobs table it is written as (``record``), and the snapshot read back from a row of any
process (``snapshot_of``)."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import trio

from heaper_trio.protocol import events
from heaper_trio.records.jobs import COUNTERS, JobProcess, JobRecord

ABORT_GRACE_S = 0.6  # after abort_scan: time left to commit what was already read
RUNNING = ("running", "aborting", "finishing")


@dataclass(frozen=True)
class ScanSnapshot:
    """A job as it was at one moment (what ``GET /api/active_scans`` and ``GET /api/scans``
    list)."""

    scan_id: str
    kind: str  # "scan" or "reindex"
    heap_id: str
    path: str
    state: str  # queued, running, aborting, finishing, done, aborted, failed
    files_seen: int
    files_done: int
    bytes: int
    started_at: int
    finished_at: int | None
    files_new: int
    files_changed: int
    files_unchanged: int
    files_missing: int
    folders: int
    duplicates: int
    skipped: int
    errors: int
    bytes_hashed: int
    current_path: str
    files_per_s: float
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(eq=False)
class ScanJob:
    user_id: str
    heap_id: str
    path: str
    kind: str = "scan"
    scan_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: int = field(default_factory=lambda: int(time.time() * 1000))
    state: str = "running"
    files_seen: int = 0
    files_done: int = 0
    bytes: int = 0
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    files_missing: int = 0
    folders: int = 0
    duplicates: int = 0
    skipped: int = 0
    errors: int = 0
    bytes_hashed: int = 0
    current_path: str = ""
    error: str | None = None
    finished_at: int | None = None
    aborted: bool = False
    # Abort cancels the work scope (walking, hashing, the missing pass) and gives the commit
    # scope a short deadline to store what was already read; shutdown cancels everything.
    work_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    commit_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    _started_mono: float = field(default_factory=time.monotonic)

    @property
    def running(self) -> bool:
        return self.state in RUNNING

    def abort(self) -> None:
        if not self.running or self.aborted:
            return
        self.aborted = True
        self.state = "aborting"
        self.work_scope.cancel()
        self.commit_scope.deadline = min(
            self.commit_scope.deadline, trio.current_time() + ABORT_GRACE_S
        )

    def files_per_s(self) -> float:
        elapsed = (
            time.time() * 1000 if self.finished_at is None else self.finished_at
        ) - self.started_at
        return round(self.files_done / max(elapsed / 1000, 0.001), 1)

    def record(self, process: JobProcess, now: int) -> JobRecord:
        """The job as its row in the jobs table (``now`` is the heartbeat)."""
        return JobRecord(
            id=self.scan_id,
            owner_id=self.user_id,
            heap_id=self.heap_id,
            kind=self.kind,
            path=self.path,
            state=self.state,
            process=process,
            created_at=self.started_at,
            heartbeat_at=now,
            started_at=self.started_at,
            finished_at=self.finished_at,
            files_seen=self.files_seen,
            files_done=self.files_done,
            bytes=self.bytes,
            current_path=self.current_path,
            counters={k: getattr(self, k) for k in COUNTERS},
            error=self.error,
        )

    def snapshot(self) -> ScanSnapshot:
        return ScanSnapshot(
            self.scan_id,
            self.kind,
            self.heap_id,
            self.path,
            self.state,
            self.files_seen,
            self.files_done,
            self.bytes,
            self.started_at,
            self.finished_at,
            self.files_new,
            self.files_changed,
            self.files_unchanged,
            self.files_missing,
            self.folders,
            self.duplicates,
            self.skipped,
            self.errors,
            self.bytes_hashed,
            self.current_path,
            self.files_per_s(),
            self.error,
        )

    # -- events (docs/protocol.md) ---------------------------------------------------------
    def progress_event(self) -> dict[str, Any]:
        return events.event(
            "scan.progress",
            scan_id=self.scan_id,
            heap_id=self.heap_id,
            path=self.path,
            files_seen=self.files_seen,
            files_done=self.files_done,
            bytes=self.bytes,
            current_path=self.current_path,
            files_per_s=self.files_per_s(),
        )

    def final_event(self) -> dict[str, Any]:
        if self.state == "failed":
            return events.event(
                "scan.failed",
                scan_id=self.scan_id,
                heap_id=self.heap_id,
                path=self.path,
                error=self.error or "internal_error",
            )
        kind = "scan.done" if self.state == "done" else "scan.aborted"
        return events.event(
            kind,
            scan_id=self.scan_id,
            heap_id=self.heap_id,
            path=self.path,
            files_seen=self.files_seen,
            files_done=self.files_done,
            bytes=self.bytes,
        )


def snapshot_of(row: JobRecord, now: int) -> ScanSnapshot:
    """A job of any process as ``active_scans`` lists it, from its row (``now``, Unix ms, for
    the rate of a job still running)."""
    started = row.started_at or row.created_at
    elapsed = (now if row.finished_at is None else row.finished_at) - started
    count = {k: int(row.counters.get(k, 0)) for k in COUNTERS}
    return ScanSnapshot(
        scan_id=row.id,
        kind=row.kind,
        heap_id=row.heap_id,
        path=row.path,
        state=row.state,
        files_seen=row.files_seen,
        files_done=row.files_done,
        bytes=row.bytes,
        started_at=started,
        finished_at=row.finished_at,
        current_path=row.current_path,
        files_per_s=round(row.files_done / max(elapsed / 1000, 0.001), 1),
        error=row.error,
        **count,
    )
