"""Upload expiry as one cluster job: a lease in the jobs table (issue 14).

Every process used to sweep expired uploads every ten minutes; with several processes on one
database they swept the same rows and the same bucket at once. Now the sweep is a job of kind
``upload_expiry`` with no owner: the process whose insert of its active row wins holds the
lease (a unique index allows one active row of a system kind) and sweeps; its row is beaten
with its other jobs (``JobTable``), so when the process dies the reaper fails the row within
``job_heartbeat_timeout`` and another process's next try takes the lease over. A process whose
row was failed while it still ran (it hung past the timeout) learns so at its next beat (the
job is aborted locally) and tries for the lease again like the others.

The row shows in the admin's job listings (every user's jobs), never in a user's: it has no
owner. Temporary files a killed process left are per machine, so each process still removes
its own at start.

Each sweep (``FileService.expire``) and each process at start also removes upload folders
that no upload row names, untouched for ``upload_expiry_hours`` (``upload_orphans``).
"""

from __future__ import annotations

import logging
import time

import trio

from heaper_trio.errors import Conflict
from heaper_trio.services.files import FileService
from heaper_trio.services.scans.job import ScanJob
from heaper_trio.services.scans.registry import JobTable
from heaper_trio.services.upload_disk import sweep_temp_files
from heaper_trio.services.upload_orphans import sweep_orphan_folders

log = logging.getLogger(__name__)
KIND = "upload_expiry"
EXPIRE_EVERY_S = 600
TRY_EVERY_S = 30  # how soon another process takes over a dead holder's lease (plus the reaper)


class UploadExpiry:
    def __init__(self, files: FileService, table: JobTable) -> None:
        self.files = files
        self.table = table
        self.job: ScanJob | None = None  # the lease, while this process holds it
        self._next_sweep = 0.0

    async def take(self) -> bool:
        """Hold the lease: still (its row was not failed meanwhile) or newly taken."""
        if self.job is not None and self.job.running and not self.job.aborted:
            return True
        if self.job is not None:  # reaped by another process, or aborted by an admin
            await self._end("aborted")  # (a reaped row stays failed: it is no longer active)
        job = ScanJob("", "", "", kind=KIND)
        self.table.local[job.scan_id] = job  # beaten with this process's other jobs
        try:
            await self.table.insert([job])
        except Conflict:  # another process holds it
            return False
        log.info("this process sweeps expired uploads (job %s)", job.scan_id)
        self.job, self._next_sweep = job, 0.0
        return True

    async def step(self) -> bool:
        """One turn: sweep if this process holds the lease and a sweep is due; whether it
        swept."""
        if not await self.take() or trio.current_time() < self._next_sweep:
            return False
        self._next_sweep = trio.current_time() + EXPIRE_EVERY_S
        assert self.job is not None
        expired = await self.files.expire(int(time.time() * 1000))
        self.job.files_done += expired
        return True

    async def _end(self, state: str) -> None:
        job, self.job = self.job, None
        if job is not None:
            job.state, job.finished_at = state, int(time.time() * 1000)
            await self.table.finish(job)

    async def run(self) -> None:
        """In the supervisor: this machine's temporary files first, then turns forever; the
        lease is given back (its row ``done``) when the server stops."""
        try:
            removed = await self.files._io(sweep_temp_files, self.files.uploads)
            if removed:
                log.info("removed %d temporary upload files left by a stopped process", removed)
            await sweep_orphan_folders(self.files, time.time())  # (each sweep does it too)
        except Exception:
            log.exception("sweeping temporary upload files failed")
        try:
            while True:
                try:
                    await self.step()
                except Exception:
                    log.exception("expiring uploads failed")
                await trio.sleep(TRY_EVERY_S)
        finally:
            with trio.CancelScope(shield=True):
                await self._end("done")
