"""The embedded engine: SQLite in WAL mode, zero set-up (see ``runtime`` for the how)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from heaper_trio.records import (
    BlockChange,
    BlockQuery,
    BlockRecord,
    ChangePage,
    CommitResult,
    EncodedChangePage,
    Heap,
    LoginOutcome,
    NewRefreshToken,
    RefreshOutcome,
    RotateResult,
    StoredBlock,
    UpdateInfo,
    User,
)
from heaper_trio.records.admin_links import AdminLinkOutcome
from heaper_trio.storage import rules
from heaper_trio.storage.base import Storage
from heaper_trio.storage.rows import DeltaTotals, encoded_page, user_row
from heaper_trio.storage.sqlite import documents as docs
from heaper_trio.storage.sqlite import feed, search
from heaper_trio.storage.sqlite.file_state import SqliteFileState
from heaper_trio.storage.sqlite.files import SqliteFiles
from heaper_trio.storage.sqlite.history import SqliteHistory
from heaper_trio.storage.sqlite.jobs import SqliteJobs
from heaper_trio.storage.sqlite.runtime import SqliteRuntime
from heaper_trio.storage.sqlite.scans import SqliteScans

DB_FILE = "heaper.sqlite3"


def _get_user(conn: sqlite3.Connection, user_id: str) -> User | None:
    return user_row(conn.execute("SELECT * FROM users WHERE id=?", (user_id,)).fetchone())


def _get_user_by_key(conn: sqlite3.Connection, public_key: str) -> User | None:
    row = conn.execute("SELECT * FROM users WHERE public_key=?", (public_key,)).fetchone()
    return user_row(row)


def _insert_refresh(conn: sqlite3.Connection, user_id: str, new: NewRefreshToken) -> None:
    conn.execute(
        "INSERT INTO refresh_tokens (jti, family, user_id, issued_at, expires_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (new.jti, new.family, user_id, new.issued_at, new.expires_at),
    )


class SqliteStorage(SqliteFileState, SqliteFiles, SqliteScans, SqliteHistory, SqliteJobs, Storage):
    engine = "sqlite"

    def __init__(self, data_dir: Path, synchronous: str = "FULL") -> None:
        self.path = data_dir / DB_FILE
        self.rt = SqliteRuntime(self.path, synchronous)
        self.delta_totals = DeltaTotals()  # the change feed's totals, carried page to page
        self.sql_json = False  # SQLite writes the feed's JSON as orjson would (set at open)

    async def open(self) -> None:
        await self.rt.start(int(time.time() * 1000))
        self.sql_json = await self.rt.read_point(feed.json_like_orjson)

    async def close(self) -> None:
        await self.rt.stop()

    async def ping(self) -> None:
        await self.rt.read(lambda c: c.execute("SELECT 1").fetchone())

    async def schema_version(self) -> int:
        def q(c: sqlite3.Connection) -> int:
            sql = "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
            return int(c.execute(sql).fetchone()[0])

        return await self.rt.read(q)

    async def get_meta(self, key: str) -> str | None:
        def q(c: sqlite3.Connection) -> str | None:
            row = c.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            return None if row is None else row[0]

        return await self.rt.read(q)

    async def claim_meta(self, key: str, value: str) -> str:
        def tx(c: sqlite3.Connection) -> str:
            c.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
            return c.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0]

        return await self.rt.write(tx)

    async def create_challenge(
        self, challenge: str, public_key: str, created_at: int, expires_at: int
    ) -> None:
        await self.rt.write(
            lambda c: c.execute(
                "INSERT INTO challenges (challenge, public_key, created_at, expires_at) "
                "VALUES (?, ?, ?, ?)",
                (challenge, public_key, created_at, expires_at),
            )
        )

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
        def tx(c: sqlite3.Connection) -> LoginOutcome:
            row = c.execute(
                "SELECT public_key, expires_at, used_at FROM challenges WHERE challenge=?",
                (challenge,),
            ).fetchone()
            problem = rules.challenge_problem(row, public_key, now)
            if problem is not None:
                return LoginOutcome(problem)
            c.execute("UPDATE challenges SET used_at=? WHERE challenge=?", (now, challenge))
            user = _get_user_by_key(c, public_key)
            created = user is None
            if user is None:
                first = c.execute("SELECT NOT EXISTS (SELECT 1 FROM users)").fetchone()[0]
                new = rules.new_account(bool(first), auto_approve, now)
                c.execute(
                    "INSERT INTO users (id, public_key, email, state, is_admin, created_at, "
                    "approved_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        new_user_id,
                        public_key,
                        email,
                        new.state,
                        int(new.is_admin),
                        now,
                        new.approved_at,
                    ),
                )
                user = _get_user(c, new_user_id)
                assert user is not None
            outcome = rules.login_outcome(user, created)
            if outcome.token_issued:
                _insert_refresh(c, user.id, refresh)
            return outcome

        return await self.rt.write(tx)

    async def purge_expired(self, now: int) -> int:
        def tx(c: sqlite3.Connection) -> int:
            a = c.execute("DELETE FROM challenges WHERE expires_at <= ?", (now,)).rowcount
            b = c.execute("DELETE FROM refresh_tokens WHERE expires_at <= ?", (now,)).rowcount
            kept = now - rules.ADMIN_LINK_KEPT_MS
            d = c.execute("DELETE FROM admin_links WHERE expires_at <= ?", (kept,)).rowcount
            return a + b + d

        return await self.rt.write(tx)

    async def get_user(self, user_id: str) -> User | None:
        # kept while the database is unchanged: a revoke anywhere is seen by the next read
        return await self.rt.read_kept(("user", user_id), _get_user, user_id)

    async def get_user_by_key(self, public_key: str) -> User | None:
        return await self.rt.read_point(_get_user_by_key, public_key)

    async def list_users(self) -> list[User]:
        def q(c: sqlite3.Connection) -> list[User]:
            rows = c.execute("SELECT * FROM users ORDER BY created_at, id").fetchall()
            return [u for u in map(user_row, rows) if u is not None]

        return await self.rt.read(q)

    async def account_marks(self) -> dict[str, tuple[int, str, bool]]:
        def q(c: sqlite3.Connection) -> dict[str, tuple[int, str, bool]]:
            rows = c.execute("SELECT id, token_generation, state, is_admin FROM users")
            return {r[0]: (int(r[1]), str(r[2]), bool(r[3])) for r in rows}

        return await self.rt.read(q)

    async def set_user_state(
        self, user_id: str, state: str, now: int, *, keep_an_admin: bool = False
    ) -> User | None:
        def tx(c: sqlite3.Connection) -> User | None:
            if keep_an_admin and state != "approved":
                rules.check_keeps_an_admin(user_id, _approved_admins(c))
            c.execute(
                "UPDATE users SET state=?, approved_at=CASE WHEN ?='approved' THEN ? "
                "ELSE approved_at END WHERE id=?",
                (state, state, now, user_id),
            )
            if state == "rejected":
                _revoke_all(c, user_id, now)
            return _get_user(c, user_id)

        return await self.rt.write(tx)

    async def set_admin(
        self, user_id: str, is_admin: bool, *, keep_an_admin: bool = False
    ) -> User | None:
        def tx(c: sqlite3.Connection) -> User | None:
            if keep_an_admin and not is_admin:
                rules.check_keeps_an_admin(user_id, _approved_admins(c))
            c.execute("UPDATE users SET is_admin=? WHERE id=?", (int(is_admin), user_id))
            return _get_user(c, user_id)

        return await self.rt.write(tx)

    async def revoke_user_tokens(self, user_id: str, now: int) -> User | None:
        def tx(c: sqlite3.Connection) -> User | None:
            _revoke_all(c, user_id, now)
            return _get_user(c, user_id)

        return await self.rt.write(tx)

    async def create_admin_link(
        self, token_hash: str, user_id: str, created_at: int, expires_at: int
    ) -> None:
        await self.rt.write(
            lambda c: c.execute(
                "INSERT INTO admin_links (token_hash, user_id, created_at, expires_at) "
                "VALUES (?, ?, ?, ?)",
                (token_hash, user_id, created_at, expires_at),
            )
        )

    async def use_admin_link(
        self, token_hash: str, now: int, refresh: NewRefreshToken
    ) -> AdminLinkOutcome:
        def tx(c: sqlite3.Connection) -> AdminLinkOutcome:
            row = c.execute(
                "SELECT user_id, expires_at, used_at FROM admin_links WHERE token_hash=?",
                (token_hash,),
            ).fetchone()
            user = None if row is None else _get_user(c, row["user_id"])
            problem = rules.admin_link_problem(row, user, now)
            if problem is not None or user is None:
                return AdminLinkOutcome(problem)
            c.execute("UPDATE admin_links SET used_at=? WHERE token_hash=?", (now, token_hash))
            _insert_refresh(c, user.id, refresh)
            return AdminLinkOutcome(None, user)

        return await self.rt.write(tx)

    async def rotate_refresh_token(
        self, *, jti: str, user_id: str, now: int, new: NewRefreshToken
    ) -> RotateResult:
        def tx(c: sqlite3.Connection) -> RotateResult:
            row = c.execute(
                "SELECT family, user_id, expires_at, rotated_at, revoked_at "
                "FROM refresh_tokens WHERE jti=?",
                (jti,),
            ).fetchone()
            outcome = rules.refresh_outcome(row, user_id, now)
            if outcome is RefreshOutcome.reused:
                c.execute(
                    "UPDATE refresh_tokens SET revoked_at=? WHERE family=? AND revoked_at IS NULL",
                    (now, row["family"]),
                )
            elif outcome is RefreshOutcome.ok:
                c.execute("UPDATE refresh_tokens SET rotated_at=? WHERE jti=?", (now, jti))
                _insert_refresh(
                    c,
                    user_id,
                    NewRefreshToken(new.jti, row["family"], new.issued_at, new.expires_at),
                )
            return rules.rotate_result(outcome, user_id)

        return await self.rt.write(tx)

    # -- heaps and blocks (units of work in ``documents``) ---------------------------------
    async def create_heap(self, heap: Heap, root: BlockChange, now: int) -> bool:
        return await self.rt.write(docs.create_heap, heap, root, now)

    async def get_heap(self, heap_id: str) -> Heap | None:
        return await self.rt.read_point(docs.get_heap, heap_id)

    async def list_heaps(self, owner_id: str) -> list[Heap]:
        return await self.rt.read(docs.list_heaps, owner_id)

    async def load_block(self, block_id: str) -> StoredBlock | None:
        return await self.rt.read(docs.load_block, block_id)

    async def get_blocks(self, block_ids: list[str]) -> dict[str, BlockRecord]:
        return await self.rt.read(docs.get_blocks, block_ids)

    async def tombstones(self, block_ids: list[str]) -> dict[str, tuple[str, int]]:
        return await self.rt.read(docs.tombstones, block_ids)

    async def load_blocks(self, block_ids: list[str]) -> dict[str, StoredBlock]:
        return await self.rt.read(docs.load_blocks, block_ids)  # one read transaction

    async def push_reads(
        self, heap_ids: list[str], block_ids: list[str], load_ids: list[str]
    ) -> tuple[dict[str, str], dict[str, tuple[str, int]], dict[str, StoredBlock]]:
        # In a reader thread, even for a handful of primary-key lookups: on the event loop they
        # took the loop from the fan-out of rooms on the checked path (over 256 subscribers),
        # where a reader thread runs beside it (sqlite3 lets go of the GIL). Measured,
        # bench_ws --ns 1000, interleaved: 4.7-5.0 us of CPU per delivery under load on the
        # loop, 2.9-3.9 in a thread (3.5-3.6 before push_reads).
        return await self.rt.read(docs.push_reads, heap_ids, block_ids, load_ids)

    async def commit_changes(self, changes: list[BlockChange], now: int) -> list[CommitResult]:
        return await self.rt.write(docs.commit_changes, changes, now, users_unchanged=True)

    async def reindex_marked(self) -> int:
        return await self.rt.write(search.reindex_marked)

    async def changes_since(self, heap_id: str, since: int, limit: int) -> ChangePage:
        return await self.rt.read(feed.changes_since, heap_id, since, limit, self.delta_totals)

    async def changes_since_encoded(
        self, heap_id: str, since: int, limit: int
    ) -> EncodedChangePage:
        if not self.sql_json:
            return encoded_page(await self.changes_since(heap_id, since, limit))
        args = (heap_id, since, limit, self.delta_totals)
        return await self.rt.read(feed.changes_since_encoded, *args)

    async def related(self, block_id: str) -> dict[str, list[str]]:
        return await self.rt.read(docs.related, block_id)

    async def query_blocks(self, heap_id: str, query: BlockQuery, limit: int) -> list[BlockRecord]:
        return await self.rt.read(docs.query_blocks, heap_id, query, limit)

    async def count_blocks(self, heap_id: str, query: BlockQuery) -> dict[str, int]:
        return await self.rt.read(docs.count_blocks, heap_id, query)

    async def block_history(self, block_id: str) -> tuple[int, list[UpdateInfo]]:
        return await self.rt.read(docs.block_history, block_id)

    async def marked_gone(self) -> dict[str, list[str]]:
        return await self.rt.read(docs.marked_gone)

    async def trashed(self, heap_id: str) -> list[BlockRecord]:
        return await self.rt.read(docs.trashed, heap_id)

    async def purge_blocks(self, heap_id: str, block_ids: list[str], now: int) -> list[str]:
        return await self.rt.write(docs.purge_blocks, heap_id, block_ids, now)

    async def delete_heap(self, heap_id: str) -> bool:
        return await self.rt.write(docs.delete_heap, heap_id)

    async def heap_stats(self, heap_id: str) -> dict[str, Any]:
        return await self.rt.read(docs.heap_stats, heap_id)

    async def auth_stats(self) -> dict[str, int]:
        def q(c: sqlite3.Connection) -> dict[str, int]:
            return {
                t: c.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("users", "challenges", "refresh_tokens")
            }

        return await self.rt.read(q)

    async def usage(self, user_id: str, now: int) -> dict[str, Any]:
        # Heap rows carry exact block counters (0010 triggers); live sessions use their
        # partial index: a few rows, cheaper than the thread hop, so inline.
        # Kept while the database is unchanged and until the first counted session expires.
        counted, _until = await self.rt.read_kept(
            ("usage", user_id), _usage, user_id, now, valid=lambda kept: now < kept[1]
        )
        return dict(counted)


_LIVE_SESSIONS = (
    "FROM refresh_tokens WHERE user_id=? AND rotated_at IS NULL AND revoked_at IS NULL "
    "AND expires_at > ?"
)


def _usage(c: sqlite3.Connection, user_id: str, now: int) -> tuple[dict[str, Any], float]:
    """The usage counters, and until when (Unix ms) the session count holds unless the
    database changes: the first expiry among the sessions it counts."""
    sessions, until, heaps, blocks, document_bytes = c.execute(
        f"SELECT (SELECT COUNT(DISTINCT family) {_LIVE_SESSIONS}), "
        f"(SELECT MIN(expires_at) {_LIVE_SESSIONS}), "
        "COUNT(*), COALESCE(SUM(block_count), 0), COALESCE(SUM(block_bytes), 0) "
        "FROM heaps WHERE owner_id=?",
        (user_id, now, user_id, now, user_id),
    ).fetchone()
    ends = float("inf") if until is None else float(until)
    return rules.usage(sessions, heaps, blocks, document_bytes), ends


def _revoke_all(c: sqlite3.Connection, user_id: str, now: int) -> None:
    c.execute("UPDATE users SET token_generation = token_generation + 1 WHERE id=?", (user_id,))
    c.execute(
        "UPDATE refresh_tokens SET revoked_at=? WHERE user_id=? AND revoked_at IS NULL",
        (now, user_id),
    )


def _approved_admins(c: sqlite3.Connection) -> list[str]:
    """Inside a write: the writer holds SQLite's one write lock, so no process changes them
    before this transaction commits."""
    sql = "SELECT id FROM users WHERE is_admin=1 AND state='approved' ORDER BY id"
    return [row[0] for row in c.execute(sql)]
