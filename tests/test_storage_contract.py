"""The storage contract for heaps, blocks, files, uploads and scans, on both engines.

Direct calls, no server: each test opens one storage (a fresh database for PostgreSQL) and
drives a group of interface methods through their rules, so both engines must answer alike.
``test_every_interface_method_is_driven`` keeps the suite honest as the interface grows.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from heaper_trio.records import (
    BlockChange,
    BlockProjection,
    BlockQuery,
    CommitStatus,
    FileRecord,
    Heap,
    ScanBatch,
    ScanEntry,
    UploadRecord,
)
from heaper_trio.settings import Settings
from heaper_trio.storage import Storage
from heaper_trio.storage.errors import BlockInOtherHeap, HeapNotFound, StorageSignal
from tests.test_storage import NOW, opened, refresh_row

H1, H2 = "a" * 64, "b" * 64  # content hashes


def change(
    block_id: str,
    heap_id: str,
    *,
    expected: int | None = None,
    updates: tuple[bytes, ...] = (b"u",),
    title: str = "",
    text: str = "",
    type: str = "note",
    tags: tuple[str, ...] = (),
    mentions: tuple[str, ...] = (),
    links: tuple[str, ...] = (),
    deleted_at: int | None = None,
    gone_at: int | None = None,  # permanently_deleted_at
    hashes: tuple[str, ...] = (),
    compacted: tuple[bytes, int] | None = None,
) -> BlockChange:
    files = {f"{h}:1": {"file_size": 10} for h in hashes}
    projection = BlockProjection(
        type, title, text, {}, files, {}, deleted_at, gone_at, tags, mentions, links, hashes
    )
    return BlockChange(
        block_id,
        heap_id,
        "u1",
        expected,
        updates,
        projection,
        b"\x00",
        sum(map(len, updates)),
        compacted,
    )


async def add_users(storage: Storage) -> None:
    """Accounts u1 and u2 (heaps, grants and uploads name their owner)."""
    for user_id in ("u1", "u2"):
        await storage.create_challenge(f"c-{user_id}", f"key-{user_id}", NOW, NOW + 60_000)
        out = await storage.complete_login(
            challenge=f"c-{user_id}",
            public_key=f"key-{user_id}",
            now=NOW,
            new_user_id=user_id,
            email=None,
            auto_approve=True,
            refresh=refresh_row(),
        )
        assert out.created


async def new_heap(storage: Storage, heap_id: str, owner: str = "u1") -> Heap:
    heap = Heap(heap_id, owner, "", f"{heap_id}-root", NOW, 0)
    assert await storage.create_heap(heap, change(heap.root_block_id, heap_id, title=heap_id), NOW)
    return heap


def test_signals_are_not_lookup_errors() -> None:
    """A handler for them must never swallow a KeyError from a bug."""
    for signal in (StorageSignal, HeapNotFound, BlockInOtherHeap):
        assert not issubclass(signal, LookupError)
    assert str(BlockInOtherHeap()) == "block_in_other_heap"


async def test_heaps_and_block_commits(make_settings: Callable[..., Settings]) -> None:
    async with opened(make_settings()) as storage:
        await add_users(storage)
        heap = await new_heap(storage, "h1")
        assert not await storage.create_heap(heap, change("other", "h1"), NOW)  # heap id taken
        taken_root = Heap("h2", "u1", "", "h1-root", NOW, 0)
        assert not await storage.create_heap(taken_root, change("h1-root", "h2"), NOW)
        stored = await storage.get_heap("h1")
        assert stored is not None and stored.name == "h1" and stored.clock == NOW
        assert [h.id for h in await storage.list_heaps("u1")] == ["h1"]
        assert await storage.list_heaps("nobody") == [] and await storage.get_heap("h2") is None

        made = await storage.commit_changes([change("b1", "h1", updates=(b"1", b"2"))], NOW)
        assert [(r.status, r.last_seq, r.updated_at) for r in made] == [
            (CommitStatus.created, 2, NOW + 1)
        ]
        results = await storage.commit_changes(
            [
                change("b1", "h1", expected=2, updates=(b"3",), title="edited"),  # ok
                change("b1", "h1", expected=2),  # stale: built before the edit above
                change("b2", "h1", expected=5),  # an edit of a block that does not exist
                change("h1-root", "h1"),  # a creation of an id that exists
                change("b3", "gone"),  # a heap that does not exist
                change("b1", "h2", expected=3),  # the right position, in another heap
            ],
            NOW,
        )
        assert [r.status for r in results] == [CommitStatus.ok] + [CommitStatus.conflict] * 5
        assert (results[0].last_seq, results[0].updated_at) == (3, NOW + 2)

        block = await storage.load_block("b1")
        assert block is not None and block.updates == (b"1", b"2", b"3")
        assert (block.snapshot, block.snapshot_seq, block.created_at) == (None, 0, NOW + 1)
        compact = change(
            "b1", "h1", expected=3, updates=(b"4",), title="edited", compacted=(b"snap", 3)
        )
        assert (await storage.commit_changes([compact], NOW))[0].status is CommitStatus.ok
        block = await storage.load_block("b1")
        assert block is not None and (block.snapshot, block.snapshot_seq) == (b"snap", 3)
        assert block.updates == (b"4",) and block.last_seq == 4
        snapshot_seq, history = await storage.block_history("b1")
        assert snapshot_seq == 3 and [(u.seq, u.size) for u in history] == [(4, 1)]
        assert await storage.block_history("nope") == (0, []) and not await storage.load_block("x")

        records = await storage.get_blocks(["b1", "h1-root", "nope"])
        assert sorted(records) == ["b1", "h1-root"] and records["b1"].title == "edited"
        root = change("h1-root", "h1", expected=1, title="Renamed")
        assert (await storage.commit_changes([root], NOW))[0].status is CommitStatus.ok
        assert (await storage.get_heap("h1")).name == "Renamed"  # type: ignore[union-attr]

        # Oldest change first; a page ends at a change time, the next starts after it.
        first = await storage.changes_since("h1", 0, 1)
        assert first.has_more and [b.id for b in first.changed] == ["b1"]
        assert (first.total_changed, first.server_time) == (2, NOW + 3)
        rest = await storage.changes_since("h1", first.server_time, 10)
        assert [b.id for b in rest.changed] == ["h1-root"] and not rest.has_more
        assert (rest.server_time, rest.total_changed) == (NOW + 4, 1)


async def test_relations_queries_and_counts(make_settings: Callable[..., Settings]) -> None:
    async with opened(make_settings()) as storage:
        await add_users(storage)
        await new_heap(storage, "h1")
        await new_heap(storage, "theirs", owner="u2")
        results = await storage.commit_changes(
            [
                change("tag", "h1", type="tag", title="Topic"),
                change(
                    "a",
                    "h1",
                    title="alpha hello",
                    text="body",
                    tags=("tag",),
                    mentions=("b",),
                    links=("c",),
                ),
                # A NUL target cannot be stored by PostgreSQL: both engines leave it out.
                change("b", "h1", title="beta", tags=("tag", "bad\x00id")),
                change("c", "h1", title="gamma hello", type="page"),
                change("spy", "theirs", tags=("tag",), mentions=("a",)),  # another owner's block
            ],
            NOW,
        )
        assert all(r.status is CommitStatus.created for r in results)
        assert await storage.related("a") == {
            "tags": ["tag"],
            "mentions": ["b"],
            "links": ["c"],
            "children": [],
            "backlinks": [],
        }
        assert await storage.related("b") == {
            "tags": ["tag"],
            "mentions": [],
            "links": [],
            "children": [],
            "backlinks": ["a"],
        }
        tag = await storage.related("tag")
        assert tag["children"] == ["a", "b"]  # not "spy": another owner's heap
        assert (await storage.related("c"))["backlinks"] == ["a"]

        async def ids(**query: Any) -> list[str]:
            found = await storage.query_blocks("h1", BlockQuery(**query), 10)
            return [b.id for b in found]

        assert await ids(tag="tag", sort="title", descending=False) == ["a", "b"]
        assert await ids(terms=("hello",), sort="title", descending=False) == ["a", "c"]
        assert await ids(types=("page",)) == ["c"]
        assert await ids(has_content=True) == ["a"]
        assert set(await ids(unlinked=True)) == {"tag", "c"}  # the root is never unlinked
        assert await ids(sort="created", descending=False) == ["h1-root", "tag", "a", "b", "c"]
        page = await storage.query_blocks(
            "h1", BlockQuery(sort="created", descending=False, after=(NOW + 2, "a")), 2
        )
        assert [b.id for b in page] == ["b", "c"]
        assert await storage.count_blocks("h1", BlockQuery()) == {"note": 3, "tag": 1, "page": 1}
        assert await storage.count_blocks("h1", BlockQuery(tag="tag")) == {"note": 2}


async def test_usage_counts_thousands_of_blocks_committed_at_once(
    make_settings: Callable[..., Settings],
) -> None:
    """One commit of thousands of new blocks in two heaps: each heap's counters grow by its own
    blocks and bytes. On PostgreSQL they are kept by a statement trigger (migration 0021); the
    row trigger before it updated the heap row once per block, quadratic in one transaction."""
    async with opened(make_settings()) as storage:
        await add_users(storage)
        await new_heap(storage, "h1")
        await new_heap(storage, "h2")
        before = (
            (await storage.heap_stats("h1"))["blocks"],
            (await storage.heap_stats("h2"))["blocks"],
        )
        changes = [change(f"a{i}", "h1", updates=(b"xy",)) for i in range(2000)]
        changes += [change(f"b{i}", "h2", updates=(b"xyz",)) for i in range(1000)]
        results = await storage.commit_changes(changes, NOW)
        assert {r.status for r in results} == {CommitStatus.created}
        assert (await storage.heap_stats("h1"))["blocks"] == before[0] + 2000
        assert (await storage.heap_stats("h2"))["blocks"] == before[1] + 1000
        usage = await storage.usage("u1", NOW)
        assert usage["blocks"] == sum(before) + 3000
        assert usage["document_bytes"] == 2 + 2000 * 2 + 1000 * 3  # the two roots: one byte each


async def test_trash_purge_and_delete(make_settings: Callable[..., Settings]) -> None:
    async with opened(make_settings()) as storage:
        await add_users(storage)
        await new_heap(storage, "h1")
        await new_heap(storage, "h2")
        await storage.commit_changes(
            [
                change("keep", "h1", hashes=(H1,)),
                change("bin", "h1", deleted_at=NOW, hashes=(H1, H2)),
                change("other", "h2", deleted_at=NOW),
            ],
            NOW,
        )
        assert [b.id for b in await storage.trashed("h1")] == ["bin"]
        stats = await storage.heap_stats("h1")
        assert stats == {
            "blocks": 2,
            "by_type": {"note": 2},
            "trash": 1,
            "files": 2,
            "file_bytes": 20,
            "last_change": NOW + 2,
        }
        # Only trashed blocks of the named heap go.
        assert await storage.purge_blocks("h1", ["keep", "bin", "other", "nope"], NOW) == ["bin"]
        assert await storage.tombstones(["bin", "keep"]) == {"bin": ("h1", NOW + 3)}
        assert await storage.load_block("bin") is None
        feed = await storage.changes_since("h1", NOW + 2, 10)
        assert feed.deleted == [("bin", NOW + 3)] and feed.total_deleted == 1
        again = await storage.commit_changes([change("bin", "h1")], NOW)
        assert again[0].status is CommitStatus.conflict  # a purged id is never reused
        usage = await storage.usage("u1", NOW)
        assert (usage["heaps"], usage["blocks"]) == (2, 4)
        assert usage["document_bytes"] == 4  # one byte of log per block

        assert await storage.delete_heap("h1") and not await storage.delete_heap("h1")
        assert await storage.get_heap("h1") is None and await storage.tombstones(["bin"]) == {}
        assert await storage.get_blocks(["keep", "h1-root"]) == {}
        assert await storage.heap_stats("h1") == {
            "blocks": 0,
            "by_type": {},
            "trash": 0,
            "files": 0,
            "file_bytes": 0,
            "last_change": None,
        }
        # A permanent delete whose purge never ran: trashed and marked, in its heap's list.
        assert await storage.marked_gone() == {}
        await storage.commit_changes(
            [
                change("gone", "h2", deleted_at=NOW, gone_at=NOW),
                change("marked", "h2", gone_at=NOW),  # not in the trash: not purgeable
            ],
            NOW,
        )
        assert await storage.marked_gone() == {"h2": ["gone"]}


def file_record(hash: str, file_id: str, source: str | None = None) -> FileRecord:
    return FileRecord(hash, file_id, 10, "image/png", "a.png", source, {"w": 1}, NOW)


async def test_files_grants_and_uploads(make_settings: Callable[..., Settings]) -> None:
    async with opened(make_settings()) as storage:
        await add_users(storage)
        await new_heap(storage, "h1")
        await new_heap(storage, "eve", owner="u2")
        await storage.commit_changes(
            [change("pic", "h1", hashes=(H1,)), change("copy", "eve", hashes=(H1,))], NOW
        )
        assert (await storage.add_file(file_record(H1, "f1"))).id == "f1"
        assert (await storage.add_file(file_record(H1, "f-late"))).id == "f1"  # first wins
        await storage.add_file(file_record(H2, "f2"))
        assert await storage.get_file("f1") == await storage.get_file(H1) == file_record(H1, "f1")
        await storage.update_file(H1, meta={"w": 2}, mime_type="image/gif", source_path="/x")
        got = await storage.get_file(H1)
        assert got is not None and (got.meta, got.mime_type, got.source_path) == (
            {"w": 2},
            "image/gif",
            "/x",
        )
        await storage.update_file(H1, clear_source=True)
        assert (await storage.get_file(H1)).source_path is None  # type: ignore[union-attr]
        assert await storage.file_ids([H1, H2, "c" * 64]) == {H1: "f1", H2: "f2"}

        assert await storage.file_hashes_of_heap("h1") == [H1]
        assert await storage.file_hashes_of_heap("h1", ["h1-root"]) == []
        assert await storage.blocks_holding_files("h1") == ["pic"]
        assert await storage.blocks_holding_file(H1, "u1") == [("h1", "pic")]
        # Holding the hash is a claim; reading needs proof of the bytes (a grant).
        assert not await storage.file_readable_by(H1, "u1")
        await storage.grant_file(H1, "u1")
        await storage.grant_file(H1, "u1")  # idempotent
        assert await storage.file_readable_by(H1, "u1")
        assert not await storage.file_readable_by(H1, "u2")  # u2 holds it, proved nothing

        assert [f.hash for f in await storage.drop_unreferenced_files([H1, H2])] == [H2]
        assert await storage.get_file(H2) is None and await storage.get_file(H1) is not None

        upload = UploadRecord(
            "up1", "u1", "h1", "pic", H2, 25, 10, "a.png", "image/png", NOW, NOW + 1000
        )
        assert upload.total_chunks == 3
        assert await storage.save_upload(upload) == upload
        again = UploadRecord("up2", "u1", "h1", "pic", H2, 25, 10, "b", "x/y", NOW, NOW + 5)
        assert await storage.save_upload(again) == upload  # one per (heap, block, hash)
        assert await storage.get_upload("h1", "pic", H2) == upload
        assert await storage.expired_uploads(NOW + 1000) == []
        assert await storage.expired_uploads(NOW + 1001) == [upload]
        await storage.delete_upload("up1")
        assert await storage.get_upload("h1", "pic", H2) is None


def entry(
    path: str,
    block_id: str,
    hash: str = H1,
    *,
    kind: str = "file",
    missing: bool = False,
    scan_id: str = "s1",
) -> ScanEntry:
    return ScanEntry(
        "h1", path, kind, block_id, "folder", 10, 5, hash, missing, scan_id, NOW, 1, 2, 3
    )


async def test_scan_batches_and_entries(make_settings: Callable[..., Settings]) -> None:
    async with opened(make_settings()) as storage:
        await add_users(storage)
        await new_heap(storage, "h1")
        await storage.commit_changes([change("taken", "h1")], NOW)
        first = ScanBatch(
            "h1",
            "s1",
            changes=(
                change("folder", "h1", type="folder"),
                change("p1", "h1", hashes=(H1,)),
                change("taken", "h1", hashes=(H2,)),
            ),  # refused: the id exists
            files=(file_record(H1, "f1", "/r/a/p1"), file_record(H2, "f2", "/r/a/t")),
            entries=(
                entry("/r/a", "folder", "", kind="folder"),
                entry("/r/a/p1", "p1"),
                entry("/r/a/t", "taken", H2),
            ),
        )
        results, ids = await storage.commit_scan_batch(first, NOW)
        assert [r.status for r in results] == [
            CommitStatus.created,
            CommitStatus.created,
            CommitStatus.conflict,
        ]
        assert ids == {H1: "f1"}  # the refused change's file was not written
        assert sorted(await storage.scan_entries("h1", ["/r/a", "/r/a/p1", "/r/a/t"])) == [
            "/r/a",
            "/r/a/p1",
        ]
        stored = (await storage.scan_entries("h1", ["/r/a/p1"]))["/r/a/p1"]
        assert stored == entry("/r/a/p1", "p1") and stored.identity is not None
        assert await storage.file_readable_by(H1, "u1")  # the user's own scan hashed it

        # The bytes at /r/a/p1 change; a copy of the old ones is found at /r/b/p2.
        second = ScanBatch(
            "h1",
            "s2",
            changes=(change("p2", "h1", hashes=(H1,)),),
            entries=(
                entry("/r/a/p1", "p1", H2, scan_id="s2"),
                entry("/r/b/p2", "p2", scan_id="s2"),
            ),
            files=(file_record(H2, "f2", "/r/a/p1"),),
            replaced=((H1, "/r/a/p1"),),
        )
        results, ids = await storage.commit_scan_batch(second, NOW)
        assert [r.status for r in results] == [CommitStatus.created] and ids == {H2: "f2"}
        assert (await storage.get_file(H1)).source_path == "/r/b/p2"  # type: ignore[union-attr]
        assert [e.path for e in (await storage.scan_entries_by_hash("h1", [H1]))[H1]] == ["/r/b/p2"]
        assert [e.heap_id for e in await storage.scan_entries_at("/r/a/p1")] == ["h1"]
        assert await storage.scan_entries_at("/r/a") == []  # folders are not file entries

        # Unseen by s2 below /r/a: the folder entry itself is not below it, p1 was seen.
        assert await storage.unseen_scan_entries("h1", "/r", "s2", "", 10) == [
            entry("/r/a", "folder", "", kind="folder")
        ]
        await storage.commit_scan_batch(ScanBatch("h1", "s2", seen=("/r/a",)), NOW)
        assert await storage.unseen_scan_entries("h1", "/r", "s2", "", 10) == []
        assert [
            e.path for e in await storage.unseen_scan_entries("h1", "/r", "s3", "/r/a", 10)
        ] == ["/r/a/p1", "/r/b/p2"]


async def test_announce_and_listen(make_settings: Callable[..., Settings]) -> None:
    async with opened(make_settings()) as storage:
        if not storage.shares_processes:
            await storage.announce(["nobody hears this"])
            with pytest.raises(NotImplementedError):
                await storage.listen(lambda payload: None)
            return
        heard: list[str] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(storage.listen, heard.append))
            await storage.announce(["hello", "world"])
            with trio.fail_after(10):
                while heard[-2:] != ["hello", "world"]:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()


def test_every_interface_method_is_driven() -> None:
    """Each public method of ``Storage`` is called somewhere in the contract suite."""
    methods = {
        name
        for name, _ in inspect.getmembers(Storage, inspect.isfunction)
        if not name.startswith("_")
    }
    called: set[str] = set()
    for module in Path(__file__).parent.glob("test_storage*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Attribute):
                called.add(node.attr)
    called |= {"open", "close"}  # every test, through open_storage
    assert methods - called == set()
