"""Search rows of live edits (``services/search_catchup.py``), over real sockets on both engines:
a live commit leaves its block's search rows for later (SQLite marks it in the same
transaction), and a search, the background catch-up, a later HTTP push or the next start
writes them; nothing a live client typed is missing from search afterwards."""

from __future__ import annotations

from functools import partial
from typing import Any

import pycrdt
import pytest
import trio

from heaper_trio.app import RunningServer, run_server
from heaper_trio.client import HeaperClient, KeyPair
from heaper_trio.protocol import messages as m

from .live_client import UNCLOSED_SOCKETS, collect_closed_sockets, live_client  # noqa: F401 (autouse)
from .test_query import ids
from .test_sync import ClientBlock, new_heap, push

pytestmark = [pytest.mark.slow, *UNCLOSED_SOCKETS]


def _body(block: ClientBlock, text: str) -> None:
    """Replace the block's body with one paragraph of ``text``."""
    with block.doc.transaction():
        while len(block.content.children):
            del block.content.children[0]
        p = pycrdt.XmlElement("paragraph")
        block.content.children.append(p)
        p.children.append(pycrdt.XmlText(text))


async def _marked(server: RunningServer) -> int:
    """Blocks waiting for the catch-up (SQLite's mark; PostgreSQL indexes at once: 0)."""
    storage = server.services.storage
    if storage.engine != "sqlite":
        return 0
    return int(
        await storage.rt.read(  # type: ignore[attr-defined]
            lambda c: c.execute("SELECT COUNT(*) FROM block_lines_todo").fetchone()[0]
        )
    )


async def _live_edit(
    server: RunningServer, client: HeaperClient, heap_id: str, block: ClientBlock, text: str
) -> None:
    """Type ``text`` as the block's body over ``/ws``; back once the server acknowledged it."""
    address = f"{heap_id}:{block.id}:v1"
    async with live_client(server.url) as a:
        assert client.access_token is not None
        await a.sync(address, client.access_token)
        block.synced = block.doc.get_state()
        _body(block, text)
        await a.send(m.SyncUpdate(address, block.pending()))
        assert (await a.expect(m.SyncStatus)).applied


async def _found(client: HeaperClient, heap: dict[str, Any], block: ClientBlock, q: str) -> bool:
    return block.id in await ids(client, heap, query=q)


async def _created(client: HeaperClient, heap: dict[str, Any], title: str) -> ClientBlock:
    block = ClientBlock()
    block.write(title, "first draft")
    r = await push(client, block.push_item(heap["id"]))
    assert r.json()["blocks"][0]["status"] == "created", r.text
    return block


async def test_a_search_finds_a_live_edit_at_once(
    admin: HeaperClient, server: RunningServer
) -> None:
    """The edit is only marked in its commit (SQLite); the search catches up first."""
    server.services.query.catchup.delay_s = 3600  # type: ignore[union-attr]  # no background run
    heap = await new_heap(admin)
    block = await _created(admin, heap, "Plans")
    await _live_edit(server, admin, heap["id"], block, "zebra crossing")
    if server.services.storage.engine == "sqlite":
        assert await _marked(server) == 1  # left for later, durably
    assert await _found(admin, heap, block, "zebra")
    assert not await _found(admin, heap, block, "draft")
    assert await _marked(server) == 0
    await _live_edit(server, admin, heap["id"], block, "yak shaving")  # counting catches up too
    count = await admin.post("/api/heap_count", json={"heap_id": heap["id"], "query": "yak"})
    assert count.json()["count"] == 1, count.text


@pytest.mark.serial
async def test_the_background_catch_up_writes_the_rows(
    admin: HeaperClient, server: RunningServer
) -> None:
    catchup = server.services.query.catchup
    assert catchup is not None
    catchup.delay_s = 0.05
    heap = await new_heap(admin)
    block = await _created(admin, heap, "Plans")
    await _live_edit(server, admin, heap["id"], block, "okapi sighting")
    with trio.fail_after(5):
        while await _marked(server) or catchup.pending:
            await trio.sleep(0.02)
    catchup.pending = False  # a search must not need to catch up now
    assert await _found(admin, heap, block, "okapi")


async def test_an_http_push_after_a_live_edit_rebuilds_the_rows(
    admin: HeaperClient, server: RunningServer
) -> None:
    """Rows left stale by a live edit no longer match the stored text, so a push that indexes
    at once rebuilds them whole: no word of the draft, of the live edit or of the push lingers
    or goes missing."""
    catchup = server.services.query.catchup
    assert catchup is not None
    catchup.delay_s = 3600
    heap = await new_heap(admin)
    block = await _created(admin, heap, "Plans")
    await _live_edit(server, admin, heap["id"], block, "walrus ahead")
    block.synced = block.doc.get_state()
    _body(block, "penguin parade")
    r = await push(admin, block.push_item(heap["id"]))
    assert r.json()["blocks"][0]["status"] == "ok", r.text
    assert await _marked(server) == 0
    catchup.pending = False  # what the search sees is what the push wrote
    assert await _found(admin, heap, block, "penguin")
    assert not await _found(admin, heap, block, "walrus")
    assert not await _found(admin, heap, block, "draft")
    assert await _found(admin, heap, block, "plans")


async def test_marks_left_by_a_stop_are_indexed_at_the_next_start(
    make_settings: Any, start_server: Any
) -> None:
    """A stop (or a crash) before the catch-up leaves the marks committed; the next start
    indexes the marked blocks before it serves."""
    key = KeyPair.generate()
    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        first = await nursery.start(partial(run_server, make_settings(), shutdown=stop))
        first.services.query.catchup.delay_s = 3600
        async with HeaperClient(first.url, key) as client:
            await client.login()
            heap = await new_heap(client)
            block = await _created(client, heap, "Plans")
            await _live_edit(first, client, heap["id"], block, "narwhal tusk")
        if first.services.storage.engine == "sqlite":
            assert await _marked(first) == 1
        stop.set()
    second = await start_server()
    second.services.query.catchup.pending = False  # only the start may have indexed it
    async with HeaperClient(second.url, key) as client:
        await client.login()
        assert await _found(client, heap, block, "narwhal")


async def test_a_failed_catch_up_does_not_fail_the_search(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    catchup = server.services.query.catchup
    assert catchup is not None
    catchup.delay_s = 3600
    heap = await new_heap(admin)
    block = await _created(admin, heap, "Plans")
    await _live_edit(server, admin, heap["id"], block, "ibex")

    async def broken() -> int:
        raise OSError("disk full")

    monkeypatch.setattr(server.services.storage, "reindex_marked", broken)
    found = await ids(admin, heap, query="plans")  # answered from the rows as they are
    assert block.id in found
    assert catchup.pending  # the marks stay for the next try
    monkeypatch.undo()
    assert await _found(admin, heap, block, "ibex")


async def test_the_catch_up_of_a_big_text_reads_its_pieces(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A text stored in pieces (``storage/text_pieces``) has an empty ``blocks.text``: the
    catch-up must index the joined pieces, or a live edit of a big block vanishes from search."""
    from heaper_trio.storage import text_pieces

    monkeypatch.setattr(text_pieces, "BIG_TEXT", 2000)
    monkeypatch.setattr(text_pieces, "PIECE", 200)
    server.services.query.catchup.delay_s = 3600  # type: ignore[union-attr]  # no background run
    heap = await new_heap(admin)
    block = await _created(admin, heap, "Plans")
    filler = " ".join(f"word{i}" for i in range(800))  # ~6,900 characters: in pieces
    await _live_edit(server, admin, heap["id"], block, f"{filler} quokka {filler}")
    if server.services.storage.engine == "sqlite":
        assert await _marked(server) == 1
    assert await _found(admin, heap, block, "quokka")
    assert await _found(admin, heap, block, "word799")


@pytest.mark.engines("sqlite")
async def test_a_search_during_the_background_catch_up_finds_the_live_edit(
    admin: HeaperClient, server: RunningServer
) -> None:
    catchup: Any = server.services.query.catchup
    storage: Any = server.services.storage
    catchup.delay_s = 0.01
    original = storage.reindex_marked
    entered, release = trio.Event(), trio.Event()

    async def slow_reindex() -> int:  # the write queued behind others in the writer
        entered.set()
        await release.wait()
        return int(await original())

    storage.reindex_marked = slow_reindex
    try:
        heap = await new_heap(admin)
        block = await _created(admin, heap, "Plans")
        await _live_edit(server, admin, heap["id"], block, "zebra crossing")
        with trio.fail_after(5):
            await entered.wait()  # the background catch-up is under way

        async def release_soon() -> None:  # the queued write gets its turn a moment later
            await trio.sleep(0.3)
            release.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(release_soon)
            with trio.fail_after(5):
                found = await _found(admin, heap, block, "zebra")
        assert found, "a search right after a live edit here missed it"
    finally:
        release.set()
        storage.reindex_marked = original


@pytest.mark.engines("sqlite")
async def test_a_live_edit_of_a_long_text_is_indexed_in_its_commit(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``LATER_MAX_CHARS`` the commit indexes the changed lines itself: the catch-up's
    whole rebuild of a long text held the writer for a second (review)."""
    from heaper_trio.storage.sqlite import documents

    monkeypatch.setattr(documents, "LATER_MAX_CHARS", 100)
    catchup: Any = server.services.query.catchup
    catchup.delay_s = 3600  # no background run
    heap = await new_heap(admin)
    block = await _created(admin, heap, "Plans")
    await _live_edit(server, admin, heap["id"], block, "short edit")
    assert await _marked(server) == 1  # short: left for later
    await _live_edit(server, admin, heap["id"], block, "word " * 40 + "capybara")
    assert await _marked(server) == 0  # long: the commit rebuilt the stale rows itself
    catchup.pending = False  # the search must not need a catch-up
    assert await _found(admin, heap, block, "capybara")
    assert not await _found(admin, heap, block, "short")
