"""The SQLite engine's machinery: one writer thread with group commit, reader connections.

Why a writer thread: SQLite allows one writer at a time, and a thread hop costs 120-200 µs on
our machines (stack-pitfalls section 3). The writer drains every job waiting in its queue into
one ``BEGIN IMMEDIATE ... COMMIT`` (a SAVEPOINT per job, so one failing job rolls back alone),
fsyncs once, and only then wakes the waiting trio tasks: acknowledgements imply durability and
throughput does not pay an fsync per write. Readers are threads of their own too, each with its
own connection (WAL lets them run while the writer writes), fed from one queue the same way:
``trio.to_thread`` per read cost 100-190 µs more per hop here (its limiter, cancel machinery and
a thread renamed per job; issue 12, item 3). Point reads skip the hop (``read_point``).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import outcome
import trio

from heaper_trio.errors import Unavailable
from heaper_trio.storage import observe
from heaper_trio.storage.migrate import migration_scripts
from heaper_trio.storage.sqlite import search
from heaper_trio.storage.sqlite.kept_reads import MISS, KeptReads

log = logging.getLogger(__name__)

T = TypeVar("T")
Job = tuple[Callable[..., Any], tuple[Any, ...], "_Reply"]
_STOP = object()
_USER_ROWS = frozenset({"user"})  # the kept answers a ``users_unchanged`` batch keeps
MAX_BATCH = 512
READERS = 4


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _migrate(conn: sqlite3.Connection, now_ms: int) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
    )
    for version, name, sql in migration_scripts("sqlite"):
        done = conn.execute("SELECT 1 FROM schema_migrations WHERE version=?", (version,))
        if done.fetchone():
            continue
        try:
            # executescript runs the whole file; BEGIN IMMEDIATE makes it atomic and
            # serialises it against another process migrating the same file.
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{sql}\n;INSERT INTO schema_migrations VALUES "
                f"({version}, '{name}', {now_ms});\nCOMMIT;"
            )
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            again = conn.execute("SELECT 1 FROM schema_migrations WHERE version=?", (version,))
            if not again.fetchone():  # nobody else applied it: a real failure
                raise
        log.info("applied sqlite migration %s", name)
    if indexed := search.backfill(conn):
        log.info("indexed the lines of %d existing blocks for search", indexed)


@contextmanager
def _unavailable_on_operational_error() -> Iterator[None]:
    """Disk full, I/O errors, a lock held too long: the database, not the request, is at
    fault, so clients get 503 ``unavailable`` (retry later) rather than a 500."""
    try:
        yield
    except sqlite3.OperationalError as e:
        log.error("sqlite: %s", e)
        raise Unavailable(f"the database is unavailable: {e}", code="database_unavailable") from e


def _in_read_transaction(fn: Callable[..., T], conn: sqlite3.Connection, *args: Any) -> T:
    conn.execute("BEGIN")
    try:
        return fn(conn, *args)
    finally:
        conn.execute("COMMIT")


class _Read:
    """A read job: taken by a reader thread unless cancelled while still queued."""

    __slots__ = ("args", "cancelled", "fn", "lock", "reply", "started")

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], reply: Callable[[Any], None]
    ) -> None:
        self.fn = fn
        self.args = args
        self.reply = reply
        self.lock = threading.Lock()
        self.started = False
        self.cancelled = False

    def claim(self) -> bool:
        """In the reader thread: True if the job is to run (its caller still waits)."""
        with self.lock:
            self.started = not self.cancelled
            return self.started

    def withdraw(self) -> bool:
        """On trio's side: True if the job will never run (it had not started)."""
        with self.lock:
            self.cancelled = not self.started
            return self.cancelled


def _reader_main(conn: sqlite3.Connection, jobs: queue.SimpleQueue[Any]) -> None:
    try:
        while True:
            job = jobs.get()
            if job is _STOP:
                return
            if job.claim():
                job.reply(outcome.capture(_in_read_transaction, job.fn, conn, *job.args))
    finally:
        conn.close()


class _Reply:
    """How a database thread hands a job's outcome back to the waiting trio task: ``__call__``
    (from any thread) or, for many jobs at once, :func:`_reply_all`; then ``done`` is set and
    ``box`` holds the outcome."""

    __slots__ = ("box", "done", "task", "token", "users_unchanged")

    def __init__(self, users_unchanged: bool = False) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self.done = trio.Event()
        self.box: list[outcome.Outcome] = []
        self.users_unchanged = users_unchanged  # the job writes no user row (``write``)
        self.task: trio.lowlevel.Task | None = None  # a writer's job: its task, woken as is

    def deliver(self, result: outcome.Outcome) -> None:
        """On the event loop."""
        self.box.append(result)
        if self.task is not None:
            trio.lowlevel.reschedule(self.task)
        else:
            self.done.set()

    def __call__(self, result: outcome.Outcome) -> None:
        try:
            self.token.run_sync_soon(self.deliver, result)
        except trio.RunFinishedError:
            pass


def _cannot_abort(_: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


def _reply_all(
    answers: list[tuple[_Reply, outcome.Outcome]], first: Callable[[], None] | None = None
) -> None:
    """Every job of a group commit answered in one call into each event loop: one wake-up of
    the loop (a write to its wake-up socket, then its drain) per batch, not per job.
    ``first`` runs on the loop before any job is answered."""
    by_token: dict[trio.lowlevel.TrioToken, list[tuple[_Reply, outcome.Outcome]]] = {}
    for reply, result in answers:
        by_token.setdefault(reply.token, []).append((reply, result))
    for token, mine in by_token.items():

        def deliver(mine: list[tuple[_Reply, outcome.Outcome]] = mine, first: Any = first) -> None:
            if first is not None:
                first()
            for reply, result in mine:
                reply.deliver(result)

        try:
            token.run_sync_soon(deliver)
        except trio.RunFinishedError:
            pass


class SqliteRuntime:
    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        self.path = path
        self.synchronous = synchronous
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # Reader threads of their own: trio.to_thread's default limiter is shared with
        # file-system work (scans, hashing), which must never keep a read waiting.
        self._reads: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._reader_threads: list[threading.Thread] = []
        self._inline: sqlite3.Connection | None = None
        self.kept = KeptReads(path)  # read_kept's answers
        self.commits = 0  # group commits done; a benchmark reads it
        self.jobs_done = 0

    async def start(self, now_ms: int) -> None:
        conn = await trio.to_thread.run_sync(_connect, self.path, self.synchronous)
        await trio.to_thread.run_sync(_migrate, conn, now_ms)
        self._thread = threading.Thread(
            target=self._writer_main, args=(conn,), name="sqlite-writer", daemon=True
        )
        self._thread.start()
        for i in range(READERS + 1):
            reader = await trio.to_thread.run_sync(_connect, self.path, self.synchronous)
            reader.execute("PRAGMA query_only=ON")
            if i == READERS:
                self._inline = reader
                self.kept.open()
                break
            thread = threading.Thread(
                target=_reader_main,
                args=(reader, self._reads),
                name=f"sqlite-reader-{i}",
                daemon=True,
            )
            thread.start()
            self._reader_threads.append(thread)

    async def stop(self) -> None:
        if self._thread is not None:
            self._jobs.put(_STOP)
            await trio.to_thread.run_sync(self._thread.join)
            self._thread = None
        threads, self._reader_threads = self._reader_threads, []
        for _ in threads:
            self._reads.put(_STOP)
        for thread in threads:
            await trio.to_thread.run_sync(thread.join)
        self.kept.close()
        if self._inline is not None:
            self._inline.close()
            self._inline = None

    @trio.lowlevel.enable_ki_protection
    async def write(self, fn: Callable[..., T], *args: Any, users_unchanged: bool = False) -> T:
        """Run ``fn(conn, *args)`` in the writer's next transaction; return once committed.
        ``users_unchanged``: ``fn`` writes no user row, so a group commit of such jobs only
        keeps the user rows ``read_kept`` holds (``KeptReads.carry``).

        Protected from KeyboardInterrupt: raised between the put and the wait, it would leave
        a queued job whose reply reschedules a task that is gone or waits for something else
        (trio then delivers it at the next checkpoint instead)."""
        if self._thread is None:
            raise RuntimeError("storage is closed")
        reply = _Reply(users_unchanged)
        reply.task = trio.lowlevel.current_task()
        start = time.perf_counter()
        self._jobs.put((fn, args, reply))
        # Once queued the job will run; waiting for it cannot be abandoned, or a caller could
        # be told "cancelled" about a write that then commits. A wait whose abort fails is
        # what a shielded one is (a cancel lands at the caller's next checkpoint), without a
        # cancel scope and an event per write (5% of a push's loop, py-spy).
        await trio.lowlevel.wait_task_rescheduled(_cannot_abort)
        observe.observer.round_trip("sqlite", "write", time.perf_counter() - start)
        with _unavailable_on_operational_error():
            return reply.box[0].unwrap()

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on a reader connection in a worker thread.

        Inside one read transaction, so every statement of ``fn`` sees the same WAL snapshot
        (a block row and its log, a heap clock and its changes) even while the writer commits.
        """
        if not self._reader_threads:
            raise RuntimeError("storage is closed")
        reply = _Reply()
        job = _Read(fn, args, reply)
        start = time.perf_counter()
        self._reads.put(job)
        try:
            await reply.done.wait()
        except trio.Cancelled:
            if job.withdraw():  # still queued: it will not run
                raise
            with trio.CancelScope(shield=True):  # running: its connection must come back
                await reply.done.wait()
            raise
        observe.observer.round_trip("sqlite", "read", time.perf_counter() - start)
        with _unavailable_on_operational_error():
            return reply.box[0].unwrap()

    async def read_point(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a primary-key lookup right here on the event loop.

        A thread hop costs 120-200 µs on our machines while an indexed point read costs
        10-30 µs, and in WAL mode a reader never waits for the writer. Only for queries
        that touch a handful of rows; anything that scans uses ``read``.
        """
        if self._inline is None:
            raise RuntimeError("storage is closed")
        await trio.lowlevel.checkpoint()
        with _unavailable_on_operational_error():
            return fn(self._inline, *args)

    async def read_kept(
        self,
        key: Hashable,
        fn: Callable[..., T],
        *args: Any,
        valid: Callable[[T], bool] | None = None,
    ) -> T:
        """``read_point``, its answer kept while the database is unchanged (``kept_reads``)
        and, with ``valid``, while that holds of it. A kept answer costs no query and no
        schedule point (a cancel point still)."""
        if self._inline is None:
            raise RuntimeError("storage is closed")
        mark = self.kept.mark()
        value = self.kept.get(key, mark)
        if value is not MISS and (valid is None or valid(value)):
            await trio.lowlevel.checkpoint_if_cancelled()
            return value  # type: ignore[no-any-return]
        await trio.lowlevel.checkpoint()
        with _unavailable_on_operational_error():
            value = fn(self._inline, *args)
        self.kept.put(key, mark, value)  # kept only if nothing committed since the mark
        return value  # type: ignore[no-any-return]

    def _writer_main(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                first = self._jobs.get()
                if first is _STOP:
                    return
                batch: list[Job] = [first]
                stop_after = False
                while len(batch) < MAX_BATCH:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is _STOP:
                        stop_after = True
                        break
                    batch.append(job)
                self._run_batch(conn, batch)
                if stop_after:
                    return
        finally:
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[Job]) -> None:
        """One transaction for the whole batch; every job gets exactly one reply, after COMMIT.

        If anything outside a job fails (BEGIN, SAVEPOINT, COMMIT: disk full, I/O error), the
        transaction is rolled back and every job of the batch is told so; the thread lives on.
        """
        results: list[outcome.Outcome] = []
        start = time.perf_counter()
        carry = None
        try:
            conn.execute("BEGIN IMMEDIATE")
            # the write lock is held: no commit can come between this mark and ours
            before = self.kept.mark() if all(r.users_unchanged for _, _, r in batch) else b""
            for fn, args, _ in batch:
                conn.execute("SAVEPOINT job")
                result = outcome.capture(fn, conn, *args)
                if isinstance(result, outcome.Error):
                    conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                results.append(result)
            conn.execute("COMMIT")
            if before:
                carry = partial(self.kept.carry, before, self.kept.mark(), _USER_ROWS)
        except BaseException as e:  # reported to every caller below
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("rollback after a failed batch failed")
            results = [outcome.Error(e) for _ in batch]  # an Outcome unwraps once
        else:
            self.commits += 1
            self.jobs_done += len(batch)
            observe.observer.commit_batch("sqlite", len(batch), time.perf_counter() - start)
        _reply_all(
            [(reply, answer) for (_, _, reply), answer in zip(batch, results, strict=True)], carry
        )
