"""The jobs part of the storage interface (``base.Storage`` inherits it): the jobs table,
every process's scans and reindexes. Kept apart so the interface's files stay readable; the
rules of ``base`` (one unit of work per method, cancellation) hold here too."""

from __future__ import annotations

import abc

from heaper_trio.records.jobs import JobProcess, JobRecord


class JobStorage(abc.ABC):
    """Background jobs, as both engines store them."""

    @abc.abstractmethod
    async def insert_jobs(self, jobs: list[JobRecord]) -> bool:
        """All or none: False, with nothing stored, if one of them is a scan of a heap's
        folder that an active scan of the heap holds, lies inside or holds (checked in the
        inserting transaction, so two processes starting ``/a`` and ``/a/b`` at once get one
        True), or a reindex while one of its owner's is active."""

    @abc.abstractmethod
    async def beat_jobs(self, now: int, jobs: list[JobRecord]) -> list[str]:
        """One process's heartbeat: ``heartbeat_at = now`` and the progress of its active
        jobs (rows no longer active are left alone: a reaped job stays failed). Returns the
        ids among them the process must abort: their abort was asked through the database,
        or their row is no longer active (the reaper failed it, so the job may run elsewhere
        now)."""

    @abc.abstractmethod
    async def finish_job(self, job: JobRecord) -> None:
        """The job's final state, counters, error and ``finished_at``, unless the row is no
        longer active (the reaper's ``failed`` stands)."""

    @abc.abstractmethod
    async def get_job(self, job_id: str) -> JobRecord | None: ...

    @abc.abstractmethod
    async def list_jobs(
        self, owner_id: str | None, active_only: bool, since: int, limit: int
    ) -> list[JobRecord]:
        """Newest first: the owner's jobs (everyone's with None), active ones only or also
        those finished at ``since`` or later."""

    @abc.abstractmethod
    async def request_job_abort(self, job_id: str) -> JobRecord | None:
        """Ask the process running an active job to abort it (``abort_requested``, state
        ``aborting``; PostgreSQL also notifies the other processes at commit). The row as it
        is after, or None if there is no such job."""

    @abc.abstractmethod
    async def fail_stale_jobs(self, before: int, now: int, error: str) -> list[JobRecord]:
        """Running jobs (not queued ones) whose heartbeat is older than ``before``: failed
        with ``error``, once (two processes reaping together fail each job once); the rows
        failed."""

    @abc.abstractmethod
    async def claim_job(self, job_id: str, process: JobProcess, now: int) -> JobRecord | None:
        """Take a queued job to run it in ``process``: state ``running``, heartbeat and start
        ``now``, in one statement, so of two processes claiming it one gets the row and the
        other None (also None if it is no longer queued or its abort was asked)."""

    @abc.abstractmethod
    async def fail_queued_jobs(self, created_before: int, now: int, error: str) -> list[JobRecord]:
        """Queued jobs created before ``created_before`` (no process took them): failed with
        ``error``, once; the rows failed."""

    @abc.abstractmethod
    async def beat_process(
        self, process: JobProcess, scan_roots: list[str], now: int, forget_before: int
    ) -> None:
        """This process is alive at ``now`` with these scan roots (its row, written whole);
        rows of processes that beat last before ``forget_before`` are deleted."""

    @abc.abstractmethod
    async def process_scan_roots(self, since: int) -> dict[str, list[str]]:
        """The scan roots of each process that beat at ``since`` or later, by process id."""

    @abc.abstractmethod
    async def forget_jobs(self, finished_before: int) -> int:
        """Delete jobs finished before that time; how many."""
