"""PostgreSQL commits a group of edits in one statement (``heaper_push_batch``, migration 0023;
``storage/postgres/push_commit.py``). It must leave exactly what the usual group commit leaves:
the same outcomes (refusals of a stale, unknown or foreign edit among them), rows, change
times, search lines, relations, files, heap name and announcements. A row it cannot decide (a
text in pieces) makes it write nothing and the usual path commit the group."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
import trio
from trio_asyncio import aio_as_trio

from heaper_trio.protocol import announce
from heaper_trio.records import CommitStatus, Heap
from heaper_trio.services.documents import DocumentService
from heaper_trio.settings import Settings
from heaper_trio.storage import text_pieces
from heaper_trio.storage.base import Storage
from heaper_trio.storage.postgres import push_commit
from heaper_trio.storage.postgres.runtime import read, write1

from .test_push_group_commit import change, projection
from .test_storage import NOW, login, opened

ORIGIN = "test-origin"


async def _setup(storage: Storage, heap: Heap, p: str) -> None:
    made = [
        change(heap, f"{p}a", None, projection("A", "one\ntwo\ntwo\nthree")),
        change(heap, f"{p}b", None, projection("B", "x")),
        change(heap, f"{p}c", None, projection("C", "y", tags=("t1", "t2"), file_hashes=("ab",))),
        change(heap, f"{p}d", None, projection("D", "z")),
        change(heap, f"{p}e", None, projection("E", "w")),
    ]
    for ch in made:
        [r] = await storage.commit_changes([ch], NOW)
        assert r.status is CommitStatus.created


def _edits(heap: Heap, p: str) -> list[Any]:
    root = heap.root_block_id
    return [
        change(heap, f"{p}a", 1, projection("A", "two\nthree\nthree\nfour", tags=("t3",)), n=2),
        change(heap, f"{p}b", 1, projection("B", "x", deleted_at=NOW)),  # to the trash
        change(heap, f"{p}c", 1, projection("C2", "y\ny", file_hashes=("cd", "ef"))),
        change(heap, f"{p}d", 5, projection("D", "stale")),  # a stale log position
        change(heap, f"{p}zz", 1, projection("Z", "unknown")),  # no such block
        change(heap, f"{p}e", 1, projection("E", "mine"), heap_owner="someone-else"),
        change(heap, root, 1, projection(f"Renamed {p}", "root text")),
    ]


def _said(a: dict[str, Any], heap: Heap, p: str, clock: int) -> dict[str, Any]:
    """An announcement with this run's ids (and the ids inside the updates) and its heap's
    clock taken out."""
    out = dict(a)
    if "t" in a:
        out["t"] = a["t"] - clock
    out["h"] = "H" if "h" in a else None
    out["b"] = "ROOT" if a["b"] == heap.root_block_id else a["b"].removeprefix(p)
    if "d" in a:
        root = heap.root_block_id.encode()
        out["d"] = [
            base64.b64decode(u).replace(root, b"ROOT").removeprefix(p.encode()) for u in a["d"]
        ]
    return out


async def _rows(c: Any, heap_id: str, p: str) -> dict[str, Any]:
    clock = await c.fetchval("SELECT clock FROM heaps WHERE id = $1", heap_id)
    root = await c.fetchval("SELECT root_block_id FROM heaps WHERE id = $1", heap_id)

    def norm(v: Any) -> Any:
        if isinstance(v, int) and abs(v - clock) < 10**6:  # a change time: the heap's clock
            return ("t", v - clock)  # starts at the real time of its creation
        if isinstance(v, bytes):
            return v.removeprefix(p.encode())
        if isinstance(v, str):
            v = v.replace(heap_id, "H").replace(root, "ROOT").replace(f"Renamed {p}", "Renamed")
            return v.removeprefix(p)
        return v

    async def q(sql: str) -> list[tuple[Any, ...]]:
        return sorted(tuple(map(norm, r)) for r in await c.fetch(sql, heap_id))

    ids = "(SELECT id FROM blocks WHERE heap_id = $1)"
    return {
        "blocks": await q(
            "SELECT id, type, title, text, relations::text, files::text, apps::text, "
            "updated_at, deleted_at, permanently_deleted_at, state_vector, size, last_seq, "
            "sync_version, text_parts FROM blocks WHERE heap_id = $1 AND id <> "
            "(SELECT root_block_id FROM heaps WHERE id = $1)"
        ),
        "log": await q(
            "SELECT block_id, seq, data, created_at, author_id FROM block_updates "
            f"WHERE block_id IN {ids} AND block_id <> "
            "(SELECT root_block_id FROM heaps WHERE id = $1)"
        ),
        "lines": await q(f"SELECT block_id, body, uses FROM block_lines WHERE block_id IN {ids}"),
        "relations": await q(
            "SELECT block_id, kind, target_id FROM block_relations WHERE heap_id=$1"
        ),
        "files": await q("SELECT block_id, hash FROM block_files WHERE heap_id = $1"),
        "heap": await q("SELECT clock, (name LIKE 'Renamed %') FROM heaps WHERE id = $1"),
        "clock": clock,
    }


async def test_one_call_leaves_what_the_usual_group_commit_leaves(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings()
    async with opened(settings) as storage:
        if storage.engine != "postgres":
            pytest.skip("PostgreSQL's one-call group commit")
        loop = storage._loop  # type: ignore[attr-defined]
        heard: list[str] = []
        listener = await aio_as_trio(asyncpg.connect, loop=loop)(settings.database_url)
        await aio_as_trio(listener.add_listener, loop=loop)(
            "heaper_live", lambda *a: heard.append(a[3])
        )
        calls: list[int] = []
        real = push_commit.commit_in_one

        async def counted(c: Any, changes: Any, *a: Any) -> Any:
            calls.append(len(changes))
            return await real(c, changes, *a)

        monkeypatch.setattr(push_commit, "commit_in_one", counted)
        user = (await login(storage, "pk-one", auto_approve=True)).user  # type: ignore[union-attr]
        docs = DocumentService(storage, settings)
        seen: list[dict[str, Any]] = []
        for p, one_call in (("P1-", False), ("P2-", True)):
            heap = await docs.create_heap(user, f"h{p}", None)
            await _setup(storage, heap, p)
            storage.announce_commits_as(ORIGIN)
            heard.clear()
            with monkeypatch.context() as m:
                if not one_call:
                    m.setattr(push_commit, "eligible", lambda changes: False)
                results = await storage.commit_changes(_edits(heap, p), NOW + 5)
            with trio.fail_after(5):
                while len(heard) < 8:  # an inline update and a pointer per stored edit
                    await trio.sleep(0.01)
            storage.announce_as = None  # type: ignore[attr-defined]
            rows = await storage._run(read, _rows, heap.id, p)  # type: ignore[attr-defined]
            clock = rows.pop("clock")
            said = [_said(json.loads(h), heap, p, clock) for h in heard]
            times = [r.updated_at and r.updated_at - clock for r in results]
            outcomes = [(r.status, t, r.last_seq, r.sync_version) for r, t in zip(results, times)]
            seen.append({"results": outcomes} | rows | {"said": said})
        await aio_as_trio(listener.close, loop=loop)()
        assert calls == [7]  # the second run went through the one call, the first did not
        ok, no = CommitStatus.ok, CommitStatus.conflict
        assert [r[0] for r in seen[1]["results"]] == [ok, ok, ok, no, no, no, ok]
        for key in seen[0]:
            assert seen[1][key] == seen[0][key], key
        kinds = [s.get("k") for s in seen[1]["said"]]
        assert kinds == [None, "changed", None, "deleted", None, "changed", None, "changed"]
        assert seen[1]["heap"][0][1] is True  # named after its root block's title


async def test_a_row_in_pieces_makes_the_one_call_write_nothing(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The function refuses the whole batch before writing (``HTB01``) and the usual path
    commits it: the big text goes back into its row, the other edit lands once."""
    settings = make_settings()
    async with opened(settings) as storage:
        if storage.engine != "postgres":
            pytest.skip("PostgreSQL's one-call group commit")
        surprises: list[int] = []
        real = push_commit.commit_in_one

        async def watched(*a: Any) -> Any:
            try:
                return await real(*a)
            except push_commit.Surprise:
                surprises.append(1)
                raise

        monkeypatch.setattr(push_commit, "commit_in_one", watched)
        user = (await login(storage, "pk-pieces", auto_approve=True)).user  # type: ignore[union-attr]
        heap = await DocumentService(storage, settings).create_heap(user, "h", None)
        big = "line\n" * (text_pieces.BIG_TEXT // 5 + 1)
        for block, text in (("big", big), ("small", "s")):
            [r] = await storage.commit_changes(
                [change(heap, block, None, projection("T", text))], NOW
            )
            assert r.status is CommitStatus.created
        edits = [
            change(heap, "small", 1, projection("T", "s2")),
            change(heap, "big", 1, projection("T", "short now")),
        ]
        assert push_commit.eligible(edits)
        results = await storage.commit_changes(edits, NOW)
        assert [(r.status, r.last_seq) for r in results] == [(CommitStatus.ok, 2)] * 2
        assert surprises == [1]
        got = await storage.get_blocks(["big", "small"])
        assert (got["big"].text, got["small"].text) == ("short now", "s2")
        small = await storage.load_block("small")
        assert small is not None and len(small.updates) == 2  # written once, not twice


async def test_any_statement_error_of_the_one_call_commits_the_usual_way(
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The call is its own transaction: refused for any reason, it wrote nothing, and the
    group is committed the usual way (not failed, not written twice)."""
    settings = make_settings()
    async with opened(settings) as storage:
        if storage.engine != "postgres":
            pytest.skip("PostgreSQL's one-call group commit")
        monkeypatch.setattr(push_commit, "_CALL", "SELECT * FROM no_such_function($1)")
        monkeypatch.setattr(push_commit, "arguments", lambda *a: [1])
        user = (await login(storage, "pk-err", auto_approve=True)).user  # type: ignore[union-attr]
        heap = await DocumentService(storage, settings).create_heap(user, "h", None)
        await storage.commit_changes([change(heap, "n", None, projection("T", "a"))], NOW)
        [r] = await storage.commit_changes([change(heap, "n", 1, projection("T", "b"))], NOW)
        assert (r.status, r.last_seq) == (CommitStatus.ok, 2)
        assert "one-call group commit refused" in caplog.text
        stored = await storage.load_block("n")
        assert stored is not None and len(stored.updates) == 2


def _inline_of_dfe6c8f(origin: str | None, ch: Any) -> str | None:
    if origin is None or ch.expected_last_seq is None:
        return None
    seq = ch.expected_last_seq + len(ch.updates)
    wide = push_commit._WIDEST_VERSION
    if announce.inline_updates(origin, ch.block_id, seq, wide, ch.updates) is None:
        return None
    return json.dumps([base64.b64encode(u).decode("ascii") for u in ch.updates])


async def test_an_inline_announcement_past_the_notify_limit_is_left_out(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller sizes inline updates as compact JSON (at most 7,000 bytes); the caller of
    dfe6c8f (a process of that version in a rolling restart) passes the updates array with
    json.dumps' spaces, and the function writes the rest with spaces too: one more byte per
    update. 991 one-byte updates into a block whose sync_version is the widest made that
    payload over 8,000 bytes: pg_notify raised and the whole group fell back to the usual
    path (0023). Since 0024 the inline announcement is left out, the pointer goes alone and
    the call commits."""
    settings = make_settings()
    async with opened(settings) as storage:
        if storage.engine != "postgres":
            pytest.skip("PostgreSQL's one-call group commit")
        loop = storage._loop  # type: ignore[attr-defined]
        heard: list[str] = []
        listener = await aio_as_trio(asyncpg.connect, loop=loop)(settings.database_url)
        await aio_as_trio(listener.add_listener, loop=loop)(
            "heaper_live", lambda *a: heard.append(a[3])
        )
        surprises: list[int] = []
        real = push_commit.commit_in_one

        async def watched(*a: Any) -> Any:
            try:
                return await real(*a)
            except push_commit.Surprise:
                surprises.append(1)
                raise

        monkeypatch.setattr(push_commit, "commit_in_one", watched)
        monkeypatch.setattr(push_commit, "_inline", _inline_of_dfe6c8f)
        user = (await login(storage, "pk-notify", auto_approve=True)).user  # type: ignore[union-attr]
        heap = await DocumentService(storage, settings).create_heap(user, "h", None)
        block = "b" * 8  # with 991 updates: compact JSON of exactly 7,000 bytes
        [r] = await storage.commit_changes([change(heap, block, None, projection("T", "a"))], NOW)
        assert r.status is CommitStatus.created
        widest = 2**31 - 1

        async def widen(c: Any) -> None:
            await c.execute("UPDATE blocks SET sync_version = $1 WHERE id = $2", widest, block)

        await storage._run(write1, widen)  # type: ignore[attr-defined]
        updates = (b"\x01",) * 991
        inline = announce.inline_updates(ORIGIN, block, 1 + len(updates), widest, updates)
        assert inline is not None and len(inline) == 7000  # the caller would send it
        edit = dataclasses.replace(change(heap, block, 1, projection("T", "b")), updates=updates)
        storage.announce_commits_as(ORIGIN)
        [r] = await storage.commit_changes([edit], NOW)
        assert (r.status, r.last_seq, surprises) == (CommitStatus.ok, 992, [])
        with trio.fail_after(5):
            while not heard:
                await trio.sleep(0.01)
        await trio.sleep(0.2)  # anything else announced arrives meanwhile
        storage.announce_as = None  # type: ignore[attr-defined]
        await aio_as_trio(listener.close, loop=loop)()
        assert [json.loads(h)["k"] for h in heard] == ["changed"]  # the pointer alone
