"""PostgreSQL units of work for accounts: users, login challenges, refresh tokens, usage.

Each is ``(conn, *args)``, run by a runner of ``runtime`` inside one bridge crossing; the
locking order they keep is described in ``engine``. What a challenge or a refresh token row
means is decided by ``storage.rules``, as for SQLite.
"""

from __future__ import annotations

from typing import Any

from heaper_trio.records import LoginOutcome, NewRefreshToken, RefreshOutcome, RotateResult, User
from heaper_trio.records.admin_links import AdminLinkOutcome
from heaper_trio.storage import rules
from heaper_trio.storage.postgres.runtime import Conn
from heaper_trio.storage.rows import user_row

# pg_advisory_xact_lock key; arbitrary but fixed, shared by every server process.
LOGIN_LOCK = 0x68656170_00000002


def _count(status: str) -> int:
    """Rows touched, from a command tag such as ``DELETE 3``."""
    return int(status.rsplit(" ", 1)[-1])


async def _get_user(c: Conn, user_id: str) -> User | None:
    return user_row(await c.fetchrow("SELECT * FROM users WHERE id=$1", user_id))


async def _insert_refresh(c: Conn, user_id: str, new: NewRefreshToken) -> None:
    await c.execute(
        "INSERT INTO refresh_tokens (jti, family, user_id, issued_at, expires_at) "
        "VALUES ($1, $2, $3, $4, $5)",
        new.jti,
        new.family,
        user_id,
        new.issued_at,
        new.expires_at,
    )


async def _revoke_all(c: Conn, user_id: str, now: int) -> None:
    # The users row first: it waits for in-flight logins and rotations of this user, so the
    # next statement sees every token they stored.
    await c.execute("UPDATE users SET token_generation = token_generation + 1 WHERE id=$1", user_id)
    await c.execute(
        "UPDATE refresh_tokens SET revoked_at=$1 WHERE user_id=$2 AND revoked_at IS NULL",
        now,
        user_id,
    )


async def _fetchval(c: Conn, sql: str, *args: Any) -> Any:
    return await c.fetchval(sql, *args)


async def _fetch_user(c: Conn, sql: str, *args: Any) -> User | None:
    return user_row(await c.fetchrow(sql, *args))


async def _list_users(c: Conn) -> list[User]:
    # COLLATE "C": the byte order SQLite uses, whatever the database's locale.
    rows = await c.fetch('SELECT * FROM users ORDER BY created_at, id COLLATE "C"')
    return [u for u in map(user_row, rows) if u is not None]


async def _account_marks(c: Conn) -> dict[str, tuple[int, str, bool]]:
    rows = await c.fetch("SELECT id, token_generation, state, is_admin FROM users")
    return {
        r["id"]: (int(r["token_generation"]), str(r["state"]), bool(r["is_admin"])) for r in rows
    }


async def _claim_meta(c: Conn, key: str, value: str) -> str:
    await c.execute(
        "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING", key, value
    )
    return await c.fetchval("SELECT value FROM meta WHERE key=$1", key)


async def _create_challenge(
    c: Conn, challenge: str, public_key: str, created_at: int, expires_at: int
) -> None:
    await c.execute(
        "INSERT INTO challenges (challenge, public_key, created_at, expires_at) "
        "VALUES ($1, $2, $3, $4)",
        challenge,
        public_key,
        created_at,
        expires_at,
    )


async def _complete_login(
    c: Conn,
    challenge: str,
    public_key: str,
    now: int,
    new_user_id: str,
    email: str | None,
    auto_approve: bool,
    refresh: NewRefreshToken,
) -> LoginOutcome:
    row = await c.fetchrow(
        "SELECT public_key, expires_at, used_at FROM challenges WHERE challenge=$1 FOR UPDATE",
        challenge,
    )
    problem = rules.challenge_problem(row, public_key, now)
    if problem is not None:
        return LoginOutcome(problem)
    await c.execute(
        "UPDATE challenges SET used_at=$1 WHERE challenge=$2 AND used_at IS NULL", now, challenge
    )
    by_key = "SELECT * FROM users WHERE public_key=$1 FOR SHARE"
    user = user_row(await c.fetchrow(by_key, public_key))
    created = False
    if user is None:
        # Creations take turns across processes, so the NOT EXISTS check below and the insert
        # cannot interleave with another creation's: exactly one first account.
        await c.execute("SELECT pg_advisory_xact_lock($1)", LOGIN_LOCK)
        user = user_row(await c.fetchrow(by_key, public_key))  # made while we waited?
    if user is None:
        first = bool(await c.fetchval("SELECT NOT EXISTS (SELECT 1 FROM users)"))
        new = rules.new_account(first, auto_approve, now)
        user = user_row(
            await c.fetchrow(
                "INSERT INTO users (id, public_key, email, state, is_admin, created_at, "
                "approved_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
                new_user_id,
                public_key,
                email,
                new.state,
                new.is_admin,
                now,
                new.approved_at,
            )
        )
        assert user is not None
        created = True
    outcome = rules.login_outcome(user, created)
    if outcome.token_issued:
        await _insert_refresh(c, user.id, refresh)
    return outcome


async def _purge_expired(c: Conn, now: int) -> int:
    a = await c.execute(
        "DELETE FROM challenges WHERE challenge IN (SELECT challenge FROM challenges "
        "WHERE expires_at <= $1 FOR UPDATE SKIP LOCKED)",
        now,
    )
    b = await c.execute(
        "DELETE FROM refresh_tokens WHERE jti IN (SELECT jti FROM refresh_tokens "
        "WHERE expires_at <= $1 FOR UPDATE SKIP LOCKED)",
        now,
    )
    d = await c.execute(
        "DELETE FROM admin_links WHERE expires_at <= $1", now - rules.ADMIN_LINK_KEPT_MS
    )
    return _count(a) + _count(b) + _count(d)


async def _set_user_state(
    c: Conn, user_id: str, state: str, now: int, keep_an_admin: bool = False
) -> User | None:
    if keep_an_admin and state != "approved":
        rules.check_keeps_an_admin(user_id, await _approved_admins(c))
    await c.execute(
        "UPDATE users SET state=$1::text, approved_at=CASE WHEN $1::text='approved' "
        "THEN $2::bigint ELSE approved_at END WHERE id=$3",
        state,
        now,
        user_id,
    )
    if state == "rejected":
        await _revoke_all(c, user_id, now)
    return await _get_user(c, user_id)


async def _set_admin(
    c: Conn, user_id: str, is_admin: bool, keep_an_admin: bool = False
) -> User | None:
    if keep_an_admin and not is_admin:
        rules.check_keeps_an_admin(user_id, await _approved_admins(c))
    sql = "UPDATE users SET is_admin=$1 WHERE id=$2 RETURNING *"
    return user_row(await c.fetchrow(sql, is_admin, user_id))


async def _approved_admins(c: Conn) -> list[str]:
    """Locks the approved admins' rows until this transaction ends: a second process doing
    the same waits here, then reads the rows as the first one left them (READ COMMITTED
    re-checks a row it waited for), so it cannot demote the last admin the first one left."""
    sql = "SELECT id FROM users WHERE is_admin AND state='approved' ORDER BY id FOR UPDATE"
    return [row["id"] for row in await c.fetch(sql)]


async def _revoke_user_tokens(c: Conn, user_id: str, now: int) -> User | None:
    await _revoke_all(c, user_id, now)
    return await _get_user(c, user_id)


async def _create_admin_link(
    c: Conn, token_hash: str, user_id: str, created_at: int, expires_at: int
) -> None:
    await c.execute(
        "INSERT INTO admin_links (token_hash, user_id, created_at, expires_at) "
        "VALUES ($1, $2, $3, $4)",
        token_hash,
        user_id,
        created_at,
        expires_at,
    )


async def _use_admin_link(
    c: Conn, token_hash: str, now: int, refresh: NewRefreshToken
) -> AdminLinkOutcome:
    # The link row first (FOR UPDATE: one use only), then the user row (FOR SHARE, as a login
    # does: a concurrent reject or revoke waits for the new token, then revokes it too).
    row = await c.fetchrow(
        "SELECT user_id, expires_at, used_at FROM admin_links WHERE token_hash=$1 FOR UPDATE",
        token_hash,
    )
    user = None
    if row is not None:
        sql = "SELECT * FROM users WHERE id=$1 FOR SHARE"
        user = user_row(await c.fetchrow(sql, row["user_id"]))
    problem = rules.admin_link_problem(row, user, now)
    if problem is not None or user is None:
        return AdminLinkOutcome(problem)
    await c.execute("UPDATE admin_links SET used_at=$1 WHERE token_hash=$2", now, token_hash)
    await _insert_refresh(c, user.id, refresh)
    return AdminLinkOutcome(None, user)


async def _rotate(c: Conn, jti: str, user_id: str, now: int, new: NewRefreshToken) -> RotateResult:
    # One rotation (or revocation) per user at a time; see the module docstring.
    await c.execute("SELECT 1 FROM users WHERE id=$1 FOR NO KEY UPDATE", user_id)
    row = await c.fetchrow(
        "SELECT family, user_id, expires_at, rotated_at, revoked_at "
        "FROM refresh_tokens WHERE jti=$1 FOR UPDATE",
        jti,
    )
    outcome = rules.refresh_outcome(row, user_id, now)
    if row is not None and outcome is RefreshOutcome.reused:
        await c.execute(
            "UPDATE refresh_tokens SET revoked_at=$1 WHERE family=$2 AND revoked_at IS NULL",
            now,
            row["family"],
        )
    elif row is not None and outcome is RefreshOutcome.ok:
        await c.execute("UPDATE refresh_tokens SET rotated_at=$1 WHERE jti=$2", now, jti)
        await _insert_refresh(
            c, user_id, NewRefreshToken(new.jti, row["family"], new.issued_at, new.expires_at)
        )
    return rules.rotate_result(outcome, user_id)


async def _auth_stats(c: Conn) -> dict[str, int]:
    row = await c.fetchrow(
        "SELECT (SELECT COUNT(*) FROM users) AS users, "
        "(SELECT COUNT(*) FROM challenges) AS challenges, "
        "(SELECT COUNT(*) FROM refresh_tokens) AS refresh_tokens"
    )
    assert row is not None  # an aggregate without FROM always gives one row
    return {k: int(row[k]) for k in ("users", "challenges", "refresh_tokens")}


async def _usage(c: Conn, user_id: str, now: int) -> dict[str, Any]:
    # Heap rows carry exact block counters (0010 triggers); live sessions use their partial
    # index. One statement, one round trip.
    row = await c.fetchrow(
        "SELECT (SELECT COUNT(DISTINCT family) FROM refresh_tokens WHERE user_id=$1 "
        "AND rotated_at IS NULL AND revoked_at IS NULL AND expires_at > $2) AS sessions, "
        "COUNT(*) AS heaps, COALESCE(SUM(block_count), 0) AS blocks, "
        "COALESCE(SUM(block_bytes), 0) AS document_bytes FROM heaps WHERE owner_id=$1",
        user_id,
        now,
    )
    assert row is not None  # an aggregate without GROUP BY always gives one row
    return rules.usage(row["sessions"], row["heaps"], row["blocks"], row["document_bytes"])
