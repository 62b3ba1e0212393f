"""The sync fast paths of issue 12 item 4 hold the same answers as the slow ones.

- The change feed pages by keyset (change time, id): a walk sees every block once even when
  rows share a change time (never written so by the server, forced here in the database) and
  while writes commit between its pages; the totals carried from page to page equal a fresh
  count on every page; a page reads only the columns delta answers.
- The projection kept up to date root by root (``crdt/incremental.py``) equals the projection
  of the whole document after random edits (hypothesis).
- Concurrent block commits are grouped into shared transactions on both engines, and a
  cancelled caller is never told "cancelled" about a stored write.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map, XmlElement, XmlFragment, XmlText

from heaper_trio import crdt
from heaper_trio.records import ChangePage, CommitStatus
from heaper_trio.settings import Settings
from heaper_trio.storage import Storage
from tests.test_storage import NOW, opened
from tests.test_storage_contract import add_users, change, new_heap


async def raw(storage: Storage, sqlite_sql: str, postgres_sql: str, *args: Any) -> None:
    """One statement straight into the database, behind the engine's back."""
    if storage.engine == "sqlite":
        await storage.rt.write(lambda c: c.execute(sqlite_sql, args))  # type: ignore[attr-defined]
    else:
        from heaper_trio.storage.postgres.runtime import tx

        async def work(c: Any) -> None:
            await c.execute(postgres_sql, *args)

        await storage._run(tx, work)  # type: ignore[attr-defined]


async def fresh_totals(storage: Storage, heap_id: str, since: int) -> tuple[int, int]:
    """The totals counted without the carried memo (a second look with an empty one)."""
    memo = storage.delta_totals  # type: ignore[attr-defined]
    storage.delta_totals = type(memo)()  # type: ignore[attr-defined]
    try:
        page = await storage.changes_since(heap_id, since, 1)
    finally:
        storage.delta_totals = memo  # type: ignore[attr-defined]
    return page.total_changed, page.total_deleted


async def walk(
    storage: Storage, heap_id: str, limit: int, between: Callable[[int], Any] | None = None
) -> list[ChangePage]:
    pages, since = [], 0
    while True:
        page = await storage.changes_since(heap_id, since, limit)
        # the carried totals are what a fresh count in the same state gives
        assert (page.total_changed, page.total_deleted) == await fresh_totals(
            storage, heap_id, since
        ), (since, len(pages))
        pages.append(page)
        assert page.server_time > since or not page.has_more
        since = page.server_time
        if not page.has_more:
            return pages
        if between is not None:
            await between(len(pages))


async def test_keyset_pages_take_whole_ties(make_settings: Callable[..., Settings]) -> None:
    async with opened(make_settings()) as storage:
        await add_users(storage)
        await new_heap(storage, "h1")
        ids = [f"b{i}" for i in range(8)]
        results = await storage.commit_changes([change(b, "h1") for b in ids], NOW)
        assert all(r.status is CommitStatus.created for r in results)
        # five blocks share one change time, past a page of two: the page ending in the tie
        # takes all of it, and the next one starts after it
        tie = NOW + 50
        for b in ids[1:6]:
            await raw(
                storage,
                "UPDATE blocks SET updated_at=? WHERE id=?",
                "UPDATE blocks SET updated_at=$1 WHERE id=$2",
                tie,
                b,
            )
        for i, b in enumerate(("gone1", "gone2", "gone3", "gone4")):
            await raw(
                storage,
                "INSERT INTO block_tombstones (block_id, heap_id, deleted_at) VALUES (?, ?, ?)",
                "INSERT INTO block_tombstones (block_id, heap_id, deleted_at) VALUES ($1, $2, $3)",
                b,
                "h1",
                tie + 1 if i else tie + 2,
            )
        await raw(
            storage,
            "UPDATE heaps SET clock=? WHERE id=?",
            "UPDATE heaps SET clock=$1 WHERE id=$2",
            tie + 100,
            "h1",
        )
        pages = await walk(storage, "h1", 2)
        seen = [b.id for p in pages for b in p.changed]
        assert sorted(seen) == sorted(["h1-root", *ids]) and len(seen) == len(set(seen))
        gone = [d for p in pages for d in p.deleted]
        assert sorted(gone) == [("gone1", tie + 2)] + [(f"gone{i}", tie + 1) for i in (2, 3, 4)]
        for p in pages:
            times = [b.updated_at for b in p.changed] + [at for _, at in p.deleted]
            assert all(t <= p.server_time for t in times)
        tied = next(p for p in pages if any(b.updated_at == tie for b in p.changed))
        assert sorted(b.id for b in tied.changed if b.updated_at == tie) == ids[1:6]
        # (change time, id) order within a page
        for p in pages:
            keys = [(b.updated_at, b.id) for b in p.changed]
            assert keys == sorted(keys)
        # a delta record carries the delta columns only
        assert all(len(b) == 7 for b in tied.changed)  # only the columns delta answers
        assert tied.changed[0].title == "" and tied.changed[0].type == "note"


async def test_a_walk_under_writes_sees_every_last_change(
    make_settings: Callable[..., Settings],
) -> None:
    async with opened(make_settings()) as storage:
        await add_users(storage)
        await new_heap(storage, "h1")
        seqs: dict[str, int] = {"h1-root": 1}
        first = [change(f"b{i}", "h1") for i in range(12)]
        await storage.commit_changes(first, NOW)
        seqs.update({f"b{i}": 1 for i in range(12)})
        memo = storage.delta_totals  # type: ignore[attr-defined]

        quiet = await walk(storage, "h1", 3)
        assert len(quiet) == 5 and memo.hits >= len(quiet) - 1  # counted once per walk

        async def write(page_no: int) -> None:
            if page_no > 4:  # writes as fast as the walk reads would keep it going for ever
                return
            # an edit of a block already seen, one not yet seen, a new block, a purge
            edits = [f"b{(page_no * 5) % 12}", f"b{(page_no * 7 + 3) % 12}"]
            changes = [change(b, "h1", expected=seqs[b]) for b in edits]
            changes.append(change(f"n{page_no}", "h1"))
            results = await storage.commit_changes(changes, NOW)
            for ch, r in zip(changes, results, strict=True):
                assert r.status is not CommitStatus.conflict
                seqs[ch.block_id] = r.last_seq

        pages = await walk(storage, "h1", 3, write)
        last: dict[str, int] = {}
        for p in pages:
            for b in p.changed:
                last[b.id] = b.updated_at
        final = await storage.changes_since("h1", 0, 1000)
        # every block's newest change was seen by the walk
        assert {b.id: b.updated_at for b in final.changed} == last


# -- projection: incremental equals whole ------------------------------------------------------

LABELS = ("a", "b", "c")


def _inline_node(draw: Any) -> Any:
    kind = draw(st.sampled_from(("text", "reference", "pagelink", "hardBreak")))
    if kind == "text":
        return XmlText(draw(st.text("xyz ", max_size=4)))
    if kind == "reference":
        return XmlElement("reference", {"id": draw(st.sampled_from(LABELS)), "label": "L"})
    if kind == "pagelink":
        return XmlElement("pagelink", {"blockKey": draw(st.sampled_from(LABELS))})
    return XmlElement("hardBreak")


def _block_node(draw: Any) -> Any:
    kind = draw(st.sampled_from(("paragraph", "paragraph", "list", "empty", "inline")))
    if kind == "paragraph":
        return XmlElement("paragraph", contents=[_inline_node(draw) for _ in range(2)])
    if kind == "list":
        item = XmlElement("listItem", contents=[XmlElement("paragraph", contents=[XmlText("i")])])
        return XmlElement("bulletList", contents=[item])
    if kind == "empty":
        return XmlElement("paragraph")
    return _inline_node(draw)  # inline content right under the root


def _edit(draw: Any, doc: Doc) -> None:
    root = doc.get(
        draw(st.sampled_from(("content_v0", "content_v0", "title_v0"))), type=XmlFragment
    )
    n = len(root.children)
    op = draw(st.sampled_from(("insert", "insert", "delete", "type", "attr", "nested", "map")))
    if op == "insert" or n == 0:
        root.children.insert(draw(st.integers(0, n)), _block_node(draw))
    elif op == "delete":
        del root.children[draw(st.integers(0, n - 1))]
    elif op in ("type", "attr", "nested"):
        child = root.children[draw(st.integers(0, n - 1))]
        if isinstance(child, XmlText):
            child.insert(0, draw(st.text("pq", min_size=1, max_size=2)))
        elif op == "attr" and child.tag in ("reference", "pagelink"):
            child.attributes["label" if child.tag == "reference" else "blockKey"] = "c"
        elif op == "nested" and isinstance(child, XmlElement):
            child.children.insert(0, _inline_node(draw))
        elif isinstance(child, XmlElement) and len(child.children):
            inner = child.children[0]
            if isinstance(inner, XmlText):
                inner.insert(len(str(inner)), "w")
            else:
                del child.children[0]
    else:
        name = draw(st.sampled_from(("meta_v0", "relations_v1", "files_v0", "apps_v0")))
        doc.get(name, type=Map)[draw(st.sampled_from(LABELS))] = Map({"type": "tag", "n": 1.0})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_incremental_projection_equals_the_whole(data: st.DataObject) -> None:
    author = Doc()
    author.get("content_v0", type=XmlFragment).children.append(
        XmlElement("paragraph", contents=[XmlText("start")])
    )
    block = crdt.BlockDocument.load(author.get_update())
    block.project()  # from here on, the projection follows the updates
    for _ in range(data.draw(st.integers(1, 12))):
        state = author.get_state()
        with author.transaction():  # one to three edits in one transaction
            for _ in range(data.draw(st.integers(1, 3))):
                _edit(data.draw, author)
        block.apply(author.get_update(state))
        whole = crdt.BlockDocument.load(block.full_state()).project()
        assert block.project() == whole


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_incremental_projection_equals_the_whole_out_of_order(data: st.DataObject) -> None:
    """Updates arriving before their predecessors are parked; yrs integrates them once the gap
    is filled without telling the observers, so the projection must not trust its cache then."""
    author = Doc()
    author.get("content_v0", type=XmlFragment).children.append(
        XmlElement("paragraph", contents=[XmlText("start")])
    )
    base = author.get_update()
    updates = []
    for _ in range(data.draw(st.integers(2, 8))):
        state = author.get_state()
        with author.transaction():
            for _ in range(data.draw(st.integers(1, 3))):
                _edit(data.draw, author)
        updates.append(author.get_update(state))
    block = crdt.BlockDocument.load(base)
    block.project()
    for i in data.draw(st.permutations(range(len(updates)))):
        block.apply(updates[i])
        assert block.project() == crdt.BlockDocument.load(block.full_state()).project()
    assert block.project() == crdt.BlockDocument.load(author.get_update()).project()


# -- group commit --------------------------------------------------------------------------------


async def test_concurrent_commits_are_grouped_and_cancels_keep_their_word(
    make_settings: Callable[..., Settings],
) -> None:
    """Concurrent commit_changes share transactions (both engines batch); a caller cancelled
    at any point either returns its result (the write is stored) or raises (it is not, then
    or later); on PostgreSQL one job's failing statement fails that job alone."""
    async with opened(make_settings()) as storage:
        await add_users(storage)
        await new_heap(storage, "h1")
        n = 24
        got: dict[int, Any] = {}

        async def commit(i: int, cancel_after: int | None) -> None:
            with trio.CancelScope() as scope:
                if cancel_after is not None:

                    async def cancel_later() -> None:
                        for _ in range(cancel_after):
                            await trio.lowlevel.checkpoint()
                        scope.cancel()

                    nursery.start_soon(cancel_later)
                got[i] = await storage.commit_changes([change(f"g{i}", "h1")], NOW)

        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(commit, i, None if i % 2 else i % 7)
        assert len(got) >= n // 2  # every uncancelled caller, at least
        for i in range(n):
            stored = await storage.load_block(f"g{i}")
            if i in got:
                assert got[i][0].status is CommitStatus.created
                assert stored is not None and stored.last_seq == got[i][0].last_seq
            else:  # told "cancelled": nothing was written
                assert stored is None, i
        if storage.engine == "sqlite":
            assert storage.rt.commits < len(got) + 3  # type: ignore[attr-defined]
            return
        group = storage._group  # type: ignore[attr-defined]
        assert group.batches < group.jobs
        # one job's statement error (PostgreSQL holds no NUL in TEXT) fails that job alone
        bad = change("bad", "h1", title="nul\x00title")
        outcomes: dict[str, Any] = {}

        async def one(ch: Any) -> None:
            try:
                outcomes[ch.block_id] = await storage.commit_changes([ch], NOW)
            except Exception as e:
                outcomes[ch.block_id] = e

        async with trio.open_nursery() as nursery:
            for ch in [change("ok1", "h1"), bad, change("ok2", "h1")]:
                nursery.start_soon(one, ch)
        assert isinstance(outcomes["bad"], Exception)
        for b in ("ok1", "ok2"):
            assert outcomes[b][0].status is CommitStatus.created
            assert await storage.load_block(b) is not None
