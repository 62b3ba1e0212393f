"""Search rows per line (migration 0017): what a push into a document changes in search, and
how a phrase that would span two paragraphs is treated (docs/api.md, "Search")."""

from __future__ import annotations

from typing import Any

import pycrdt
import pytest

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient

from .test_query import ids
from .test_sync import ClientBlock, new_heap, push


def _paragraphs(block: ClientBlock, *texts: str) -> None:
    with block.doc.transaction():
        for text in texts:
            p = pycrdt.XmlElement("paragraph")
            block.content.children.append(p)
            p.children.append(pycrdt.XmlText(text))


async def _found(admin: HeaperClient, heap: dict[str, Any], block: ClientBlock, q: str) -> bool:
    return block.id in await ids(admin, heap, query=q)


async def _line_rows(storage: Any) -> int:
    if storage.engine == "sqlite":
        return int(
            await storage.rt.read(
                lambda c: c.execute("SELECT COUNT(*) FROM block_lines").fetchone()[0]
            )
        )
    from heaper_trio.storage.postgres.runtime import tx

    async def run(c: Any) -> int:
        return int(await c.fetchval("SELECT COUNT(*) FROM block_lines"))

    return int(await storage._run(tx, run))


async def test_a_phrase_is_matched_within_one_paragraph_and_purges_leave_no_rows(
    admin: HeaperClient, server: RunningServer
) -> None:
    storage = server.services.storage
    heap = await new_heap(admin)
    before = await _line_rows(storage)
    block = ClientBlock()
    block.write("Garden plans")
    _paragraphs(block, "the quick brown", "fox jumps over")
    r = await push(admin, block.push_item(heap["id"]))
    assert r.json()["blocks"][0]["status"] == "created", r.text
    for q, found in [
        ("quick_brown", True),  # a phrase inside one paragraph
        ("quick_bro", True),  # its last word a prefix
        ("brown fox", True),  # two terms: each may be on its own line
        ("brown_fox", False),  # a phrase across two paragraphs: not matched
        ("plans_the", False),  # nor across title and text
        ("garden fox", True),
        ("garden nothing", False),
    ]:
        assert await _found(admin, heap, block, q) is found, q
    assert await _line_rows(storage) == before + 3  # a row per distinct line

    block.meta["deleted_at"] = 1_700_000_000_000
    await push(admin, block.push_item(heap["id"]))
    r = await admin.delete(f"/api/trash/{heap['id']}", json={"block_ids": [block.id]})
    assert r.json()["deleted"] == [block.id], r.text
    assert await _line_rows(storage) == before


async def test_edits_change_only_what_they_touch(admin: HeaperClient) -> None:
    """Typed words, a removed paragraph, a paragraph that occurs twice: search follows."""
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Log")
    _paragraphs(block, *(f"entry {i} of the day" for i in range(30)), "twice seen", "twice seen")
    await push(admin, block.push_item(heap["id"]))
    text = block.content.children[10].children[0]
    text.insert(0, "zebra ")
    await push(admin, block.push_item(heap["id"]))
    assert await _found(admin, heap, block, "zebra_entry_10")
    assert await _found(admin, heap, block, "entry_11")

    del block.content.children[10]  # the edited paragraph goes
    del block.content.children[30]  # one of the two equal ones goes, the other stays
    await push(admin, block.push_item(heap["id"]))
    assert not await _found(admin, heap, block, "zebra")
    assert await _found(admin, heap, block, "twice_seen")
    del block.content.children[29]
    block.title.children[0].children[0].insert(3, "book")
    await push(admin, block.push_item(heap["id"]))
    assert not await _found(admin, heap, block, "twice")
    assert await _found(admin, heap, block, "logbook")


@pytest.mark.engines("postgres")
async def test_a_document_with_more_words_than_one_tsvector_holds(admin: HeaperClient) -> None:
    """PostgreSQL caps a tsvector at 1 MB: indexing the whole text in one (0008) answered a
    push of such a document with a 500. Per line, each row holds a paragraph's words."""
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Many words")
    words = [f"w{i:06x}q" for i in range(100_000)]
    _paragraphs(block, *(" ".join(words[i : i + 40]) for i in range(0, len(words), 40)))
    r = await push(admin, block.push_item(heap["id"]))
    assert r.json()["blocks"][0]["status"] == "created", r.text
    assert await _found(admin, heap, block, "w01869fq")


@pytest.mark.engines("postgres")
async def test_one_paragraph_with_more_words_than_one_tsvector_holds(admin: HeaperClient) -> None:
    """A single line past the 1 MB tsvector cap (found in review: a 500 on every push of it).
    PostgreSQL indexes a line's first 100,000 characters; the block saves and is found."""
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("One long line")
    _paragraphs(block, " ".join(f"w{i:06x}q" for i in range(100_000)))
    r = await push(admin, block.push_item(heap["id"]))
    assert r.json()["blocks"][0]["status"] == "created", r.text
    assert await _found(admin, heap, block, "w00002aq")
