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

Each sweep (and each process at start) also removes upload folders that no upload row names
and that nothing touched for ``upload_expiry_hours`` (``sweep_orphan_folders``): a crash
between a discard's row and its folder, or an older bug, left them, and nothing else ever
would. A folder with a row is never touched, however old; a young one is spared whatever its
row: upload ids are new for every row, so a row still being created only ever names a folder
made a moment ago (or none yet), never an old one.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import trio

from heaper_trio.errors import Conflict
from heaper_trio.services.files import FileService
from heaper_trio.services.scans.job import ScanJob
from heaper_trio.services.scans.registry import JobTable
from heaper_trio.services.upload_disk import sweep_temp_files

log = logging.getLogger(__name__)
ORPHAN_BATCH = 500  # folder names asked of the database at once
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
        await sweep_orphan_folders(self.files, time.time())
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
            await sweep_orphan_folders(self.files, time.time())
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


def _untouched_folders(uploads: Path, before: float) -> list[str]:
    """Names of the folders under ``uploads`` last changed before ``before`` (seconds)."""
    try:
        entries = os.scandir(uploads)
    except FileNotFoundError:
        return []
    with entries:
        return [
            e.name
            for e in entries
            if e.is_dir(follow_symlinks=False) and e.stat(follow_symlinks=False).st_mtime < before
        ]


def _remove_if_untouched(folder: Path, before: float) -> bool:
    """Removed, unless it changed meanwhile (a late chunk writer: it removes its own)."""
    try:
        if os.stat(folder, follow_symlinks=False).st_mtime >= before:
            return False
    except FileNotFoundError:
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True


async def sweep_orphan_folders(files: FileService, now: float) -> int:
    """Remove the upload folders no upload row names, untouched for ``upload_expiry_hours``;
    how many. Listed first, rows asked second: a row created after the listing names a
    folder too young to be listed."""
    before = now - files.settings.upload_expiry_hours * 3600
    names = await files._probe_fs(_untouched_folders, files.uploads, before)
    removed = 0
    for start in range(0, len(names), ORPHAN_BATCH):
        batch = names[start : start + ORPHAN_BATCH]
        present = await files.storage.uploads_present(batch)
        for name in batch:
            if name not in present and await files._io(
                _remove_if_untouched, files.uploads / name, before
            ):
                files.hashes.drop(name)
                log.info("removed upload folder %s: no upload of that id", name)
                removed += 1
    return removed
