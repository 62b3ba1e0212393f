"""Admin links in storage (migration 0013), on both engines: a link signs in once, only
before it expires, only while its account is an approved admin; nothing changes otherwise;
purge_expired forgets it a day after its expiry."""

from __future__ import annotations

from collections.abc import Callable

import trio

from heaper_trio.records.admin_links import AdminLinkProblem
from heaper_trio.settings import Settings
from heaper_trio.storage.rules import ADMIN_LINK_KEPT_MS
from tests.test_storage import NOW, login, opened, refresh_row


async def test_an_admin_link_signs_in_once(make_settings: Callable[..., Settings]) -> None:
    async with opened(make_settings()) as storage:
        admin = (await login(storage, "key-admin")).user
        other = (await login(storage, "key-other")).user
        assert admin is not None and admin.is_admin and other is not None
        await storage.create_admin_link("h-ok", admin.id, NOW, NOW + 600_000)
        await storage.create_admin_link("h-old", admin.id, NOW, NOW + 10)
        await storage.create_admin_link("h-pending", other.id, NOW, NOW + 600_000)
        sessions = (await storage.usage(admin.id, NOW))["sessions"]

        out = await storage.use_admin_link("h-unknown", NOW + 1, refresh_row())
        assert (out.problem, out.user) == (AdminLinkProblem.unknown, None)
        out = await storage.use_admin_link("h-old", NOW + 10, refresh_row())
        assert out.problem is AdminLinkProblem.expired
        out = await storage.use_admin_link("h-pending", NOW + 1, refresh_row())
        assert out.problem is AdminLinkProblem.not_admin  # a pending account is no admin
        assert (await storage.usage(admin.id, NOW))["sessions"] == sessions  # nothing stored

        # Many tabs race for one link: exactly one signs in.
        outcomes = []

        async def use() -> None:
            outcomes.append(await storage.use_admin_link("h-ok", NOW + 1, refresh_row()))

        async with trio.open_nursery() as n:
            for _ in range(6):
                n.start_soon(use)
        winners = [o for o in outcomes if o.problem is None]
        assert len(winners) == 1 and winners[0].user is not None
        assert winners[0].user.id == admin.id
        assert {o.problem for o in outcomes} == {None, AdminLinkProblem.used}
        assert (await storage.usage(admin.id, NOW + 2))["sessions"] == sessions + 1

        # A link of an admin who lost the rights no longer works.
        await storage.create_admin_link("h-demoted", admin.id, NOW, NOW + 600_000)
        await storage.set_admin(admin.id, False)
        out = await storage.use_admin_link("h-demoted", NOW + 1, refresh_row())
        assert out.problem is AdminLinkProblem.not_admin

        # Kept a day past expiry (so "used"/"expired" can be told), then purged.
        await storage.purge_expired(NOW + 600_000)
        out = await storage.use_admin_link("h-ok", NOW + 2, refresh_row())
        assert out.problem is AdminLinkProblem.used
        await storage.purge_expired(NOW + 600_000 + ADMIN_LINK_KEPT_MS)
        out = await storage.use_admin_link("h-ok", NOW + 2, refresh_row())
        assert out.problem is AdminLinkProblem.unknown


async def test_user_row_changes_are_told_to_a_watcher(
    make_settings: Callable[..., Settings],
) -> None:
    """PostgreSQL tells of every user row change, made by whichever process (here: a second
    storage, as ``python -m heaper_trio users`` opens one); SQLite has one server process and
    tells nothing."""
    settings = make_settings()
    async with opened(settings) as storage:
        heard: list[str] = []
        storage.watch_user_rows(heard.append)
        user = (await login(storage, "key-watched")).user
        assert user is not None
        async with opened(settings) as other:
            await other.revoke_user_tokens(user.id, NOW + 1)
        if storage.engine == "postgres":
            with trio.fail_after(5):
                while user.id not in heard:
                    await trio.sleep(0.01)
        else:
            await trio.sleep(0.05)
            assert heard == []
