"""What a push reads first, the heap owners and the blocks' tombstones, comes from
``Storage.push_reads`` in one read (one statement for every concurrent push on PostgreSQL) and
is read before the blocks' locks are held. Both engines."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.services.documents import DocumentService
from heaper_trio.services.sync_types import PushItemRequest
from heaper_trio.settings import Settings

from .test_push_group_commit import change, projection
from .test_storage import NOW, login, opened
from .test_sync import ClientBlock, new_heap, push


async def test_push_reads_answer_as_get_heap_and_tombstones(
    make_settings: Callable[..., Settings],
) -> None:
    """Alone or gathered with concurrent callers, each caller gets its own answer; on
    PostgreSQL ten concurrent callers share two statements (the first reads alone, the nine
    that came while it ran read together)."""
    async with opened(make_settings()) as storage:
        ann = (await login(storage, "pk-ann", auto_approve=True)).user  # type: ignore[union-attr]
        bob = (await login(storage, "pk-bob", auto_approve=True)).user  # type: ignore[union-attr]
        assert ann is not None and bob is not None
        service = DocumentService(storage, make_settings())
        heaps = [await service.create_heap(u, "h", None) for u in (ann, bob)]
        for k, heap in enumerate(heaps):
            await storage.commit_changes([change(heap, f"b{k}", None, projection("x", ""))], NOW)
            trash = change(heap, f"b{k}", 1, projection("x", "", deleted_at=NOW))
            await storage.commit_changes([trash], NOW)
            assert await storage.purge_blocks(heap.id, [f"b{k}"], NOW) == [f"b{k}"]
        ids = [h.id for h in heaps]
        roots = [h.root_block_id for h in heaps]
        asks = [
            (
                [ids[i % 2], "no-such-heap"],
                [f"b{i % 2}", "never", f"b{(i + 1) % 2}"][: 1 + i % 3],
                [roots[i % 2], "never"][: i % 3],
            )
            for i in range(10)
        ]
        expected = []
        for heap_ids, block_ids, load_ids in asks:
            owners = {}
            for h in heap_ids:
                found = await storage.get_heap(h)
                if found is not None:
                    owners[h] = found.owner_id
            loaded = {i: b for i in load_ids if (b := await storage.load_block(i)) is not None}
            expected.append((owners, await storage.tombstones(block_ids), loaded))
        assert expected[0][0] == {ids[0]: ann.id} and set(expected[0][1]) == {"b0"}
        assert set(expected[1][2]) == {roots[1]} and expected[0][2] == {}

        got: list[Any] = [None] * len(asks)

        async def ask(i: int) -> None:
            got[i] = await storage.push_reads(*asks[i])

        async with trio.open_nursery() as nursery:
            for i in range(len(asks)):
                nursery.start_soon(ask, i)
        assert got == expected
        if storage.engine == "postgres":
            group = storage._push_reads  # type: ignore[attr-defined]
            assert (group.jobs, group.batches) == (10, 2)
        many = [f"x{i}" for i in range(100)] + ["b1"]  # SQLite: a reader thread, not the loop
        gone = await storage.tombstones(["b1"])
        assert await storage.push_reads([ids[1]], many, []) == ({ids[1]: bob.id}, gone, {})


async def test_a_block_purged_after_the_first_read_is_answered_deleted(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tombstones are read before the locks: a push that finds the block gone for good
    when it gets them (another push purged it in between) is answered ``deleted``, as when
    the read came after, not ``conflict`` (its retries must read the tombstones again)."""
    heap = await new_heap(admin)
    block = ClientBlock("raced")
    block.write("Soon gone")
    assert (await push(admin, block.push_item(heap["id"]))).json()["blocks"][0]["status"] == (
        "created"
    )
    block.synced = block.doc.get_state()
    storage, documents = server.services.storage, server.services.documents
    owner = await storage.get_heap(heap["id"])
    user = await storage.get_user(owner.owner_id) if owner else None
    assert user is not None
    real = storage.push_reads
    purged: list[str] = []

    async def then_purge(*ids: list[str]) -> Any:
        read = await real(*ids)
        if not purged:  # another push, in between, sends the block away for good
            purged.append("raced")
            gone = ClientBlock("raced")
            gone.doc.apply_update(block.doc.get_update())
            gone.synced = gone.doc.get_state()
            gone.meta["permanently_deleted_at"] = int(time.time() * 1000)
            item = PushItemRequest("raced", heap["id"], gone.pending())
            [out] = await documents.push(user, [item])
            assert out.status == "ok"
        return read

    monkeypatch.setattr(storage, "push_reads", then_purge)
    documents.cache.evict("raced")  # the checked way: a cached block's push reads nothing ahead
    block.write(" edited")
    r = await push(admin, block.push_item(heap["id"]))
    assert r.status_code == 200, r.text
    answer = r.json()["blocks"][0]
    assert (answer["status"], answer.get("error")) == ("deleted", "block_deleted")
    assert purged and await storage.load_block("raced") is None


async def test_cold_blocks_of_one_push_load_in_one_read(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks the cache lacks are read with the push's first read (``push_reads``), not one
    round trip each, and answer as when read one by one; a block twice in the push still gets
    its own base each time. ``load_blocks`` answers as ``load_block`` does."""
    heap = await new_heap(admin)
    blocks = [ClientBlock(f"cold-{k}") for k in range(3)]
    for b in blocks:
        b.write(f"Note {b.id}")
    r = await push(admin, *[b.push_item(heap["id"]) for b in blocks])
    assert [x["status"] for x in r.json()["blocks"]] == ["created"] * 3
    storage, documents = server.services.storage, server.services.documents
    expected = {b.id: await storage.load_block(b.id) for b in blocks}
    assert await storage.load_blocks([*expected, "cold-0", "nothing"]) == expected
    for b in blocks:
        b.synced = b.doc.get_state()
        documents.cache.evict(b.id)  # as after a restart
        b.write(" more")
    asked: list[list[str]] = []
    one_by_one: list[str] = []
    real, real_one = storage.push_reads, storage.load_block

    async def spy(heap_ids: list[str], block_ids: list[str], load_ids: list[str]) -> Any:
        asked.append(list(load_ids))
        return await real(heap_ids, block_ids, load_ids)

    async def spy_one(block_id: str) -> Any:
        one_by_one.append(block_id)
        return await real_one(block_id)

    monkeypatch.setattr(storage, "push_reads", spy)
    monkeypatch.setattr(storage, "load_block", spy_one)
    fresh = ClientBlock("cold-new")
    fresh.write("New")
    items = [b.push_item(heap["id"]) for b in blocks]
    r = await push(admin, *items, fresh.push_item(heap["id"]), items[0])
    answers = [(x["status"], x["sync_version"]) for x in r.json()["blocks"]]
    assert answers == [("ok", 1)] * 3 + [("created", 1), ("ok", 1)]
    assert asked == [["cold-0", "cold-1", "cold-2", "cold-new"]] and one_by_one == []
    monkeypatch.undo()
    for b in blocks:
        stored = await storage.load_block(b.id)
        assert stored is not None and len(stored.updates) == 2
