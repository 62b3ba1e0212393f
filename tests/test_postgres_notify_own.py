"""A PostgreSQL server process drops its own live announcements as they arrive
(``notify.own_prefixes``): the bridge skipped them after decoding them, two per pushed update.
Both spellings are dropped, the compact JSON of ``announce.encode`` and ``json_build_object``'s
of the one-call group commit; another process's announcements still arrive."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest
import trio

from heaper_trio.protocol import announce
from heaper_trio.records import CommitStatus
from heaper_trio.services.documents import DocumentService
from heaper_trio.settings import Settings
from heaper_trio.storage.postgres import notify, push_commit
from heaper_trio.storage.postgres.runtime import write1

from .test_push_group_commit import change, projection
from .test_storage import NOW, login, opened


async def test_a_process_hears_others_but_not_itself(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings()
    async with opened(settings) as storage:
        if storage.engine != "postgres":
            pytest.skip("PostgreSQL's LISTEN/NOTIFY")
        calls: list[int] = []
        real = push_commit.commit_in_one

        async def counted(*a: object) -> object:
            calls.append(1)
            return await real(*a)  # type: ignore[arg-type]

        monkeypatch.setattr(push_commit, "commit_in_one", counted)
        heard: list[str] = []
        storage.announce_commits_as("me")  # type: ignore[attr-defined]
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(storage.listen, heard.append))  # type: ignore[attr-defined]
            user = (await login(storage, "pk-own", auto_approve=True)).user  # type: ignore[union-attr]
            heap = await DocumentService(storage, settings).create_heap(user, "h", None)
            [r] = await storage.commit_changes([change(heap, "n", None, projection("T", "a"))], NOW)
            assert r.status is CommitStatus.created
            [r] = await storage.commit_changes([change(heap, "n", 1, projection("T", "b"))], NOW)
            assert r.status is CommitStatus.ok and calls == [1]  # the one call announced it
            other = notify.block_pointer("other", "changed", heap.id, "n", 2, 1, NOW)

            async def send(c: object) -> None:
                await c.execute("SELECT pg_notify($1, $2)", notify.CHANNEL, other)  # type: ignore[attr-defined]

            await storage._run(write1, send)  # type: ignore[attr-defined]
            with trio.fail_after(5):
                while not heard:
                    await trio.sleep(0.01)
            await trio.sleep(0.2)  # anything else announced arrives meanwhile
            nursery.cancel_scope.cancel()
        assert [announce.decode(h).origin for h in heard] == ["other"]


def test_own_prefixes_match_both_spellings() -> None:
    a = announce.BlockAnnouncement('o"1', "changed", "h", "b", 2, 1, 3)
    assert announce.encode(a).startswith(notify.own_prefixes('o"1'))
    spaced = '{"o" : "o\\"1", "k" : "changed"}'  # as json_build_object writes it
    assert spaced.startswith(notify.own_prefixes('o"1'))
    assert not announce.encode(a).startswith(notify.own_prefixes("o"))
    assert notify.own_prefixes(None) == ()
