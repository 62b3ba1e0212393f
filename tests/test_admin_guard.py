"""The last-admin guard holds across processes: it is checked in the transaction that writes
(``keep_an_admin``), not by a read before it, so two servers on one PostgreSQL database (or the
command line beside a server) demoting the last two admins at once leave one."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient

from .conftest import StartServer, assert_error

ACTION = "/api/admin/users/{}/{}"


@pytest.mark.engines("postgres")  # two processes share only a PostgreSQL database
async def test_two_servers_demoting_the_last_two_admins_at_once_leave_one(
    server: RunningServer,
    start_server: StartServer,
    admin: HeaperClient,
    eve: HeaperClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = await start_server()  # a second server process's state on the same database
    await server.services.admin.make_admin(eve.public_key)
    async with HeaperClient(other.url, eve.key) as eve_on_b:
        await eve_on_b.login()
        # The hook: on server A, the demotion of eve has passed every check made before
        # writing and waits there while server B demotes admin, start to finish.
        storage_a = server.services.admin.storage
        set_admin = storage_a.set_admin
        at_the_write, go_on = trio.Event(), trio.Event()

        async def paused(*args: Any, **kw: Any) -> Any:
            at_the_write.set()
            await go_on.wait()
            return await set_admin(*args, **kw)

        monkeypatch.setattr(storage_a, "set_admin", paused)
        answers: dict[str, Any] = {}

        async def on_a() -> None:
            answers["a"] = await admin.post(ACTION.format(eve.user_id, "remove_admin"))

        async with trio.open_nursery() as n:
            n.start_soon(on_a)
            with trio.fail_after(10):
                await at_the_write.wait()
            answers["b"] = await eve_on_b.post(ACTION.format(admin.user_id, "remove_admin"))
            go_on.set()
    assert answers["b"].status_code == 200, answers["b"].text
    assert_error(answers["a"], 409, "last_admin")
    admins = [u.id for u in await other.services.storage.list_users() if u.is_admin]
    assert admins == [eve.user_id]
