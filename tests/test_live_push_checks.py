"""A live edit commits without reading the heap or the tombstones first
(``services/live_push.py``): the commit checks the heap's owner and the block's row itself.
Here the database changes underneath the open document as another process would change it
(straight through storage: this process's cache and live rooms hear nothing), and the next
live edit must be refused all the same, on both engines, and store nothing."""

from __future__ import annotations

from typing import Any

import pytest

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.protocol import messages as m

from .live_client import UNCLOSED_SOCKETS, LiveClient, collect_closed_sockets, live_client  # noqa: F401 (autouse)
from .test_live_search import _body
from .test_sync import ClientBlock, new_heap, push

pytestmark = [pytest.mark.slow, *UNCLOSED_SOCKETS]


async def _sql(server: RunningServer, sqlite: str, postgres: str, *args: Any) -> None:
    """One statement, as another process would run it."""
    storage: Any = server.services.storage
    if storage.engine == "sqlite":
        await storage.rt.write(lambda c: c.execute(sqlite, args))
        return
    from heaper_trio.storage.postgres.runtime import tx

    async def run(c: Any) -> None:
        await c.execute(postgres, *args)

    await storage._run(tx, run)


async def _last_seq(server: RunningServer, block_id: str) -> int | None:
    stored = await server.services.storage.load_block(block_id)
    return None if stored is None else stored.last_seq


async def _edit(a: LiveClient, address: str, block: ClientBlock, text: str) -> m.Message:
    block.synced = block.doc.get_state()
    _body(block, text)
    await a.send(m.SyncUpdate(address, block.pending()))
    return await a.expect((m.SyncStatus, m.PermissionDenied))  # type: ignore[arg-type]


@pytest.mark.parametrize("change", ["heap_given_away", "heap_deleted", "block_purged"])
async def test_a_change_made_elsewhere_refuses_the_next_live_edit(
    admin: HeaperClient, eve: HeaperClient, server: RunningServer, change: str
) -> None:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Plans", "first draft")
    r = await push(admin, block.push_item(heap["id"]))
    assert r.json()["blocks"][0]["status"] == "created", r.text
    address = f"{heap['id']}:{block.id}:v1"
    async with live_client(server.url) as a:
        assert admin.access_token is not None
        await a.sync(address, admin.access_token)
        status = await _edit(a, address, block, "kept")
        assert isinstance(status, m.SyncStatus) and status.applied
        if change == "block_purged":  # trashed the ordinary way, purged "elsewhere"
            block.synced = block.doc.get_state()
            block.meta["deleted_at"] = 1_700_000_000_000
            r = await push(admin, block.push_item(heap["id"]))
            assert r.json()["blocks"][0]["status"] == "ok", r.text
            storage = server.services.storage
            assert await storage.purge_blocks(heap["id"], [block.id], 1) == [block.id]
        elif change == "heap_deleted":
            assert await server.services.storage.delete_heap(heap["id"])
        else:
            await _sql(
                server,
                "UPDATE heaps SET owner_id=? WHERE id=?",
                "UPDATE heaps SET owner_id=$1 WHERE id=$2",
                eve.user_id,
                heap["id"],
            )
        before = await _last_seq(server, block.id)
        answer = await _edit(a, address, block, "must not be stored")
        assert isinstance(answer, m.PermissionDenied), answer
        assert answer.reason == ("block_deleted" if change == "block_purged" else "heap_forbidden")
        assert await _last_seq(server, block.id) == before


async def test_a_live_edit_into_an_open_document_reads_nothing_ahead(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The point of the unchecked path: no heap and no tombstone read per live batch."""
    storage = server.services.storage
    reads: list[str] = []
    for name in ("get_heap", "tombstones", "load_block", "push_reads", "load_blocks"):
        real = getattr(storage, name)

        async def counted(*args: Any, _real: Any = real, _name: str = name) -> Any:
            reads.append(_name)
            return await _real(*args)

        monkeypatch.setattr(storage, name, counted)
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Plans", "first draft")
    r = await push(admin, block.push_item(heap["id"]))
    assert r.json()["blocks"][0]["status"] == "created", r.text
    address = f"{heap['id']}:{block.id}:v1"
    async with live_client(server.url) as a:
        assert admin.access_token is not None
        await a.sync(address, admin.access_token)
        reads.clear()
        for text in ("one", "two", "three"):
            status = await _edit(a, address, block, text)
            assert isinstance(status, m.SyncStatus) and status.applied
    assert reads == []
    after = await server.services.storage.load_block(block.id)
    assert after is not None and after.last_seq >= 4
    # rooms above LIVE_UNCHECKED_MAX_SUBS ask for the checked path: it reads first
    user = await server.services.storage.get_user(admin.user_id)  # type: ignore[arg-type]
    assert user is not None
    block.synced = block.doc.get_state()
    _body(block, "four")
    reads.clear()
    documents = server.services.documents
    args = (user, heap["id"], block.id, [block.pending()], 1, "origin")
    assert (await documents.push_live(*args, unchecked=False)).status == "ok"
    assert reads == ["push_reads"]  # heap owners and tombstones in one read
