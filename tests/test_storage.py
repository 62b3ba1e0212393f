"""The storage contract, driven directly against both engines."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from heaper_trio.aio import open_asyncio_loop
from heaper_trio.records import ChallengeProblem, LoginOutcome, NewRefreshToken, RefreshOutcome
from heaper_trio.services.container import open_storage
from heaper_trio.settings import Settings
from heaper_trio.storage import Storage, database_exists
from heaper_trio.storage.migrate import migration_scripts

NOW = 1_700_000_000_000


@asynccontextmanager
async def opened(settings: Settings) -> AsyncIterator[Storage]:
    settings.data_path.mkdir(parents=True, exist_ok=True)
    async with open_asyncio_loop(), open_storage(settings) as storage:
        yield storage


def refresh_row() -> NewRefreshToken:
    return NewRefreshToken(uuid.uuid4().hex, uuid.uuid4().hex, NOW, NOW + 3_600_000)


async def login(
    storage: Storage, key: str, challenge: str | None = None, auto_approve: bool = False
) -> LoginOutcome:
    challenge = challenge or f"c-{uuid.uuid4().hex}"
    await storage.create_challenge(challenge, key, NOW, NOW + 60_000)
    return await storage.complete_login(
        challenge=challenge,
        public_key=key,
        now=NOW + 1,
        new_user_id=uuid.uuid4().hex,
        email=None,
        auto_approve=auto_approve,
        refresh=refresh_row(),
    )


async def test_migrations_are_idempotent(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    for _ in range(2):
        async with opened(settings) as storage:
            assert await storage.schema_version() == migration_scripts(storage.engine)[-1][0]
            assert await storage.claim_meta("k", "first") == "first"
            assert await storage.claim_meta("k", "second") == "first"


async def test_exactly_one_first_admin_under_concurrency(
    make_settings: Callable[..., Settings],
) -> None:
    async with opened(make_settings()) as storage:
        async with trio.open_nursery() as n:
            for i in range(12):
                n.start_soon(login, storage, f"key-{i}")
        users = await storage.list_users()
        assert len(users) == 12
        assert sum(u.is_admin for u in users) == 1
        assert [u.state for u in users if u.is_admin] == ["approved"]
        assert sorted(u.state for u in users if not u.is_admin) == ["pending"] * 11


async def test_a_challenge_completes_one_login_only(make_settings: Callable[..., Settings]) -> None:
    async with opened(make_settings()) as storage:
        await storage.create_challenge("shared", "key-a", NOW, NOW + 60_000)
        problems = []

        async def attempt() -> None:
            out = await storage.complete_login(
                challenge="shared",
                public_key="key-a",
                now=NOW + 1,
                new_user_id=uuid.uuid4().hex,
                email=None,
                auto_approve=True,
                refresh=refresh_row(),
            )
            problems.append(out.problem)

        async with trio.open_nursery() as n:
            for _ in range(6):
                n.start_soon(attempt)
        assert problems.count(None) == 1
        assert problems.count(ChallengeProblem.used) == 5
        assert (await storage.auth_stats())["users"] == 1


async def test_rotation_and_reuse(make_settings: Callable[..., Settings]) -> None:
    async with opened(make_settings()) as storage:
        first = refresh_row()
        await storage.create_challenge("c1", "k", NOW, NOW + 60_000)
        out = await storage.complete_login(
            challenge="c1",
            public_key="k",
            now=NOW,
            new_user_id="u1",
            email="a@b",
            auto_approve=False,
            refresh=first,
        )
        assert out.token_issued and out.created
        second = refresh_row()
        ok = await storage.rotate_refresh_token(jti=first.jti, user_id="u1", now=NOW, new=second)
        assert ok.outcome is RefreshOutcome.ok
        wrong_user = await storage.rotate_refresh_token(
            jti=second.jti, user_id="u2", now=NOW, new=refresh_row()
        )
        assert wrong_user.outcome is RefreshOutcome.unknown
        replay = await storage.rotate_refresh_token(
            jti=first.jti, user_id="u1", now=NOW, new=refresh_row()
        )
        assert replay.outcome is RefreshOutcome.reused
        after = await storage.rotate_refresh_token(
            jti=second.jti, user_id="u1", now=NOW, new=refresh_row()
        )
        assert after.outcome is RefreshOutcome.revoked
        assert (await storage.usage("u1", NOW))["sessions"] == 0


async def test_purge_removes_only_expired_rows(make_settings: Callable[..., Settings]) -> None:
    async with opened(make_settings()) as storage:
        await login(storage, "k")
        await storage.create_challenge("late", "k", NOW, NOW + 10_000_000)
        before = await storage.auth_stats()
        assert await storage.purge_expired(NOW + 120_000) == 1  # the used login challenge
        assert (await storage.auth_stats())["challenges"] == before["challenges"] - 1
        assert (await storage.auth_stats())["refresh_tokens"] == 1


async def test_cancelled_calls_leave_storage_usable(make_settings: Callable[..., Settings]) -> None:
    async with opened(make_settings()) as storage:
        for i in range(30):
            with trio.move_on_after(0.0005 * (i % 6)):
                await login(storage, f"key-{i}")
        with trio.fail_after(10):
            await storage.ping()
            stats = await storage.auth_stats()
        # Every login either happened completely or not at all: no user without its challenge
        # marked used, no token without its user.
        assert stats["refresh_tokens"] <= stats["users"] <= stats["challenges"]


@pytest.mark.engines("sqlite")
async def test_sqlite_a_queued_write_is_waited_for_through_a_cancel(
    engine: str, make_settings: Callable[..., Settings]
) -> None:
    """A write cannot be abandoned once queued: a cancel while the writer runs it waits for
    the commit, the caller gets the result, and the cancel lands at its next checkpoint."""
    import time

    def slow(conn: sqlite3.Connection) -> str:
        time.sleep(0.2)  # in the writer thread: the caller is cancelled meanwhile
        conn.execute(
            "INSERT INTO challenges (challenge, public_key, created_at, expires_at) "
            "VALUES ('slow', 'k', 0, 1)"
        )
        return "stored"

    async with opened(make_settings()) as storage:
        rt = storage.rt  # type: ignore[attr-defined]
        got = []
        with trio.CancelScope() as scope:
            scope.deadline = trio.current_time() + 0.05
            got.append(await rt.write(slow))
            await trio.lowlevel.checkpoint()
            got.append("not cancelled")
        assert got == ["stored"] and scope.cancelled_caught
        assert (await storage.auth_stats())["challenges"] == 1


@pytest.mark.engines("sqlite")
async def test_sqlite_a_write_is_queued_and_waited_for_under_ki_protection(
    engine: str, make_settings: Callable[..., Settings]
) -> None:
    """A KeyboardInterrupt between queuing a write and parking for its reply would leave a
    job whose reply wakes a task that is gone or waits for something else: the queuing
    happens where trio defers a KeyboardInterrupt to the next checkpoint."""
    async with opened(make_settings()) as storage:
        rt = storage.rt  # type: ignore[attr-defined]
        jobs, seen = rt._jobs, []

        class Watched:
            def put(self, job: object) -> None:
                seen.append(trio.lowlevel.currently_ki_protected())
                jobs.put(job)

            def __getattr__(self, name: str) -> Any:
                return getattr(jobs, name)

        rt._jobs = Watched()
        try:
            assert await rt.write(lambda conn: "done") == "done"
        finally:
            rt._jobs = jobs
        assert seen == [True]


@pytest.mark.engines("sqlite")
async def test_sqlite_groups_concurrent_writes_into_few_commits(
    engine: str, make_settings: Callable[..., Settings]
) -> None:
    async with opened(make_settings()) as storage:
        rt = storage.rt  # type: ignore[attr-defined]
        commits_before = rt.commits
        async with trio.open_nursery() as n:
            for i in range(200):
                n.start_soon(storage.create_challenge, f"c{i}", "k", NOW, NOW + 1)
        assert (await storage.auth_stats())["challenges"] == 200
        assert rt.commits - commits_before < 100  # typically a handful


@pytest.mark.engines("sqlite")
async def test_sqlite_failed_job_rolls_back_alone(
    engine: str, make_settings: Callable[..., Settings]
) -> None:
    async with opened(make_settings()) as storage:

        async def dup() -> None:
            with pytest.raises(sqlite3.IntegrityError):
                await storage.create_challenge("same", "k", NOW, NOW + 1)

        await storage.create_challenge("same", "k", NOW, NOW + 1)
        async with trio.open_nursery() as n:
            n.start_soon(dup)
            for i in range(20):
                n.start_soon(storage.create_challenge, f"ok{i}", "k", NOW, NOW + 1)
        assert (await storage.auth_stats())["challenges"] == 21


@pytest.mark.engines("sqlite")
async def test_sqlite_operational_errors_become_unavailable(
    engine: str, make_settings: Callable[..., Settings]
) -> None:
    import sqlite3

    from heaper_trio.errors import Unavailable

    def disk_trouble(conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    async with opened(make_settings()) as storage:
        rt = storage.rt  # type: ignore[attr-defined]
        for call in (rt.write, rt.read):
            with pytest.raises(Unavailable) as e:
                await call(disk_trouble)
            assert e.value.status == 503
        await storage.ping()  # and it still works afterwards


@pytest.mark.engines("postgres")
async def test_postgres_connection_loss_is_unavailable_then_recovers(
    engine: str, make_settings: Callable[..., Settings], database_url: str
) -> None:
    import subprocess
    from urllib.parse import urlsplit

    from heaper_trio.errors import Unavailable

    dbname = urlsplit(database_url).path.lstrip("/")
    async with opened(make_settings(pg_pool_min=2, pg_pool_max=2)) as storage:
        await storage.ping()
        subprocess.run(
            [
                "psql",
                "-q",
                database_url,
                "-c",
                (
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{dbname}' AND pid <> pg_backend_pid()"
                ),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        outcomes = []
        for _ in range(4):
            try:
                await storage.ping()
                outcomes.append("ok")
            except Unavailable as e:
                assert e.status == 503 and e.code == "database_unavailable"
                outcomes.append("unavailable")
        assert outcomes[-1] == "ok", outcomes  # the pool reconnects by itself


async def test_challenge_problems_and_pending_accounts(
    make_settings: Callable[..., Settings],
) -> None:
    async with opened(make_settings()) as storage:
        assert (await login(storage, "admin")).problem is None

        async def attempt(challenge: str, key: str, now: int) -> ChallengeProblem | None:
            out = await storage.complete_login(
                challenge=challenge,
                public_key=key,
                now=now,
                new_user_id=uuid.uuid4().hex,
                email="p@x",
                auto_approve=False,
                refresh=refresh_row(),
            )
            return out.problem

        await storage.create_challenge("c", "key-b", NOW, NOW + 10)
        assert await attempt("missing", "key-b", NOW) is ChallengeProblem.unknown
        assert await attempt("c", "key-other", NOW) is ChallengeProblem.foreign
        assert await attempt("c", "key-b", NOW + 10) is ChallengeProblem.expired
        stats = await storage.auth_stats()
        assert (stats["users"], stats["refresh_tokens"]) == (1, 1)  # refusals change nothing
        pending = await login(storage, "key-b")
        assert pending.problem is None and pending.created and not pending.token_issued
        user = await storage.get_user_by_key("key-b")
        assert user is not None and (user.state, user.is_admin, user.approved_at) == (
            "pending",
            False,
            None,
        )
        assert await storage.get_user(user.id) == user
        assert await storage.get_user("nobody") is None
        assert await storage.get_user_by_key("nobody") is None
        again = await login(storage, "key-b")  # the same key: the same account, not created
        assert not again.created and again.user == user


async def test_account_administration(make_settings: Callable[..., Settings]) -> None:
    async with opened(make_settings()) as storage:
        assert await storage.get_meta("instance") is None
        await storage.claim_meta("instance", "one")
        assert await storage.get_meta("instance") == "one"
        await login(storage, "admin")
        await login(storage, "key-b")
        user = await storage.get_user_by_key("key-b")
        assert user is not None

        approved = await storage.set_user_state(user.id, "approved", NOW + 5)
        assert approved is not None and (approved.state, approved.approved_at) == (
            "approved",
            NOW + 5,
        )
        token = refresh_row()
        await storage.create_challenge("c2", "key-b", NOW, NOW + 60_000)
        out = await storage.complete_login(
            challenge="c2",
            public_key="key-b",
            now=NOW,
            new_user_id="unused",
            email=None,
            auto_approve=False,
            refresh=token,
        )
        assert out.token_issued and (await storage.usage(user.id, NOW))["sessions"] == 1
        expired = await storage.rotate_refresh_token(
            jti=token.jti, user_id=user.id, now=token.expires_at, new=refresh_row()
        )
        assert expired.outcome is RefreshOutcome.expired

        admin = await storage.set_admin(user.id, True)
        assert admin is not None and admin.is_admin
        revoked = await storage.revoke_user_tokens(user.id, NOW)
        assert revoked is not None
        assert revoked.token_generation == approved.token_generation + 1
        assert (
            await storage.rotate_refresh_token(
                jti=token.jti, user_id=user.id, now=NOW, new=refresh_row()
            )
        ).outcome is (RefreshOutcome.revoked)
        rejected = await storage.set_user_state(user.id, "rejected", NOW + 9)
        assert rejected is not None and rejected.state == "rejected"
        assert rejected.approved_at == NOW + 5  # kept: when it was approved
        assert rejected.token_generation == revoked.token_generation + 1
        for missing in (
            storage.set_admin("nobody", True),
            storage.set_user_state("nobody", "approved", NOW),
            storage.revoke_user_tokens("nobody", NOW),
        ):
            assert await missing is None
        assert [u.is_admin for u in await storage.list_users()] == [True, True]


async def test_database_exists_only_once_opened(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    assert database_exists(settings) is bool(settings.database_url)  # PostgreSQL: always
    async with opened(settings):
        pass
    assert database_exists(settings)
