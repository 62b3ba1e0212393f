"""Block changes committed together (a group commit of concurrent pushes, a push of many
blocks) store exactly what committing them one at a time stores: on PostgreSQL that is
``storage/postgres/commit_batch.py`` (a statement per table) against ``commit_change`` (a
dozen statements per change); on SQLite the writer's one transaction. Both engines."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from heaper_trio.records import BlockChange, BlockProjection, BlockQuery, CommitResult, Heap
from heaper_trio.services.documents import DocumentService
from heaper_trio.settings import Settings
from heaper_trio.storage.base import Storage
from heaper_trio.storage.postgres import commit_batch

from .test_storage import NOW, login, opened


def projection(title: str, text: str, **kw: Any) -> BlockProjection:
    base: dict[str, Any] = {
        "type": "document",
        "title": title,
        "text": text,
        "relations": {},
        "files": {},
        "apps": {},
        "deleted_at": None,
        "permanently_deleted_at": None,
        "tags": (),
        "mentions": (),
        "links": (),
    }
    return BlockProjection(**{**base, **kw})


def change(
    heap: Heap, block: str, seq: int | None, p: BlockProjection, n: int = 1, **kw: Any
) -> BlockChange:
    updates = tuple(f"{block}:{seq}:{i}".encode() for i in range(n))
    return BlockChange(block, heap.id, heap.owner_id, seq, updates, p, b"\x01sv", 40, **kw)


async def history(storage: Storage, heap: Heap, prefix: str) -> None:
    """The same blocks in every heap: three notes, one with a longer log, one purged."""
    notes = [change(heap, f"{prefix}{k}", None, projection(f"Note {k}", "a\nb\nc")) for k in "1237"]
    long = change(heap, f"{prefix}5", None, projection("Long", "x"), n=3)
    for ch in [*notes, long]:
        await storage.commit_changes([ch], NOW)
    trash = change(heap, f"{prefix}3", 1, projection("Note 3", "", deleted_at=NOW))
    await storage.commit_changes([trash], NOW)
    assert await storage.purge_blocks(heap.id, [f"{prefix}3"], NOW) == [f"{prefix}3"]


def todo(heap: Heap, prefix: str, root_seq: int) -> list[BlockChange]:
    """An edit of every kind, refusals among them."""
    return [
        change(
            heap,
            f"{prefix}1",
            1,
            projection(
                "Note 1 renamed",
                "a\nB\nc\nd",
                relations={"tag-x": {"type": "tag"}},
                tags=("tag-x",),
                files={"f": {"hash": "ab" * 32}},
                file_hashes=("ab" * 32,),
            ),
        ),
        change(heap, f"{prefix}4", None, projection("Note 4", "new\nlines"), n=2),
        change(heap, f"{prefix}7", 7, projection("stale", "stale")),  # log moved on: conflict
        change(heap, f"{prefix}3", None, projection("again", "")),  # purged id: conflict
        change(heap, heap.root_block_id, root_seq, projection("Heap renamed", "")),
        change(heap, f"{prefix}2", 1, projection("Note 2", "a\nc", deleted_at=NOW + 5)),
        change(heap, f"{prefix}5", 3, projection("Long", "x\ny"), compacted=(b"snap", 4)),
        dataclasses.replace(change(heap, f"{prefix}6", None, projection("x", "")), heap_id="no"),
    ]


async def stored(storage: Storage, heap: Heap, prefix: str, results: list[CommitResult]) -> Any:
    """What a heap holds, with its own ids and times made relative."""
    first = min(r.updated_at for r in results if r.updated_at)
    ids = [f"{prefix}{k}" for k in "1245"] + [heap.root_block_id]
    records = await storage.get_blocks(ids)
    rows = {}
    for k, b in enumerate(ids):
        r = dataclasses.asdict(records[b])
        r.pop("id"), r.pop("heap_id")
        r["created_at"] -= first
        r["updated_at"] -= first
        loaded = await storage.load_block(b)
        assert loaded is not None
        root = int(b == heap.root_block_id)  # its first update: a random Yjs client id
        rows[k] = (
            r,
            await storage.related(b),
            loaded.snapshot,
            loaded.snapshot_seq,
            [u.split(b":", 1)[-1] for u in loaded.updates[root:]],
            [(u.seq, u.size) for u in (await storage.block_history(b))[1][root:]],
            await storage.file_hashes_of_heap(heap.id, [b]),
        )
    found = await storage.query_blocks(heap.id, BlockQuery(terms=("lines",)), 10)
    gone = await storage.query_blocks(heap.id, BlockQuery(terms=("b",)), 10)
    outcome = [
        (r.status, r.last_seq, r.sync_version, r.updated_at and r.updated_at - first)
        for r in results
    ]
    named = await storage.get_heap(heap.id)
    assert named is not None
    return outcome, rows, [f.id[len(prefix) :] for f in found], len(gone), named.name


async def test_changes_committed_together_store_what_one_by_one_stores(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    batched: list[int] = []  # PostgreSQL: the batch went the one-statement-per-table way
    real = commit_batch.commit_all

    async def spy(c: Any, changes: list[BlockChange], *args: Any) -> list[CommitResult]:
        batched.append(len(changes))
        return await real(c, changes, *args)

    monkeypatch.setattr(commit_batch, "commit_all", spy)
    settings = make_settings()
    async with opened(settings) as storage:
        user = (await login(storage, "pk-group", auto_approve=True)).user  # type: ignore[union-attr]
        service = DocumentService(storage, settings)
        one, together = [await service.create_heap(user, n, None) for n in ("heap a", "heap b")]
        out = []
        for heap, prefix in ((one, "a"), (together, "b")):
            await history(storage, heap, prefix)
            root = await storage.load_block(heap.root_block_id)
            assert root is not None
            changes = todo(heap, prefix, root.last_seq)
            # then note 1 loses the tag and file it just got: its rows must go
            again = change(heap, f"{prefix}1", 2, projection("Note 1 renamed", "a"))
            if heap is one:  # PostgreSQL: commit_change's dozen statements, one by one
                with monkeypatch.context() as m:
                    m.setattr(commit_batch, "batchable", lambda changes: False)
                    results = [(await storage.commit_changes([ch], NOW))[0] for ch in changes]
                    results += await storage.commit_changes([again], NOW)
            else:
                results = await storage.commit_changes(changes, NOW)
                results += await storage.commit_changes([again], NOW)
            out.append(await stored(storage, heap, prefix, results))
        assert out[0] == out[1]
        outcome, rows, found, gone, name = out[1]
        statuses = [s.value for s, *_ in outcome]
        assert statuses == [
            *("ok", "created", "conflict", "conflict", "ok", "ok", "ok", "conflict", "ok")
        ]
        ticks = [t for s, *_, t in outcome if s.value != "conflict"]
        assert ticks == [0, 1, 2, 3, 4, 5]  # one tick each, in the caller's order
        assert found == ["4"] and gone == 1 and name == "Heap renamed"
        assert (8 in batched) == (storage.engine == "postgres")
        assert rows[0][1]["tags"] == [] and rows[0][-1] == [] and rows[3][2:4] == (b"snap", 4)
