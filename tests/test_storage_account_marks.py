"""``Storage.account_marks`` (what a revoke, a rejection or a demotion moves; the SQLite server
polls it for the command line's changes: ``services/live/account_watch``), and the last-admin
guard those changes pass through (``keep_an_admin``) with two transactions in flight."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
import trio
from trio_asyncio import aio_as_trio

from heaper_trio.services.container import open_storage
from heaper_trio.settings import Settings
from heaper_trio.storage import Storage
from heaper_trio.storage.errors import LastAdmin
from heaper_trio.storage.postgres import accounts as pg_accounts
from tests.test_storage import NOW, login, opened


async def test_account_marks_move_with_every_change_a_socket_must_hear(
    make_settings: Callable[..., Settings],
) -> None:
    async with opened(make_settings()) as storage:
        first = (await login(storage, "k" * 44)).user
        second = (await login(storage, "j" * 44)).user
        assert first is not None and second is not None
        marks = await storage.account_marks()
        assert marks == {
            first.id: (first.token_generation, "approved", True),
            second.id: (second.token_generation, "pending", False),
        }
        await storage.revoke_user_tokens(first.id, NOW)
        after = await storage.account_marks()
        assert after[first.id][0] == marks[first.id][0] + 1 and after[second.id] == marks[second.id]
        await storage.set_user_state(second.id, "rejected", NOW)
        await storage.set_admin(first.id, False)
        last = await storage.account_marks()
        assert last[second.id][1] == "rejected" and last[first.id][2] is False


async def test_the_guard_refuses_to_leave_no_admin_and_writes_nothing(
    make_settings: Callable[..., Settings],
) -> None:
    async with opened(make_settings()) as storage:
        x = (await login(storage, "x" * 44)).user
        y = (await login(storage, "y" * 44)).user
        assert x is not None and y is not None
        with pytest.raises(LastAdmin):
            await storage.set_admin(x.id, False, keep_an_admin=True)
        with pytest.raises(LastAdmin):
            await storage.set_user_state(x.id, "rejected", NOW, keep_an_admin=True)
        assert (await storage.account_marks())[x.id] == (x.token_generation, "approved", True)
        # A pending admin is no admin to keep; two approved ones, and one may go.
        await storage.set_admin(y.id, True)
        with pytest.raises(LastAdmin):
            await storage.set_admin(x.id, False, keep_an_admin=True)
        await storage.set_user_state(y.id, "approved", NOW)
        demoted = await storage.set_admin(x.id, False, keep_an_admin=True)
        assert demoted is not None and demoted.is_admin is False
        await storage.set_admin(x.id, True)
        rejected = await storage.set_user_state(y.id, "rejected", NOW, keep_an_admin=True)
        assert rejected is not None and rejected.state == "rejected"


@pytest.mark.engines("postgres")
async def test_two_processes_locking_the_admins_cannot_both_demote(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both transactions in flight at once, on two pools (two processes' storage): the first
    holds the admins' rows (``FOR UPDATE``) and is held there by a hook; the second waits on
    that lock in PostgreSQL, then reads the rows as the first left them and is refused. With
    a plain read instead of the lock, the second would read both admins and both would win."""
    settings = make_settings()
    real = pg_accounts._approved_admins
    holding, release = asyncio.Event(), asyncio.Event()

    async def held_first(c: Any) -> list[str]:
        ids = await real(c)
        if not holding.is_set():
            holding.set()
            await release.wait()
        return ids

    monkeypatch.setattr(pg_accounts, "_approved_admins", held_first)
    async with opened(settings) as a, open_storage(settings) as b:
        x = (await login(a, "x" * 44)).user
        y = (await login(a, "y" * 44)).user
        assert x is not None and y is not None
        await a.set_user_state(y.id, "approved", NOW)
        await a.set_admin(y.id, True)  # two approved admins
        outcomes: dict[str, str] = {}

        async def demote(storage: Storage, user_id: str, name: str) -> None:
            try:
                await storage.set_admin(user_id, False, keep_an_admin=True)
                outcomes[name] = "demoted"
            except LastAdmin:
                outcomes[name] = "last_admin"

        conn = await aio_as_trio(asyncpg.connect)(settings.database_url)
        try:
            async with trio.open_nursery() as n:
                n.start_soon(demote, a, y.id, "first")
                await aio_as_trio(holding.wait)()
                n.start_soon(demote, b, x.id, "second")
                # until the second waits on the first's row lock (or, without the lock,
                # has finished: then both win and the assertion below says so)
                sql = (
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type='Lock' AND datname=current_database()"
                )
                with trio.fail_after(10):
                    while "second" not in outcomes and not await aio_as_trio(conn.fetchval)(sql):
                        await trio.sleep(0.02)
                release.set()
        finally:
            await aio_as_trio(conn.close)()
        assert outcomes == {"first": "demoted", "second": "last_admin"}
        assert [u.id for u in await b.list_users() if u.is_admin] == [x.id]
