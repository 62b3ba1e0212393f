"""The stock ``@hocuspocus/provider`` (tests/live_node) and a live commit that fails: both
engines, the ``converge`` scenario (two providers typing into one block) while one commit of
their relayed edits raises, as a lost database does. The room goes back to storage and asks
its subscribers for what storage lacks (``room_resets``); the providers answer that
``SyncStep1`` as y-protocols does, so the edit is stored again and the HTTP pull equals both
documents. Before the fix the room kept the edit as if stored: the writer's reconnect was told
the server had it, and the pull lacked it."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.errors import Unavailable
from heaper_trio.services.live import connection as live_connection

from .test_live_node import Live, live, new_heap, node, pulled, without_sv  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.slow]


async def test_providers_store_an_edit_whose_relayed_commit_raised(
    admin: HeaperClient,
    server: RunningServer,
    live: Live,  # noqa: F811 (the fixture imported above)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(live_connection, "RELAY_BEFORE_COMMIT", True)
    storage = server.services.documents.storage
    commit, calls = storage.commit_changes, []

    async def fail_second(changes: Any, *rest: Any) -> Any:
        calls.append(len(changes))
        if len(calls) == 2:  # the block exists; an edit relayed to the other provider
            raise Unavailable("the database went away")
        return await commit(changes, *rest)

    heap, block = await new_heap(admin), str(uuid.uuid4())
    monkeypatch.setattr(storage, "commit_changes", fail_second)
    out = await live("converge", heap_id=heap, block_id=block)
    assert len(calls) > 2
    a, b = out["a"], out["b"]
    assert a == b
    assert without_sv(out["pulled"]) == without_sv(a)
    assert await pulled(admin, block) == without_sv(a)
