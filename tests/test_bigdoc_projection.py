"""A push into a big document costs what the update costs (issue 12 item 4): the parts of it
that are kept up to date instead of recomputed give what recomputing gives.

- The projection kept in segments of top-level children (``crdt/incremental.py``) equals a
  plain read of the whole document with ``_XmlScan`` (the reference, no cache at all), after
  random edits across every root, with segments of two children so that splits, seams inside
  an inline run and emptied segments all occur.
- ``BlockDocument.size`` is exact for small documents and, for large ones, close above the
  length of the full state, whatever the order of updates and compactions.
- Through a real server (both engines): pushes into a document of several segments store the
  text a plain read gives and search follows; on PostgreSQL the text is compressed with lz4
  (migration 0018) where the server has it.
"""

from __future__ import annotations

import functools
from typing import Any
from unittest.mock import patch

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map, XmlElement, XmlFragment, XmlText

from heaper_trio import crdt
from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.crdt import incremental
from heaper_trio.crdt.projection import Projection, _millis, _plain, _XmlScan
from tests.test_query import ids
from tests.test_sync import ClientBlock, new_heap, push
from tests.test_sync_perf_paths import _block_node, _edit


def reference(doc: Doc) -> Projection:
    """The projection read straight from the document, as before any caching."""

    def xml(name: str) -> _XmlScan:
        return _XmlScan().block(doc.get(name, type=XmlFragment))

    def plain(name: str) -> Any:
        return _plain(doc.get(name, type=Map))

    meta, relations, files = plain("meta_v0"), plain("relations_v1"), plain("files_v0")
    relations = {k: v for k, v in relations.items() if isinstance(v, dict)}
    title, content = xml("title_v0"), xml("content_v0")
    return Projection(
        type=meta.get("type") if isinstance(meta.get("type"), str) else None,
        title=" ".join(title.lines).replace("\n", " ").strip(),
        text="\n".join(content.lines),
        tags=tuple(sorted(k for k, v in relations.items() if v.get("type") == "tag")),
        relations=relations,
        mentions=tuple(sorted(title.mentions | content.mentions)),
        links=tuple(sorted(title.links | content.links)),
        files={k: v for k, v in files.items() if isinstance(v, dict)},
        apps=plain("apps_v0"),
        deleted_at=_millis(meta.get("deleted_at")),
        permanently_deleted_at=_millis(meta.get("permanently_deleted_at")),
    )


def _bulk(draw: Any, doc: Doc) -> None:
    """Several children inserted or deleted at once: a delta op spanning segments."""
    root = doc.get("content_v0", type=XmlFragment)
    n = len(root.children)
    if n > 3 and draw(st.booleans()):
        at = draw(st.integers(0, n - 3))
        for _ in range(draw(st.integers(2, 3))):
            del root.children[at]
    else:
        at = draw(st.integers(0, n))
        for k in range(draw(st.integers(2, 5))):
            root.children.insert(at + k, _block_node(draw))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_segmented_projection_equals_a_plain_read(data: st.DataObject) -> None:
    with patch.object(incremental, "SEGMENT", 2):
        edit_and_compare(data)


def edit_and_compare(data: st.DataObject) -> None:
    author = Doc()
    content = author.get("content_v0", type=XmlFragment)
    for _ in range(data.draw(st.integers(0, 9))):
        content.children.append(_block_node(data.draw))
    block = crdt.BlockDocument.load(author.get_update())
    assert block.project() == reference(author)
    for _ in range(data.draw(st.integers(1, 14))):
        state = author.get_state()
        with author.transaction():  # one to three edits in one transaction
            for _ in range(data.draw(st.integers(1, 3))):
                (_bulk if data.draw(st.integers(0, 3)) == 0 else _edit)(data.draw, author)
        block.apply(author.get_update(state))
        if data.draw(st.booleans()):  # not every update is projected at once
            assert block.project() == reference(author)
    assert block.project() == reference(author)


def test_a_typed_word_rescans_one_segment() -> None:
    author = Doc()
    content = author.get("content_v0", type=XmlFragment)
    with author.transaction():
        for i in range(10 * incremental.SEGMENT):
            content.children.append(XmlElement("paragraph", contents=[XmlText(f"line {i}")]))
    block = crdt.BlockDocument.load(author.get_update())
    block.project()
    live = block._live_projection()
    segments = live.xml["content_v0"].segments
    assert segments is not None and len(segments) == 10
    state = author.get_state()
    content.children[5 * incremental.SEGMENT + 1].children[0].insert(0, "typed ")
    block.apply(author.get_update(state))
    assert [s.text is None for s in segments].count(True) == 1
    assert block.project() == reference(author)
    assert f"typed line {5 * incremental.SEGMENT + 1}\n" in block.project().text


def test_nested_edits_are_patched_not_reread() -> None:
    """The deep observers read pycrdt's native events (a parent walk, no wrapped fields): an
    edit two and three levels below a top-level child is patched in place, the root's
    segments kept (an event this code misread would drop them and read the root whole)."""
    author = Doc()
    content = author.get("content_v0", type=XmlFragment)
    meta = author.get("meta_v0", type=Map)
    with author.transaction():
        for i in range(3 * incremental.SEGMENT):
            content.children.append(XmlElement("paragraph", contents=[XmlText(f"line {i}")]))
        item = XmlElement("listItem", contents=[XmlElement("paragraph")])
        content.children.append(XmlElement("bulletList", contents=[item]))
        item.children[0].children.append(XmlText("deep"))
    block = crdt.BlockDocument.load(None, [author.get_update()])
    block.project()
    root = block._live_projection().xml["content_v0"]
    kept = root.segments
    for edit in (
        lambda: content.children[incremental.SEGMENT + 3].children[0].insert(0, "typed "),
        lambda: item.children[0].children[0].insert(4, "er"),
        lambda: meta.__setitem__("type", "document"),
    ):
        state = author.get_state()
        edit()
        block.apply(author.get_update(state))
        assert root.segments is kept and root.touched is not None
        assert block.project() == reference(author)
    assert "typed line " in block.project().text and "deeper" in block.project().text
    assert block.project().type == "document"


@functools.cache
def _paragraphs(n: int) -> bytes:
    doc = Doc()
    content = doc.get("content_v0", type=XmlFragment)
    with doc.transaction():
        for i in range(n):
            content.children.append(XmlElement("paragraph", contents=[XmlText(f"{i} words")]))
    return doc.get_update()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_size_is_exact_when_small_and_close_above_when_large(data: st.DataObject) -> None:
    author = Doc()
    author.apply_update(_paragraphs(data.draw(st.sampled_from([3, 6000]))))
    content = author.get("content_v0", type=XmlFragment)
    block = crdt.BlockDocument.load(author.get_update())
    for _ in range(data.draw(st.integers(1, 30))):
        state = author.get_state()
        paragraph = content.children[data.draw(st.integers(0, len(content.children) - 1))]
        paragraph.children[0].insert(0, data.draw(st.text("abc ", min_size=1, max_size=400)))
        block.apply(author.get_update(state))
        if data.draw(st.integers(0, 9)) == 0:
            block.snapshot()  # a compaction measures it again
        exact = len(block.full_state())
        if exact < 60_000:
            assert block.size == exact
        else:
            assert exact <= block.size <= exact + exact // 8 + 16384


async def _compression(storage: Any) -> tuple[str, bool]:
    """``blocks.text``'s compression, and whether this server has lz4 at all."""
    from heaper_trio.storage.postgres.runtime import tx

    async def run(c: Any) -> tuple[str, bool]:
        method = await c.fetchval(
            "SELECT attcompression::text FROM pg_attribute "
            "WHERE attrelid = 'blocks'::regclass AND attname = 'text'"
        )
        lz4 = await c.fetchval(
            "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
        )
        return method, bool(lz4)

    return await storage._run(tx, run)  # type: ignore[no-any-return]


async def test_pushes_into_a_document_of_many_segments(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Long")
    n = 3 * incremental.SEGMENT
    with block.doc.transaction():
        for i in range(n):
            paragraph = XmlElement("paragraph", contents=[XmlText(f"entry {i} " + "x" * 400)])
            block.content.children.append(paragraph)
    r = await push(admin, block.push_item(heap["id"]))
    assert r.json()["blocks"][0]["status"] == "created", r.text

    async def stored() -> dict[str, Any]:
        got = (await admin.post(f"/api/block/{block.id}")).json()
        assert got["text"] == reference(block.doc).text
        return got

    edits = [
        lambda: block.content.children[n - 10].children[0].insert(0, "zebra "),
        lambda: block.content.children.insert(incremental.SEGMENT, XmlText("loose ")),
        lambda: block.content.children.insert(incremental.SEGMENT + 1, XmlText("words")),
        lambda: block.content.children.__delitem__(5),
    ]
    for edit in edits:
        edit()
        r = await push(admin, block.push_item(heap["id"]))
        assert r.json()["blocks"][0]["status"] == "ok", r.text
        await stored()
    assert block.id in await ids(admin, heap, query=f"zebra_entry_{n - 10}")
    assert block.id in await ids(admin, heap, query="loose_words")
    assert block.id not in await ids(admin, heap, query="entry_5_x")
    assert block.id in await ids(admin, heap, query="entry_6_x")
    storage = server.services.storage
    if storage.engine == "postgres":
        method, lz4 = await _compression(storage)
        assert method == "l" if lz4 else method in ("", "p")  # pglz is the default
