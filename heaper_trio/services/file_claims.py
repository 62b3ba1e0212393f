"""Why no verified file row can point at a deleted object, with several server processes.

The race (review, issue 14): process A deletes the last block holding a file, drops the file's
row and removes ``files/<hash>``; meanwhile process B uploads the same bytes, sees the object
(a HEAD) and skips its PUT, and records its row. Whatever order those steps take, B must not
end up holding a row whose bytes A removes. Two marks in the database keep them apart:

- **A claim** (``file_claims``): an upload claims the hash before it looks at the store
  (HEAD, dedupe) and releases it once its block holds the file (``block_files``). The
  deletion drops only rows that no block holds AND no upload claims.
- **A deletion under way** (``file_deletions``): written in the same transaction that drops
  the row, removed once the object is gone. Taking a claim answers whether one is under way;
  if so the upload waits for its end (polling) before it looks at the store, so it never
  trusts a HEAD the deletion is about to make wrong, and its own PUT comes after the DELETE.

The claim's write and the deletion's drop take turns per hash (PostgreSQL: a transaction
advisory lock on the hash, then a new statement, so each sees what the other committed;
SQLite, one process: the same in memory, ``FileClaims``, with the table methods kept for
parity), so one of two orders holds: the claim first, then the drop sees it
and leaves the row and the bytes alone; or the drop first, then the claim sees the deletion
and waits until the bytes are gone, and the upload writes them again. No new deletion can
start while the claim is held, and once it is released the upload's block holds the file.

Time: every stamp (a claim's, a deletion mark's) and every age test takes the storage's
clock (``Storage.clock_ms``: the database's on PostgreSQL), never the process's own, so a
process whose clock is off by an hour neither makes its live claim look stale nor overlooks
another's.

Crashes: a claim older than ``CLAIM_TTL_MS`` is a dead process's and no longer holds a file
(its row then merely outlives it, as before), and is swept (``sweep_claims_forever``); a
deletion mark older than ``DELETION_TTL_MS`` no longer makes uploads wait. For that last
case an upload into a bucket also HEADs again after recording and PUTs again if the object
is gone. A mark past its TTL is a deletion that never ended: its row is gone but maybe not
its bytes, so the sweep finishes it (``FileStore.finish_interrupted_deletions``) rather than
forgetting it, which left the bytes of a deleted file on disk for ever.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from heaper_trio.storage.base import Storage

log = logging.getLogger(__name__)
CLAIM_TTL_MS = 3600 * 1000  # longer than any upload's PUT and record
DELETION_TTL_MS = 60 * 1000  # far longer than one object DELETE
POLL_S = 0.05  # while a deletion of the same bytes finishes (rare, and short)


class FileClaims:
    """Claims and deletions, in the database when processes share it (PostgreSQL), else in
    this process's memory: SQLite has one process per database, where the same protocol
    then costs an upload no write transactions (two per upload in the database)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.shared = storage.shares_processes
        self._held: Counter[str] = Counter()  # hash -> uploads holding it (memory mode)
        self._deleting: dict[str, trio.Event] = {}  # hash -> set when its deletion ends

    @asynccontextmanager
    async def hold(self, hash: str) -> AsyncIterator[None]:
        """Hold the hash from before the store is looked at until the block holds the
        file; returns once no deletion of its bytes is under way."""
        if self.shared:
            async with claimed(self.storage, hash):
                yield
            return
        while (ending := self._deleting.get(hash)) is not None:
            await ending.wait()
        self._held[hash] += 1  # no await since the check: no deletion started in between
        try:
            yield
        finally:
            self._held[hash] -= 1
            if not self._held[hash]:
                del self._held[hash]

    @asynccontextmanager
    async def deleting(self, hashes: list[str]) -> AsyncIterator[list[str]]:
        """The hashes a deletion may drop (memory mode: those no upload holds and no other
        deletion has), marked as being deleted until the block ends."""
        if self.shared:  # the storage decides, under its lock (drop_unreferenced_files)
            yield hashes
            return
        ended = trio.Event()
        free = [h for h in dict.fromkeys(hashes) if h not in self._held and h not in self._deleting]
        for h in free:
            self._deleting[h] = ended
        try:
            yield free
        finally:
            for h in free:
                del self._deleting[h]
            ended.set()


@asynccontextmanager
async def claimed(storage: Storage, hash: str) -> AsyncIterator[None]:
    """Hold the hash from before the store is looked at until the block holds the file;
    returns once no deletion of its bytes is under way."""
    token = uuid.uuid4().hex
    try:
        # another process's deletion: nothing to wait on but the database, so it is polled
        while await claim_once(storage, hash, token):  # noqa: ASYNC110
            await trio.sleep(POLL_S)
        yield
    finally:
        with trio.CancelScope(shield=True):
            await storage.release_file_claim(hash, token)


async def claim_once(storage: Storage, hash: str, token: str) -> bool:
    """Stamp the claim by the storage's clock, the one its age is judged by: a drop on
    another process (``claims_after``) and the sweep compare it with that clock, so a
    process whose own clock runs late must not make its live claim look stale."""
    return await storage.claim_file_now(hash, token, DELETION_TTL_MS)


SWEEP_EVERY_S = 600.0
SWEEP_BATCH = 500  # rows per statement
SWEEP_MAX_BATCHES = 20  # per pass: a backlog is worked off over several passes


async def sweep_claims_forever(
    storage: Storage, finish_deletions: Callable[[], Awaitable[int]]
) -> None:
    """At start and every ``SWEEP_EVERY_S``: finish the deletions a crash or a failed removal
    left (``finish_deletions``: ``FileStore.finish_interrupted_deletions``, whose marks say
    which bytes are still to go), then drop the claims no drop counts any more. Claims are
    left by a process that died (SIGKILL, power loss) while it held them, or whose release
    failed (the database was unreachable); nothing else removes them, and each costs every
    claim and drop of its hash a row to skip. Both engines: a SQLite process keeps its claims
    in memory, but a kill between a drop and the removal of its bytes leaves a mark there
    too.

    Never a live claim: only those older than ``CLAIM_TTL_MS`` go, and a drop already treats
    those as gone (``claims_after``), so the sweep changes no decision. The rows are stamped
    and aged by one clock, the storage's (the database's on PostgreSQL: several processes
    stamp them, and any one's own clock may be off by more than a TTL). Each pass deletes at
    most ``SWEEP_BATCH * SWEEP_MAX_BATCHES`` claims, in short transactions. A failed pass is
    logged and tried again at the next."""
    while True:
        try:  # each its own try: one failing must not stop the other
            finished = await finish_deletions()
            if finished:
                log.info("finished %d interrupted file deletions", finished)
        except Exception:
            log.exception("finishing interrupted file deletions failed")
        try:
            swept = await sweep_claims_once(storage, await storage.clock_ms())
            if swept:
                log.info("swept %d stale file claims", swept)
        except Exception:
            log.exception("sweeping stale file claims failed")
        await trio.sleep(SWEEP_EVERY_S)


async def sweep_claims_once(storage: Storage, now: int) -> int:
    swept = 0
    for _ in range(SWEEP_MAX_BATCHES):
        gone = await storage.sweep_file_claims(now - CLAIM_TTL_MS, SWEEP_BATCH)
        swept += gone
        if gone < SWEEP_BATCH:
            break
    return swept
