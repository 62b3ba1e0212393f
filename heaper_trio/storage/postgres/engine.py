"""The server engine: PostgreSQL through an asyncpg pool, called from trio via trio-asyncio.

Each call crosses the trio/asyncio bridge exactly once, into a plain asyncio coroutine (a
runner: ``read``, ``write1`` or ``tx`` in ``runtime``) that acquires a connection, runs one
unit of work and gives the connection back. Acquire and transaction are never split across
bridge calls: wrapping ``pool.acquire()`` or ``conn.transaction()`` themselves with
``aio_as_trio`` leaks both under a cancel (stack-pitfalls section 2). A trio cancel becomes
one asyncio cancel of the runner: before COMMIT the work rolls back and nothing happened;
once COMMIT (or an autocommit statement) is on the wire the call sees it through and returns,
so "cancelled" never hides a committed write.

Transactions run at READ COMMITTED, so each statement sees what committed before it started.
Row locks give the read-modify-write rules the order the SQLite engine gets from its single
writer. A transaction locks at most, in this order, a challenge row, a user row, token rows,
so they cannot deadlock each other:

- ``complete_login`` locks the challenge row (``FOR UPDATE``: one use only), then the user row
  (``FOR SHARE``: a concurrent reject or revoke waits for the new token, then revokes it too).
  Creating an account takes ``LOGIN_LOCK``, so "the first account becomes admin" holds across
  processes.
- ``rotate_refresh_token`` locks the user row (``FOR NO KEY UPDATE``), which serialises a
  user's rotations and revocations: a replayed token's family revocation sees every token
  rotated into the family before it, and ``revoke_user_tokens`` every token rotated in.
- ``purge_expired`` skips rows another transaction holds (``SKIP LOCKED``); they go next time.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import asyncpg
import trio
import trio_asyncio
from trio_asyncio import aio_as_trio

from heaper_trio.records import (
    BlockChange,
    BlockQuery,
    BlockRecord,
    ChangePage,
    CommitResult,
    CommitStatus,
    EncodedChangePage,
    Heap,
    LoginOutcome,
    NewRefreshToken,
    RotateResult,
    StoredBlock,
    UpdateInfo,
    User,
)
from heaper_trio.records.admin_links import AdminLinkOutcome
from heaper_trio.storage.base import Storage
from heaper_trio.storage.migrate import migration_scripts
from heaper_trio.storage.postgres import commit_batch, feed, push_commit
from heaper_trio.storage.postgres import documents as docs
from heaper_trio.storage.postgres import notify as postgres_notify
from heaper_trio.storage.postgres.accounts import (
    _account_marks,
    _auth_stats,
    _claim_meta,
    _complete_login,
    _create_admin_link,
    _create_challenge,
    _fetch_user,
    _fetchval,
    _list_users,
    _purge_expired,
    _revoke_user_tokens,
    _rotate,
    _set_admin,
    _set_user_state,
    _usage,
    _use_admin_link,
)
from heaper_trio.storage.postgres.file_state import PostgresFileState
from heaper_trio.storage.postgres.files import PostgresFiles
from heaper_trio.storage.postgres.history import PostgresHistory, restore_block
from heaper_trio.storage.postgres.jobs import PostgresJobs
from heaper_trio.storage.postgres.outage import DatabaseOutage, quiet_pool_retries
from heaper_trio.storage.postgres.push_reads import GroupedReads, load_blocks, read_both
from heaper_trio.storage.postgres.runtime import (
    Conn,
    GroupCommit,
    Pool,
    close_pool,
    read,
    tx,
    write1,
)
from heaper_trio.storage.postgres.scans import PostgresScans
from heaper_trio.storage.postgres.user_cache import UserRowCache
from heaper_trio.storage.rows import DeltaTotals, encoded_page

log = logging.getLogger(__name__)


# pg_advisory_xact_lock keys; arbitrary but fixed, shared by every server process.
MIGRATE_LOCK = 0x68656170_00000001  # "heap" + 1


# -- units of work: (conn, *args), run by one of the runners above ---------------------------------


async def _migrate(c: Conn, now_ms: int) -> None:
    # Several processes starting together on one database take turns here.
    await c.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
    await c.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
        "name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
    )
    done = {r[0] for r in await c.fetch("SELECT version FROM schema_migrations")}
    for version, name, sql in migration_scripts("postgres"):
        if version in done:
            continue
        await c.execute(sql)  # no arguments: the simple protocol runs the whole script
        await c.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            version,
            name,
            now_ms,
        )
        log.info("applied postgres migration %s", name)


ANNOUNCED_KEPT = 10_000
quiet_pool_retries()  # asyncpg's floor-restoring retries: a traceback each while it is down


def _announce_key(kind: str, heap_id: str, block_id: str, seq: int) -> tuple[str, ...]:
    """One change, however the commit and DocumentService name its kind."""
    if kind in ("purged", "heap_deleted"):
        return (kind, heap_id, block_id)
    return ("block", block_id, str(seq))


async def _keep_session(_conn: Any) -> None:
    """The pool's reset on release (issue 12, item 3). asyncpg still rolls back a transaction
    left open; what this skips is its session reset query (advisory unlock, CLOSE ALL, UNLISTEN,
    RESET ALL), a round trip per pooled call. Pooled connections keep no session state: every
    advisory lock here is transaction-scoped, LISTEN has connections of its own, nothing SETs."""


# -- the engine ---------------------------------------------------------------------------------


class PostgresStorage(
    PostgresFileState, PostgresFiles, PostgresScans, PostgresHistory, PostgresJobs, Storage
):
    engine = "postgres"

    def __init__(
        self, dsn: str, *, min_size: int, max_size: int, commits_in_flight: int = 1
    ) -> None:
        """``commits_in_flight``: group commits running at once (``GroupCommit``'s depth)."""
        self.dsn = dsn
        self.commits_in_flight = commits_in_flight
        self.min_size = min_size
        self.max_size = max_size
        self._pool: Pool | None = None
        self._loop: Any = None
        # Live announcements made inside the committing transaction (see announce_commits_as)
        self.announce_as: str | None = None
        self._announced: OrderedDict[tuple[str, ...], None] = OrderedDict()
        self.delta_totals = DeltaTotals()  # the change feed's totals, carried page to page
        self.sql_json = False  # the server writes the feed's JSON as orjson would (at open)
        self._group: GroupCommit | None = None  # concurrent commit_changes, one transaction
        self._push_reads: GroupedReads | None = None  # concurrent push_reads, one statement
        self.outage = DatabaseOutage()
        self._users = UserRowCache(dsn, self.outage)  # user rows, dropped on NOTIFY (issue 12)

    async def open(self) -> None:
        # Remember the loop: calls may come from trio tasks that do not see the contextvar of
        # the task that opened it (a test body, a task started before the loop).
        self._loop = trio_asyncio.current_loop.get()
        if self._loop is None:
            raise RuntimeError("PostgresStorage.open() needs a trio-asyncio loop (heaper_trio.aio)")
        self._pool = await aio_as_trio(asyncpg.create_pool, loop=self._loop)(
            self.dsn, min_size=self.min_size, max_size=self.max_size, reset=_keep_session
        )
        try:
            await self._run(tx, _migrate, int(time.time() * 1000))
            self.sql_json = await self._run(read, feed.json_like_orjson)
            await aio_as_trio(self._users.start, loop=self._loop)()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._loop is not None:
            with trio.CancelScope(shield=True):
                await aio_as_trio(self._users.stop, loop=self._loop)()
        pool, self._pool = self._pool, None
        if pool is not None:
            with trio.CancelScope(shield=True):
                await aio_as_trio(close_pool, loop=self._loop)(pool)

    async def ping(self) -> None:
        await self._run(read, _fetchval, "SELECT 1")

    shares_processes = True

    async def announce(self, payloads: list[str]) -> None:
        await self._run(write1, postgres_notify.notify, payloads)

    def announce_commits_as(self, origin: str) -> None:
        """From now on, block commits (scan batches too), purges and heap deletions announce
        themselves to the other processes inside their own transaction, as ``origin`` (issue
        9, item 11: an announcement sent after COMMIT is lost if the process dies in between,
        and the other processes' subscribers then miss an acknowledged update)."""
        self.announce_as = origin

    def _mark_announced(self, keys: list[tuple[str, ...]]) -> None:
        for key in keys:
            self._announced[key] = None
        while len(self._announced) > ANNOUNCED_KEPT:  # never taken (e.g. a cancelled caller)
            self._announced.popitem(last=False)

    def _mark_blocks_announced(self, results: list[CommitResult]) -> None:
        """Block commits (``commit_changes``, scan batches) whose transaction announced them."""
        self._mark_announced(
            [
                _announce_key("block", "", r.block_id, r.last_seq)
                for r in results
                if r.status is not CommitStatus.conflict
            ]
        )

    def announced_in_commit(self, kind: str, heap_id: str, block_id: str, seq: int) -> bool:
        """Whether the commit of this change announced it already (then the bridge must not
        announce it again); answers True once per change."""
        key = _announce_key(kind, heap_id, block_id, seq)
        if key in self._announced:
            del self._announced[key]
            return True
        return False

    def watch_user_rows(self, on_change: Callable[[str], None]) -> None:
        self._users.on_change = on_change  # runs on the loop's thread, inside trio's run

    async def listen(
        self, on_payload: Callable[[str], None], *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        await postgres_notify.listen_forever(
            self.dsn, self._loop, on_payload, task_status, self.outage, lambda: self.announce_as
        )

    async def schema_version(self) -> int:
        sql = "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
        return int(await self._run(read, _fetchval, sql))

    async def get_meta(self, key: str) -> str | None:
        return await self._run(read, _fetchval, "SELECT value FROM meta WHERE key=$1", key)

    async def claim_meta(self, key: str, value: str) -> str:
        return await self._run(tx, _claim_meta, key, value)

    async def create_challenge(
        self, challenge: str, public_key: str, created_at: int, expires_at: int
    ) -> None:
        await self._run(write1, _create_challenge, challenge, public_key, created_at, expires_at)

    async def complete_login(
        self,
        *,
        challenge: str,
        public_key: str,
        now: int,
        new_user_id: str,
        email: str | None,
        auto_approve: bool,
        refresh: NewRefreshToken,
    ) -> LoginOutcome:
        return await self._run(
            tx,
            _complete_login,
            challenge,
            public_key,
            now,
            new_user_id,
            email,
            auto_approve,
            refresh,
        )

    async def purge_expired(self, now: int) -> int:
        return await self._run(tx, _purge_expired, now)

    async def get_user(self, user_id: str) -> User | None:
        cached = self._users.get(user_id)
        if cached is not None:
            await trio.lowlevel.checkpoint()
            return cached
        epoch = self._users.epoch
        user = await self._run(read, _fetch_user, "SELECT * FROM users WHERE id=$1", user_id)
        self._users.put(user, epoch)
        return user

    async def get_user_by_key(self, public_key: str) -> User | None:
        sql = "SELECT * FROM users WHERE public_key=$1"
        return await self._run(read, _fetch_user, sql, public_key)

    async def list_users(self) -> list[User]:
        return await self._run(read, _list_users)

    async def account_marks(self) -> dict[str, tuple[int, str, bool]]:
        return await self._run(read, _account_marks)

    # A user row changed here is dropped at once; other processes hear it by NOTIFY.
    async def set_user_state(
        self, user_id: str, state: str, now: int, *, keep_an_admin: bool = False
    ) -> User | None:
        try:
            return await self._run(tx, _set_user_state, user_id, state, now, keep_an_admin)
        finally:
            self._users.forget(user_id)

    async def set_admin(
        self, user_id: str, is_admin: bool, *, keep_an_admin: bool = False
    ) -> User | None:
        runner = tx if keep_an_admin else write1  # the guard's read and the write: one unit
        try:
            return await self._run(runner, _set_admin, user_id, is_admin, keep_an_admin)
        finally:
            self._users.forget(user_id)

    async def revoke_user_tokens(self, user_id: str, now: int) -> User | None:
        try:
            return await self._run(tx, _revoke_user_tokens, user_id, now)
        finally:
            self._users.forget(user_id)

    async def create_admin_link(
        self, token_hash: str, user_id: str, created_at: int, expires_at: int
    ) -> None:
        await self._run(write1, _create_admin_link, token_hash, user_id, created_at, expires_at)

    async def use_admin_link(
        self, token_hash: str, now: int, refresh: NewRefreshToken
    ) -> AdminLinkOutcome:
        return await self._run(tx, _use_admin_link, token_hash, now, refresh)

    async def rotate_refresh_token(
        self, *, jti: str, user_id: str, now: int, new: NewRefreshToken
    ) -> RotateResult:
        return await self._run(tx, _rotate, jti, user_id, now, new)

    # -- heaps and blocks (units of work and locking rules in ``documents``) -------------
    async def create_heap(self, heap: Heap, root: BlockChange, now: int) -> bool:
        origin = self.announce_as
        created = await self._run(tx, docs.create_heap, heap, root, now, origin)
        if created and origin is not None:
            self._mark_announced([_announce_key("created", heap.id, root.block_id, 1)])
        return created

    async def get_heap(self, heap_id: str) -> Heap | None:
        return await self._run(read, docs.get_heap, heap_id)

    async def list_heaps(self, owner_id: str) -> list[Heap]:
        return await self._run(read, docs.list_heaps, owner_id)

    async def load_block(self, block_id: str) -> StoredBlock | None:
        return await self._run(read, docs.load_block, block_id)

    async def get_blocks(self, block_ids: list[str]) -> dict[str, BlockRecord]:
        return await self._run(read, docs.get_blocks, block_ids)

    async def tombstones(self, block_ids: list[str]) -> dict[str, tuple[str, int]]:
        return await self._run(read, docs.tombstones, block_ids)

    async def push_reads(
        self, heap_ids: list[str], block_ids: list[str], load_ids: list[str]
    ) -> tuple[dict[str, str], dict[str, tuple[str, int]], dict[str, StoredBlock]]:
        if self._push_reads is None:  # trio objects are made inside trio.run
            self._push_reads = GroupedReads(lambda *ids: self._run(read, read_both, *ids))
        return await self._push_reads.read(heap_ids, block_ids, load_ids)

    async def load_blocks(self, block_ids: list[str]) -> dict[str, StoredBlock]:
        return await self._run(read, load_blocks, block_ids)

    async def commit_changes(self, changes: list[BlockChange], now: int) -> list[CommitResult]:
        if self._group is None:  # trio objects are made inside trio.run
            self._group = GroupCommit(self._commit_batch, self.commits_in_flight)
        results: list[CommitResult] = await self._group.submit(changes, now)
        if self.announce_as is not None:
            self._mark_blocks_announced(results)
        return results

    async def _commit_batch(self, changes: list[BlockChange], now: int) -> list[CommitResult]:
        """One group commit's transaction. Plain edits: one statement that is its own
        transaction (``push_commit``, one round trip). Otherwise, or if that statement refuses
        the batch (it wrote nothing): every lock up front, then the changes a statement per
        table with no savepoint (``commit_batch.BARE``); on a refusal only one by one can
        decide, the transaction is rolled back and run again with each change in its own
        savepoint, so a refused one rolls back alone."""
        run, origin = docs.commit_changes, self.announce_as
        if push_commit.eligible(changes):  # one statement, its own transaction (0023)
            keys = sorted({docs.block_key(ch.block_id) for ch in changes})
            args = (changes, now, docs.BLOCK_LOCK, keys, origin)
            try:
                return await self._run(write1, push_commit.commit_in_one, *args)
            except push_commit.Surprise:  # nothing written: the usual way below
                pass
        try:
            return await self._run(tx, run, changes, now, origin, commit_batch.BARE)
        except commit_batch.OneByOne:  # rolled back: again, each change in its own savepoint
            return await self._run(tx, run, changes, now, origin, commit_batch.ONE_BY_ONE)

    async def restore_block(self, change: BlockChange, now: int) -> CommitResult:
        origin = self.announce_as
        result = await self._run(tx, restore_block, change, now, origin)
        if origin is not None:
            self._mark_blocks_announced([result])
        return result

    async def changes_since(self, heap_id: str, since: int, limit: int) -> ChangePage:
        return await self._run(
            docs.snapshot, feed.changes_since, heap_id, since, limit, self.delta_totals
        )

    async def changes_since_encoded(
        self, heap_id: str, since: int, limit: int
    ) -> EncodedChangePage:
        if not self.sql_json:
            return encoded_page(await self.changes_since(heap_id, since, limit))
        args = (heap_id, since, limit, self.delta_totals)
        page = await self._run(read, feed.changes_since_encoded, *args)  # one statement
        assert page is not None  # no owner asked
        return page

    async def owned_changes_since_encoded(
        self, owner_id: str, heap_id: str, since: int, limit: int
    ) -> EncodedChangePage | None:
        if not self.sql_json:
            return await super().owned_changes_since_encoded(owner_id, heap_id, since, limit)
        args = (heap_id, since, limit, self.delta_totals, owner_id)
        return await self._run(read, feed.changes_since_encoded, *args)  # one round trip

    async def related(self, block_id: str) -> dict[str, list[str]]:
        return await self._run(read, docs.related, block_id)

    async def query_blocks(self, heap_id: str, query: BlockQuery, limit: int) -> list[BlockRecord]:
        return await self._run(read, docs.query_blocks, heap_id, query, limit)

    async def count_blocks(self, heap_id: str, query: BlockQuery) -> dict[str, int]:
        return await self._run(read, docs.count_blocks, heap_id, query)

    async def block_history(self, block_id: str) -> tuple[int, list[UpdateInfo]]:
        return await self._run(docs.snapshot, docs.block_history, block_id)

    async def marked_gone(self) -> dict[str, list[str]]:
        return await self._run(read, docs.marked_gone)

    async def trashed(self, heap_id: str) -> list[BlockRecord]:
        return await self._run(read, docs.trashed, heap_id)

    async def purge_blocks(self, heap_id: str, block_ids: list[str], now: int) -> list[str]:
        origin = self.announce_as
        purged = await self._run(tx, docs.purge_blocks, heap_id, block_ids, now, origin)
        if origin is not None:
            self._mark_announced([_announce_key("purged", heap_id, b, 0) for b in purged])
        return purged

    async def delete_heap(self, heap_id: str) -> bool:
        origin = self.announce_as
        deleted = await self._run(tx, docs.delete_heap, heap_id, origin)
        if deleted and origin is not None:
            self._mark_announced([_announce_key("heap_deleted", heap_id, "", 0)])
        return deleted

    async def heap_stats(self, heap_id: str) -> dict[str, Any]:
        return await self._run(docs.snapshot, docs.heap_stats, heap_id)

    async def auth_stats(self) -> dict[str, int]:
        return await self._run(read, _auth_stats)

    async def usage(self, user_id: str, now: int) -> dict[str, Any]:
        return await self._run(read, _usage, user_id, now)
