"""Folder scans and file reindexing: jobs that belong to the server, not to a request.

``run`` is started in the supervisor nursery at start-up and holds a nursery of its own in
which every job runs; a job is started by a request and keeps running after it answers. Each
job catches its own failure (one job's crash never cancels another), reports progress on its
owner's live channel (``/ws`` events and the legacy ``/api/ws``) every ``PROGRESS_EVERY_S``
seconds while it runs, then one ``scan.done``, ``scan.aborted`` or ``scan.failed``.
``abort_scan`` stops a job within a second, keeping what it committed; shutdown cancels them
all. ``active_scans`` lists running jobs only (a finished job is not active, so a client
polling for the end sees it leave); the recent history, running and finished, is
:meth:`ScanService.history` (``GET /api/scans``): each user's last ``KEEP_FINISHED_PER_USER``
finished jobs, for ``KEEP_FINISHED_S``, so a client that reconnects sees how they ended.

``scan_folder`` by heap (no path) rescans every folder scanned into the heap before: the
topmost folder entries of its scan index (:meth:`ScanService.scanned_folders`), each as a job
of its own, so each keeps its own progress, abort and missing pass.

A job runs in the process that started it and is a row of the jobs table
(``scans/registry``): with several processes on one PostgreSQL database, any of them lists
and aborts it, and a job whose process died is failed by another within
``job_heartbeat_timeout``. Its events reach its owner's channels on every process (the live
bridge). The work itself is in ``scans/folder`` (walk, hash, commit, missing pass) and
``scans/reindex``; the rules on paths in ``scans/walk``. A folder that is not on this
process's machine is queued for a process of the machine that has it (``scans/route``): the
answer says ``queued``, and that process claims the job, checks the user's right to the
folder against its own roots and runs it.

The file routes read files through :meth:`ScanService.open_file`: a scanned file is opened
without following links and served only if it is still the file its scan hashed
(``scans/source``); otherwise the answer is ``409 file_changed`` and the file is rescanned in
the background (``scans/rescan``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import trio

from heaper_trio.errors import Conflict, HeaperError, NotFound, Unavailable
from heaper_trio.records import FileRecord, User
from heaper_trio.records.jobs import JobRecord
from heaper_trio.services import metrics
from heaper_trio.services.documents import DocumentService
from heaper_trio.services.files import FileService
from heaper_trio.services.scans.folder import FolderScan
from heaper_trio.services.scans.job import ScanJob, ScanSnapshot, snapshot_of
from heaper_trio.services.scans.registry import JobTable
from heaper_trio.services.scans.reindex import FileReprobe, Regenerated
from heaper_trio.services.scans.rescan import FileRescans
from heaper_trio.services.scans.route import (
    on_this_machine,
    queueable,
    queued_row,
    under_a_root,
)
from heaper_trio.services.scans.source import (
    SERVER_FILES,
    NotTheScannedFile,
    OpenFile,
    open_own,
    open_scanned,
)
from heaper_trio.services.scans.walk import allowed_bases, resolve_scan_path
from heaper_trio.settings import Settings
from heaper_trio.storage.base import Storage

if TYPE_CHECKING:
    from heaper_trio.services.media.service import MediaService

log = logging.getLogger(__name__)
Work = Callable[[], Awaitable[None]]
PROGRESS_EVERY_S = 0.4
KEEP_FINISHED_PER_USER = 100  # also the largest ``limit`` of GET /api/scans
# Above every character a path holds: ``top + "/" + PAST`` sorts after the paths below ``top``.
PAST = "\U0010ffff"


def _overlaps(a: str, b: str) -> bool:
    return os.path.commonpath([a, b]) in (a, b)


@dataclass(frozen=True)
class HeapRescan:
    """What ``scan_folder`` by heap started: a job per folder, and the folders it skipped
    with the error code each would have answered."""

    jobs: list[ScanSnapshot]
    skipped: list[tuple[str, str]]


class ScanService:
    def __init__(
        self,
        storage: Storage,
        documents: DocumentService,
        files: FileService,
        settings: Settings,
        publish: Callable[[str, dict[str, object]], None],
        media: MediaService | None = None,
    ) -> None:
        self.storage = storage
        self.documents = documents
        self.files = files
        self.settings = settings
        self.publish = publish
        self.media = media
        self.table = JobTable(storage, publish, settings.job_heartbeat_timeout)
        self.table.take_queued = self.take_queued
        self.table.scan_roots = [str(r) for r in settings.scan_root_paths]
        self.jobs = self.table.local  # this process's jobs, until their final row is written
        self._nursery: trio.Nursery | None = None
        SERVER_FILES.register(settings.data_path)  # see scans/source.ServerFiles
        self.rescans = FileRescans(
            storage,
            documents,
            media,
            settings,
            files.forget_unreferenced,
            lambda: list(self.jobs.values()),
        )

    @property
    def reprobe(self) -> FileReprobe:
        return FileReprobe(self.storage, self.documents, self.files, self.media, self.open_file)

    # -- reading a file's bytes -------------------------------------------------------------
    async def open_file(self, record: FileRecord) -> OpenFile:
        """The file's bytes, open: from the store, or a scanned file that is still exactly what
        its scan hashed. NotFound ``file_missing`` if they are gone; Conflict ``file_changed``
        if something else is at the path now (a rescan of it is queued)."""
        if record.source_path is None and self.files.objects is not None:
            return await self.files.open_staged(record)  # a copy of the bucket's object
        if record.source_path is None:
            return await open_own(self.files.store_path(record.hash), gone=_GONE)
        path = record.source_path
        entries = [
            e
            for e in await self.storage.scan_entries_at(path)
            if e.hash == record.hash and not e.missing
        ]
        if not entries:  # the index says these bytes are no longer at that path
            raise _missing()
        try:
            return await trio.to_thread.run_sync(
                open_scanned, path, [e.identity for e in entries if e.identity is not None]
            )
        except FileNotFoundError:
            raise _missing() from None
        except NotTheScannedFile as e:
            log.info(
                "%s is not the file hashed as %s (%s); rescanning it", path, record.hash[:16], e
            )
            self.rescans.queue(self._nursery, path)
            raise Conflict(
                "the file changed on disk since it was scanned; it is being scanned again",
                code="file_changed",
            ) from None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The jobs' home (and their heartbeat); runs until the server stops, which cancels
        every job."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.table.run)
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    # -- starting, listing, stopping ------------------------------------------------------
    async def scan_folder(self, user: User, heap_id: str, path: str) -> ScanSnapshot:
        await self.documents.owned_heap(user, heap_id)
        bases = allowed_bases(self.settings.scan_root_paths, user.id, user.is_admin)
        try:
            real = await trio.to_thread.run_sync(
                resolve_scan_path, path, bases, str(self.settings.data_path)
            )
        except HeaperError as e:
            if not await self._elsewhere(path, e):
                raise
            return await self._queue(user, heap_id, path)
        [job] = await self._start_scans(user, heap_id, [real])
        return job

    # -- scans of another machine's folders (scans/route) --------------------------------
    async def _elsewhere(self, path: str, error: HeaperError) -> bool:
        """Whether to queue a scan this process refused, for another machine's process."""
        if not self.storage.shares_processes:
            return False
        roots, data = self.settings.scan_root_paths, str(self.settings.data_path)
        if not await trio.to_thread.run_sync(queueable, path, error, roots, data):
            return False
        return under_a_root(path, await self.table.roots_elsewhere())

    async def _queue(self, user: User, heap_id: str, path: str) -> ScanSnapshot:
        row = queued_row(user.id, heap_id, path, self.table.process)
        await self._check_free(user, heap_id, [row.path])
        try:
            await self.table.queue(row)
        except Conflict:  # refused in the inserting transaction: name the scan that won
            await self._check_free(user, heap_id, [row.path])
            raise
        log.info("scan %s of %s queued for the machine that has it", row.id, row.path)
        return snapshot_of(row, row.created_at)

    async def take_queued(self, rows: list[JobRecord]) -> None:
        """Claim and start the queued scans whose folder is on this machine (the jobs
        table's beat offers them). The user's right to the folder is checked by the job
        itself, against this machine's roots: a refusal ends it ``failed`` with the code a
        request here would have been answered."""
        roots, data = self.settings.scan_root_paths, str(self.settings.data_path)
        for row in rows:
            if self._nursery is None or not roots or row.kind != "scan":
                return
            if not await trio.to_thread.run_sync(on_this_machine, row.path, roots, data):
                continue
            if await self.table.claim(row.id) is None or self._nursery is None:
                continue  # another process took it first (or it ended, or we are stopping)
            job = ScanJob(row.owner_id, row.heap_id, row.path, scan_id=row.id)
            self.jobs[job.scan_id] = job  # no wait since the claim: beaten from the next beat
            log.info("scan %s of %s claimed from the queue", row.id, row.path)
            self._nursery.start_soon(self._run_job, job, partial(self._claimed, job))

    async def _claimed(self, job: ScanJob) -> None:
        user = await self.storage.get_user(job.user_id)
        if user is None:
            raise NotFound("the scan's owner is gone", code="user_not_found")
        await self.documents.owned_heap(user, job.heap_id)  # as a request here would
        bases = allowed_bases(self.settings.scan_root_paths, user.id, user.is_admin)
        job.path = await trio.to_thread.run_sync(
            resolve_scan_path, job.path, bases, str(self.settings.data_path)
        )
        await self._check_free(user, job.heap_id, [job.path], but=job.scan_id)
        await self._scan_job(user, job.heap_id, job.path, job)[1]()

    async def scan_heap(self, user: User, heap_id: str) -> HeapRescan:
        """Scan again every folder scanned into the heap before, one job each (started
        together; all or none: 409 ``scan_running`` if one of them runs). A folder that no
        longer passes today's checks (outside what the user may scan now, gone, not a
        directory) is skipped and reported; if every one fails, the first failure is the
        answer. 404 ``nothing_scanned`` if no folder was ever scanned into the heap."""
        await self.documents.owned_heap(user, heap_id)
        folders = await self.scanned_folders(heap_id)
        if not folders:
            raise NotFound(
                "no folder was scanned into this heap yet: give a path",
                code="nothing_scanned",
            )
        bases = allowed_bases(self.settings.scan_root_paths, user.id, user.is_admin)
        reals: list[str] = []
        elsewhere: list[str] = []  # not on this machine: queued for the one that has it
        skipped: list[tuple[str, HeaperError]] = []
        for folder in folders:
            try:
                real = await trio.to_thread.run_sync(
                    resolve_scan_path, folder, bases, str(self.settings.data_path)
                )
            except HeaperError as e:
                if await self._elsewhere(folder, e):
                    elsewhere.append(folder)
                else:
                    skipped.append((folder, e))
                continue
            if not any(_overlaps(real, r) for r in reals):  # a link may lead into another
                reals = [r for r in reals if not _overlaps(r, real)] + [real]
        if not reals and not elsewhere:
            raise skipped[0][1]
        started = []
        if reals:
            started = await self._start_scans(user, heap_id, sorted(reals))
        for folder in elsewhere:
            try:
                started.append(await self._queue(user, heap_id, folder))
            except Conflict as e:
                skipped.append((folder, e))
        return HeapRescan(started, [(path, e.code) for path, e in skipped])

    async def scanned_folders(self, heap_id: str) -> list[str]:
        """The folders scans started at in this heap: its topmost present folder entries, in
        path order. The index is walked by skipping: one look-up per folder found and one
        per subtree passed over, not one per file."""
        tops: list[str] = []
        after = ""
        while rows := await self.storage.unseen_scan_entries(heap_id, "/", "", after, 1):
            entry = rows[0]
            top = next((t for t in tops if entry.path.startswith(t + "/")), None)
            if top is not None:  # pass over the rest of that folder's entries
                after = max(top + "/" + PAST, entry.path)
                continue
            if entry.kind == "folder":
                tops.append(entry.path)
            after = entry.path
        return tops

    async def _check_free(self, user: User, heap_id: str, reals: list[str], but: str = "") -> None:
        """409 ``scan_running`` if a scan of an overlapping folder runs in the heap, on any
        process (the heap is the caller's, so such a scan is too). The jobs of this process
        are checked again with no wait before they are registered (``_start``)."""
        await self.table.settled()
        running = [
            (r.id, r.kind, r.heap_id, r.path) for r in await self.table.running_rows(user.id)
        ]
        running += [(j.scan_id, j.kind, j.heap_id, j.path) for j in self.jobs.values() if j.running]
        for scan_id, kind, other_heap, other_path in running:
            if (
                scan_id != but
                and kind == "scan"
                and other_heap == heap_id
                and any(_overlaps(other_path, real) for real in reals)
            ):
                raise Conflict(
                    "a scan of this folder (or one inside or around it) is running in this heap",
                    code="scan_running",
                    details={"scan_id": scan_id},
                )

    async def _start_scans(self, user: User, heap_id: str, reals: list[str]) -> list[ScanSnapshot]:
        """Checked here first, then again in the transaction that writes the rows (another
        process may start an overlapping scan in between); refused there, the 409 names the
        scan that won, as the first check would have."""
        await self._check_free(user, heap_id, reals)
        try:
            return await self._start([self._scan_job(user, heap_id, r) for r in reals])
        except Conflict:
            await self._check_free(user, heap_id, reals)
            raise

    def _scan_job(
        self, user: User, heap_id: str, real: str, job: ScanJob | None = None
    ) -> tuple[ScanJob, Work]:
        job = job or ScanJob(user.id, heap_id, real)
        scan = FolderScan(
            job,
            self.storage,
            self.documents,
            self.media,
            self.settings.scan_jobs,
            frozenset({str(self.settings.data_path)}),
            self.files.forget_unreferenced,
        )
        return job, scan.run

    async def reindex_files(self, user: User, heap_id: str | None) -> ScanSnapshot:
        if heap_id is not None:
            await self.documents.owned_heap(user, heap_id)
        await self.table.settled()
        running = [(r.id, r.kind) for r in await self.table.running_rows(user.id)]
        running += [
            (j.scan_id, j.kind) for j in self.jobs.values() if j.running and j.user_id == user.id
        ]
        for scan_id, kind in running:
            if kind == "reindex":
                raise Conflict(
                    "a reindex of your files is running",
                    code="scan_running",
                    details={"scan_id": scan_id},
                )
        job = ScanJob(user.id, heap_id or "", "", kind="reindex")
        [started] = await self._start(
            [(job, lambda: self.reprobe.reindex(job, user, heap_id, self.settings.scan_jobs))]
        )
        return started

    async def regenerate_file(self, user: User, key: str) -> Regenerated:
        """Answers when done, and is a row in the jobs table all the same (kind
        ``regenerate``, ``path`` the key asked for), so the owner's and the admin's job
        listings show it, running on whichever process took the request, and how it ended."""
        job = ScanJob(user.id, "", key[:128], kind="regenerate")
        self.jobs[job.scan_id] = job
        await self.table.insert([job])
        metrics.job_started(job.kind)
        try:
            done = await self.reprobe.regenerate(user, key)
            job.state, job.files_seen, job.files_done = "done", 1, 1
            return done
        except Exception as exc:  # the caller gets the error; the row keeps its code
            job.state, job.error = "failed", _reason(exc)
            raise
        except BaseException:  # cancelled: the client left or the server is stopping
            job.state = "aborted"
            raise
        finally:
            job.finished_at = int(time.time() * 1000)
            metrics.job_finished(job.kind, job.state)
            await self.table.finish(job)

    async def _start(self, jobs: list[tuple[ScanJob, Work]]) -> list[ScanSnapshot]:
        """Register the jobs here at once (no wait since the caller's last check), write
        their rows, then start them."""
        for job, _ in jobs:
            if self._nursery is None:
                raise Unavailable("the server is stopping", code="shutting_down")
            self.jobs[job.scan_id] = job
        await self.table.insert([job for job, _ in jobs])
        nursery = self._nursery
        if nursery is None:  # stopping meanwhile: the rows end aborted
            for job, _ in jobs:
                job.state, job.finished_at = "aborted", int(time.time() * 1000)
                await self.table.finish(job)
            raise Unavailable("the server is stopping", code="shutting_down")
        for job, work in jobs:
            nursery.start_soon(self._run_job, job, work)
        return [job.snapshot() for job, _ in jobs]

    async def active(self, user: User) -> list[ScanSnapshot]:
        """The caller's running jobs on every process (every running job for an admin):
        finished ones are not active, so a client polling for the end sees the job leave."""
        return await self.table.active(user)

    async def history(self, user: User, limit: int) -> list[ScanSnapshot]:
        """The caller's own jobs on every process, running and finished within
        KEEP_FINISHED_S, newest first (an admin's too: other users' history is theirs)."""
        kept: list[ScanSnapshot] = []
        finished = 0
        for job in await self.table.history(user, limit):
            finished += job.finished_at is not None
            if job.finished_at is None or finished <= KEEP_FINISHED_PER_USER:
                kept.append(job)
        return kept

    async def every_job(self, limit: int) -> list[tuple[str, ScanSnapshot]]:
        """Every user's jobs on every process, running and finished within KEEP_FINISHED_S,
        newest first, with the user each belongs to (the admin page)."""
        return await self.table.everyone(limit)

    async def abort(self, user: User, scan_id: str) -> ScanSnapshot:
        return await self.table.abort(user, scan_id)

    # -- one job's life -----------------------------------------------------------------------
    async def _run_job(self, job: ScanJob, work: Work) -> None:
        log.info(
            "%s %s of %s into heap %s started",
            job.kind,
            job.scan_id,
            job.path or "files",
            job.heap_id or "(all)",
        )
        metrics.job_started(job.kind)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._report, job)
                await work()
                nursery.cancel_scope.cancel()
            job.state = "aborted" if job.aborted else "done"
        except Exception as exc:  # this job failed; the server and the other jobs go on
            job.state = "failed"
            job.error = _reason(exc)
            log.exception("%s %s failed", job.kind, job.scan_id)
        except BaseException:  # cancelled: the server is stopping
            job.state = "aborted"
            raise
        finally:
            job.finished_at = int(time.time() * 1000)
            metrics.job_finished(job.kind, job.state)
            await self.table.finish(job)  # before the event: who hears it finds the row final
            self.publish(job.user_id, job.final_event())
            log.info(
                "%s %s %s: %d seen, %d done (%d new, %d changed, %d missing), %d errors",
                job.kind,
                job.scan_id,
                job.state,
                job.files_seen,
                job.files_done,
                job.files_new,
                job.files_changed,
                job.files_missing,
                job.errors,
            )

    async def _report(self, job: ScanJob) -> None:
        while True:
            self.publish(job.user_id, job.progress_event())
            await trio.sleep(PROGRESS_EVERY_S)


_GONE = "the file's bytes are gone (a scanned file moved or was deleted?)"


def _missing() -> NotFound:
    return NotFound(_GONE, code="file_missing")


def _reason(exc: BaseException) -> str:
    """A stable code for scan.failed: the error's own code, else what kind of error it was."""
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _reason(exc.exceptions[0])
    if isinstance(exc, HeaperError):
        return exc.code
    if isinstance(exc, OSError):
        return "io_error"
    return "internal_error"
