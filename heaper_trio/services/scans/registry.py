"""The jobs of every server process on the database, as one table (issue 14, item 2).

A job runs in the process that started it (``ScanService``), which keeps its live counters
here in ``local``; its row in the jobs table is how the others see it. Listing reads the
table (a local job's own counters replace its row's, which lag by up to one beat); aborting a
job of another process writes the request to its row, and PostgreSQL announces it at commit
(``JobAbortAnnouncement``, heard through the live bridge: ``abort_local``); the next beat
brings the request back anyway, so a lost notification only costs a beat.

Every process beats for its running jobs every ``beat_s`` (one statement for all of them) and
reaps: an active row whose heartbeat is older than ``job_heartbeat_timeout`` belongs to a
process that died or hangs, and is failed (``process_died``) with a ``scan.failed`` event to
its owner; a new job of the same folder can then start. On SQLite, with one process, the same
code runs, and a server restarted after a crash fails the jobs it left as it starts.

Each process also writes its scan roots to the ``job_processes`` table with its beat
(``advertise``), so a process asked for a folder outside its own roots knows whether another
live process has a root around it (``roots_elsewhere``); if so the scan is queued
(``queue``): a row in state ``queued`` that no process runs yet. Every beat, each process
offers the queued rows to ``take_queued`` (the scan service), which claims those it can run
(``claim_job``, one UPDATE: one claimer wins). A queued row nobody claims within
``QUEUED_FACTOR`` heartbeat timeouts is failed with ``no_process_has_root``; aborting one
ends it ``aborted`` at once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace

import trio

from heaper_trio.errors import Conflict, NotFound
from heaper_trio.protocol import events
from heaper_trio.records import User
from heaper_trio.records.jobs import JobProcess, JobRecord
from heaper_trio.services.scans.job import ScanJob, ScanSnapshot, snapshot_of
from heaper_trio.storage.base import Storage

log = logging.getLogger(__name__)
PROCESS_DIED = "process_died"
NO_PROCESS_HAS_ROOT = "no_process_has_root"
QUEUED_FACTOR = 3  # a queued job waits this many heartbeat timeouts for a process to take it
KEEP_FINISHED_S = 24 * 3600
FORGET_EVERY_S = 600.0
FINISH_WRITE_S = 10.0  # the final row write, shielded at shutdown: bounded all the same
ACTIVE_LIMIT = 1000  # at most this many active jobs are listed
EVER = 2**62  # a heartbeat time later than any


def wall_ms() -> int:
    return int(time.time() * 1000)


def not_found() -> NotFound:
    return NotFound("no such scan (it may have ended a while ago)", code="scan_not_found")


class JobTable:
    def __init__(
        self,
        storage: Storage,
        publish: Callable[[str, dict[str, object]], None],
        timeout_s: float,
        now_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.storage = storage
        self.publish = publish
        self.timeout_s = timeout_s
        self.beat_s = min(1.0, timeout_s / 3)
        self.reap_s = min(2.0, timeout_s / 2)
        self.now_ms = now_ms  # wall time: heartbeats are compared across machines' processes
        self.process = JobProcess(uuid.uuid4().hex[:16], socket.gethostname(), os.getpid())
        self.local: dict[str, ScanJob] = {}  # this process's jobs, until their row is final
        self._writing: dict[str, trio.Event] = {}  # jobs ended here, final row not yet written
        self._inserting: set[str] = set()  # jobs here whose first row is being written
        # Offered the queued rows every beat: claims and starts those this process can run.
        self.take_queued: Callable[[list[JobRecord]], Awaitable[None]] | None = None
        self.scan_roots: list[str] = []  # advertised to the other processes

    # -- a job's life ----------------------------------------------------------------------
    async def insert(self, jobs: list[ScanJob]) -> None:
        """Write the rows of ``jobs`` (already in ``local``), all or none; if that fails they
        are forgotten. 409 ``scan_running`` if another process started the same job first."""
        ids = {j.scan_id for j in jobs}
        self._inserting |= ids  # not beaten before their rows are: a beat would find no row
        try:
            now = self.now_ms()
            if not await self.storage.insert_jobs([j.record(self.process, now) for j in jobs]):
                raise Conflict(
                    "the same job, or a scan of a folder inside or around it, was just started "
                    "(by another server process)",
                    code="scan_running",
                )
        except BaseException:
            for job in jobs:
                self.local.pop(job.scan_id, None)
            raise
        finally:
            self._inserting -= ids

    async def queue(self, row: JobRecord) -> None:
        """Write a queued job's row, for a process on another machine to take; 409
        ``scan_running`` as ``insert``."""
        if not await self.storage.insert_jobs([row]):
            raise Conflict(
                "the same job, or a scan of a folder inside or around it, was just started "
                "(by another server process)",
                code="scan_running",
            )

    async def advertise(self) -> None:
        now = self.now_ms()
        forget = now - int(self.timeout_s * QUEUED_FACTOR * 1000)
        await self.storage.beat_process(self.process, self.scan_roots, now, forget)

    async def roots_elsewhere(self) -> list[str]:
        """The scan roots of the other live processes (beat within the heartbeat timeout)."""
        since = self.now_ms() - int(self.timeout_s * 1000)
        by_process = await self.storage.process_scan_roots(since)
        return [r for pid, roots in by_process.items() if pid != self.process.id for r in roots]

    async def claim(self, job_id: str) -> JobRecord | None:
        """Take a queued job for this process (None: another took it first, or it ended)."""
        return await self.storage.claim_job(job_id, self.process, self.now_ms())

    async def finish(self, job: ScanJob) -> None:
        """Write the final row, even while the server stops (shielded, bounded), then forget
        the local job: from now on its row is the whole truth."""
        written = self._writing[job.scan_id] = trio.Event()
        try:
            with trio.CancelScope(shield=True), trio.move_on_after(FINISH_WRITE_S):
                await self.storage.finish_job(job.record(self.process, self.now_ms()))
        except Exception:  # the reaper fails the row later; the event still goes out
            log.exception("%s %s: writing its final state failed", job.kind, job.scan_id)
        finally:
            self.local.pop(job.scan_id, None)
            self._writing.pop(job.scan_id, None)
            written.set()

    async def settled(self) -> None:
        """Once the final rows of the jobs that ended here are written: a client told of an
        end here may start the same job again at once, and the table must agree."""
        for written in list(self._writing.values()):
            await written.wait()

    # -- listing and aborting ----------------------------------------------------------------
    def _fresh(self, rows: list[JobRecord]) -> list[ScanSnapshot]:
        """The rows, with the live counters of this process's jobs (also the end of one
        whose final row is still being written)."""
        now = self.now_ms()
        out = []
        for row in rows:
            job = self.local.get(row.id)
            out.append(job.snapshot() if job is not None else snapshot_of(row, now))
        return out

    async def active(self, user: User) -> list[ScanSnapshot]:
        """The caller's active jobs on every process (everyone's for an admin)."""
        rows = await self.storage.list_jobs(
            None if user.is_admin else user.id, True, 0, ACTIVE_LIMIT
        )
        active = ("queued", "running", "aborting", "finishing")
        rows = [r for r in rows if r.owner_id]  # system jobs: the admin page lists them
        return [s for s in self._fresh(rows) if s.state in active]

    async def history(self, user: User, limit: int) -> list[ScanSnapshot]:
        since = self.now_ms() - KEEP_FINISHED_S * 1000
        return self._fresh(await self.storage.list_jobs(user.id, False, since, limit))

    async def everyone(self, limit: int) -> list[tuple[str, ScanSnapshot]]:
        """Every user's jobs on every process, active or finished within KEEP_FINISHED_S,
        newest first, each with its owner (the admin page)."""
        since = self.now_ms() - KEEP_FINISHED_S * 1000
        rows = await self.storage.list_jobs(None, False, since, limit)
        return [(row.owner_id, snap) for row, snap in zip(rows, self._fresh(rows), strict=True)]

    async def running_rows(self, owner_id: str) -> list[JobRecord]:
        """The owner's active jobs on every process (one whose process died holds its folder
        until the reaper fails it)."""
        return await self.storage.list_jobs(owner_id, True, 0, ACTIVE_LIMIT)

    async def abort(self, user: User, job_id: str) -> ScanSnapshot:
        """Abort a job of any process. Someone else's job is 404, like one that never was."""
        job = self.local.get(job_id)
        if job is not None:
            if not (user.is_admin or job.user_id == user.id):
                raise not_found()
            job.abort()
            return job.snapshot()
        row = await self.storage.get_job(job_id)
        if row is None or not (user.is_admin or row.owner_id == user.id):
            raise not_found()
        if row.state == "queued":  # no process runs it: it ends here (a claim now loses)
            return await self._end_queued(row)
        if row.active:
            row = await self.storage.request_job_abort(job_id) or row
        return snapshot_of(row, self.now_ms())

    async def _end_queued(self, row: JobRecord) -> ScanSnapshot:
        """Abort a queued job: its abort is asked first (so no process claims it from now
        on), then its row ends ``aborted``. If a process claimed it in between, that process
        hears of the abort at its next beat and ends the job itself."""
        asked = await self.storage.request_job_abort(row.id) or row
        if asked.state != "queued":
            return snapshot_of(asked, self.now_ms())
        now = self.now_ms()
        ended = replace(asked, state="aborted", finished_at=now, abort_requested=True)
        await self.storage.finish_job(ended)
        final = await self.storage.get_job(row.id) or ended
        if final.state == "aborted" and final.started_at is None:
            self.publish(
                row.owner_id,
                events.event(
                    "scan.aborted",
                    scan_id=row.id,
                    heap_id=row.heap_id,
                    path=row.path,
                    files_seen=0,
                    files_done=0,
                    bytes=0,
                ),
            )
        return snapshot_of(final, self.now_ms())

    def abort_local(self, job_id: str) -> None:
        """Abort this job if it runs here: asked through the database (by another process),
        or its row was reaped while this process hung (the job may run elsewhere by now)."""
        job = self.local.get(job_id)
        if job is not None and job.running and not job.aborted:
            log.info("%s %s: aborted through the jobs table", job.kind, job_id)
            job.abort()

    # -- heartbeats and the reaper -----------------------------------------------------------
    async def beat(self) -> None:
        running = [j for j in self.local.values() if j.running and j.scan_id not in self._inserting]
        if not running:
            return
        now = self.now_ms()
        to_abort = await self.storage.beat_jobs(now, [j.record(self.process, now) for j in running])
        for job_id in to_abort:
            self.abort_local(job_id)

    async def reap(self, *, everything: bool = False) -> list[JobRecord]:
        """Fail the active jobs whose heartbeat is stale (``everything``: all active jobs)."""
        now = self.now_ms()
        before = EVER if everything else now - int(self.timeout_s * 1000)
        failed = await self.storage.fail_stale_jobs(before, now, PROCESS_DIED)
        unclaimed = await self.storage.fail_queued_jobs(
            now - int(self.timeout_s * QUEUED_FACTOR * 1000), now, NO_PROCESS_HAS_ROOT
        )
        for row in unclaimed:
            log.warning("scan %s of %s failed: no server process took it", row.id, row.path)
            self._failed(row, NO_PROCESS_HAS_ROOT)
        for row in failed:
            log.warning(
                "%s %s failed: its server process (%s, pid %d on %s) sent no heartbeat for %.1fs",
                row.kind,
                row.id,
                row.process.id,
                row.process.pid,
                row.process.host,
                (now - row.heartbeat_at) / 1000,
            )
            self._failed(row, PROCESS_DIED)
        return failed + unclaimed

    def _failed(self, row: JobRecord, error: str) -> None:
        if not row.owner_id:  # a system job (upload expiry): nobody to tell
            return
        self.publish(
            row.owner_id,
            events.event(
                "scan.failed", scan_id=row.id, heap_id=row.heap_id, path=row.path, error=error
            ),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Beat every ``beat_s``, reap every ``reap_s``, forget day-old jobs now and then;
        a failing database is logged and tried again at the next turn. A SQLite database has
        one server process (``datadir_lock``), so its active jobs at start are an earlier
        life's: failed at once rather than after the timeout."""
        if not self.storage.shares_processes:
            await self._step("reaper", self.reap(everything=True))
        else:
            await self._step("advertising", self.advertise())
        task_status.started()
        next_reap = next_forget = trio.current_time()
        while True:
            now = trio.current_time()
            await self._step("heartbeat", self.beat())
            if self.storage.shares_processes:
                await self._step("advertising", self.advertise())
                if self.take_queued is not None:
                    await self._step("queue", self._offer_queued(self.take_queued))
            if now >= next_reap:
                next_reap = now + self.reap_s
                await self._step("reaper", self.reap())
            if now >= next_forget:
                next_forget = now + FORGET_EVERY_S
                cutoff = self.now_ms() - KEEP_FINISHED_S * 1000
                await self._step("forgetting", self.storage.forget_jobs(cutoff))
            await trio.sleep(self.beat_s)

    async def _offer_queued(self, take: Callable[[list[JobRecord]], Awaitable[None]]) -> None:
        rows = await self.storage.list_jobs(None, True, 0, ACTIVE_LIMIT)
        queued = [r for r in rows if r.state == "queued" and not r.abort_requested]
        if queued:
            await take(queued[::-1])  # oldest first

    @staticmethod
    async def _step(what: str, step: Awaitable[object]) -> None:
        try:
            await step
        except Exception:  # the database failed: each step is tried again at its next turn
            log.exception("jobs: the %s failed; trying again", what)
