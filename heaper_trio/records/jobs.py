"""A background job as the jobs table keeps it (migration 0012): what every server process on
the database sees of a scan or reindex, wherever it runs.

The row is the cluster's view; the process running the job holds the live counters and writes
them with its heartbeat (``services/scans/registry``), so a row's progress lags the job by at
most one beat.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# A job that has not ended: what ``active_scans`` lists and what the reaper may fail.
ACTIVE_STATES = ("queued", "running", "aborting", "finishing")
FINAL_STATES = ("done", "aborted", "failed")
# The counters a snapshot carries besides the ones the progress events carry (their columns).
COUNTERS = (
    "files_new",
    "files_changed",
    "files_unchanged",
    "files_missing",
    "folders",
    "duplicates",
    "skipped",
    "errors",
    "bytes_hashed",
)


@dataclass(frozen=True, slots=True)
class JobProcess:
    """Which server process runs a job: ``id`` is random per start (a restarted process is
    another one); host and pid are for the humans reading the table."""

    id: str
    host: str
    pid: int


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: str
    owner_id: str  # "" for a system job (upload expiry): NULL in the table
    heap_id: str  # "" for a reindex of all the owner's heaps
    kind: str  # "scan", "reindex", "regenerate" or "upload_expiry"
    path: str
    state: str  # ACTIVE_STATES or FINAL_STATES
    process: JobProcess
    created_at: int  # Unix ms, as every time below
    heartbeat_at: int
    started_at: int | None = None
    finished_at: int | None = None
    files_seen: int = 0
    files_done: int = 0
    bytes: int = 0
    current_path: str = ""
    counters: Mapping[str, int] = field(default_factory=dict)  # COUNTERS
    error: str | None = None  # a stable code (scan.failed's ``error``)
    abort_requested: bool = False  # abort_scan asked, through the database

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES
