"""``Storage.account_marks``: what a revoke, a rejection or a demotion moves, on both engines
(the SQLite server polls it for the command line's changes: ``services/live/account_watch``)."""

from __future__ import annotations

from collections.abc import Callable

from heaper_trio.settings import Settings
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
