"""A big text handed to storage as its segments (``records/text_segments.py``, issue 12 item 4):
the projection's per-segment strings, joined only when read, the changed range found by
skipping the segments two texts share. Sizes are lowered (4 children per segment, pieces of
200 characters from 2,000) so that a few KB stand for megabytes; every reader must see the
text the document holds, on both engines.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable
from typing import Any

import pycrdt
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from heaper_trio import crdt
from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.crdt import incremental
from heaper_trio.protocol import messages as m
from heaper_trio.records.text_segments import Segments, common_ends, raw_text
from heaper_trio.services.projection import projection_of
from heaper_trio.storage import text_pieces

from .live_client import UNCLOSED_SOCKETS, collect_closed_sockets, live_client  # noqa: F401 (autouse)
from .test_big_text import server_text, stored
from .test_query import ids
from .test_sync import ClientBlock, new_heap, push

# Multi-byte and astral characters (Yjs counts UTF-16 units, pycrdt UTF-8 bytes) everywhere.
LINE = "Zoë 東京 😀 naïve 𝄞 words {n}"


@pytest.fixture(autouse=True)
def small_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text_pieces, "BIG_TEXT", 2000)
    monkeypatch.setattr(text_pieces, "PIECE", 200)
    monkeypatch.setattr(incremental, "SEGMENT", 4)


def _naive_ends(a: str, b: str) -> tuple[int, int]:
    n, p = min(len(a), len(b)), 0
    while p < n and a[p] == b[p]:
        p += 1
    s = 0
    while s < n - p and a[-1 - s] == b[-1 - s]:
        s += 1
    return p, s


_PARTS = st.sampled_from(["", "\n", "a", "ab", "a\nb", "😀", "ë東", "\x00", "x" * 9])


@given(st.lists(_PARTS, max_size=8), st.lists(st.tuples(st.integers(0, 9), _PARTS), max_size=4))
def test_segments_read_as_their_join(parts: list[str], edits: list[tuple[int, str]]) -> None:
    """Slices, finds, equality and the common ends of texts in segments (sharing parts by
    identity, or equal parts that are other objects) are those of the joined strings."""
    other = list(parts)
    for at, part in edits:
        if at % 2 and other:
            other[at % len(other)] = "".join(list(part))  # equal content, maybe a new object
        else:
            other.insert(at % (len(other) + 1), part)
    a, b = Segments(tuple(parts)), Segments(tuple(other))
    ja, jb = "".join(parts), "".join(other)
    for x, y in ((a, b), (ja, b), (a, jb), (b, a)):
        assert common_ends(x, y) == _naive_ends(str(x), str(y))
        assert (x == y) == (str(x) == str(y))
    for i in range(-1, len(ja) + 2):
        for j in range(-1, len(ja) + 2):
            assert a[i:j] == ja[i:j]
            assert a.find("\n", i, j) == ja.find("\n", i, j)
            assert a.rfind("\n", i, j) == ja.rfind("\n", i, j)
        if 0 <= i < len(ja):
            assert a[i] == ja[i]
    assert a.nul == ("\x00" in ja) and str(a) == ja


class ParagraphsBlock(ClientBlock):
    """A block of many paragraphs, so its text spans many segments."""

    def __init__(self, count: int) -> None:
        super().__init__()
        with self.doc.transaction():
            self.meta["type"] = "document"
            title = pycrdt.XmlElement("paragraph")
            self.title.children.append(title)
            title.children.append(pycrdt.XmlText("Big"))
        self.add(0, [LINE.format(n=n) for n in range(count)])

    def add(self, at: int, texts: list[str]) -> None:
        with self.doc.transaction():
            for k, text in enumerate(texts):
                p = pycrdt.XmlElement("paragraph")
                self.content.children.insert(at + k, p)
                p.children.append(pycrdt.XmlText(text))

    def remove(self, start: int, end: int) -> None:
        del self.content.children[start:end]

    def count(self) -> int:
        return len(self.content.children)

    def body(self, k: int) -> Any:
        return self.content.children[k].children[0]

    def type_at(self, k: int, char: int, text: str) -> None:
        """Insert ``text`` before character ``char`` of paragraph ``k`` (-1: at its end)."""
        body = self.body(k)
        now = str(body)
        at = len(now.encode()) if char < 0 else len(now[:char].encode())  # pycrdt: UTF-8
        body.insert(at, text)

    def expected(self) -> str:
        """What the server must answer: its projection of the same document, stored."""
        return projection_of(crdt.BlockDocument.load(None, [self.doc.get_update()])).text

    async def send(self, client: HeaperClient, heap_id: str) -> None:
        r = await push(client, self.push_item(heap_id))
        assert r.status_code == 200 and r.json()["blocks"][0]["status"] in ("ok", "created")
        self.synced = self.doc.get_state()


async def test_segmented_edits_are_stored_and_read_whole(
    admin: HeaperClient, server: RunningServer
) -> None:
    """Edits at the first and last character, at segment seams, of astral characters, a NUL,
    paragraphs moved in and out (segments split and dropped), everything deleted, shrinking
    below the pieces threshold and growing again: after each, the block view, the listing,
    search, a pull from nothing and the stored pieces all hold the document's text."""
    heap = await new_heap(admin)
    block = ParagraphsBlock(80)  # ~2,600 characters in 20 segments: in pieces
    await block.send(admin, heap["id"])
    seen = 0

    async def check(marker: str | None) -> None:
        nonlocal seen
        want = block.expected()
        assert "\x00" not in want
        assert await server_text(admin, block.id) == want
        r = await admin.post("/api/heap", json={"heap_id": heap["id"]})
        [row] = [b for b in r.json()["blocks"] if b["block_id"] == block.id]
        assert row["text"] == want
        if marker is not None:
            assert await ids(admin, heap, query=marker) == [block.id]
        r = await admin.post("/api/sync/pull", json={"blocks": [{"block_id": block.id}]})
        [pulled] = r.json()["blocks"]
        fresh = ClientBlock(block.id)
        fresh.doc.apply_update(base64.b64decode(pulled["update"]))
        assert str(fresh.content) == str(block.content)
        inline, pieces = await stored(server, block.id)
        big = text_pieces.in_pieces(want, bool(seen) and not inline and bool(pieces))
        assert inline + "".join(b for _, b in pieces) == want
        assert (inline == "") == (big or not want)
        seen += 1

    await check("naïve")
    n = block.count
    edits: list[tuple[Callable[[], None], str | None]] = [
        (lambda: block.type_at(0, 0, "firstword "), "firstword"),
        (lambda: block.type_at(n() - 1, -1, " lastword"), "lastword"),
        (lambda: block.type_at(4, 0, "😀seamstart "), "seamstart"),  # a segment's first child
        (lambda: block.type_at(3, -1, " seamend𝄞"), "seamend"),  # the previous one's last
        (lambda: block.type_at(8, 2, "🎉"), None),  # an astral character inside a word
        (lambda: block.type_at(10, 3, "nul\x00here"), None),  # storage replaces the NUL
        (lambda: block.type_at(10, 0, "clean "), "clean"),  # the NUL's segment again
        (lambda: block.remove(3, 13), None),  # across segments
        (lambda: block.add(20, [f"pasted{k} 😀" for k in range(30)]), "pasted7"),  # a split
        (lambda: block.remove(0, n() - 1), "lastword"),  # one paragraph left: below
        (lambda: block.add(0, [LINE.format(n=k) for k in range(100)]), "words"),  # grown
        (lambda: block.remove(0, n()), None),  # everything
        (lambda: block.add(0, [LINE.format(n=k) for k in range(90)]), "naïve"),
    ]
    for edit, marker in edits:
        edit()
        await block.send(admin, heap["id"])
        await check(marker)
    assert await ids(admin, heap, query="firstword") == []


async def test_random_edits_across_segments(admin: HeaperClient, server: RunningServer) -> None:
    """Random typing, deleting and paragraph moves, several per push: the stored text and
    search rows follow the document (search finds each push's word, not the removed ones)."""
    heap = await new_heap(admin)
    block = ParagraphsBlock(70)
    await block.send(admin, heap["id"])
    rnd = random.Random(12)
    for k in range(25):
        for _ in range(rnd.randint(1, 3)):
            op, at = rnd.random(), rnd.randrange(block.count())
            if op < 0.5:
                block.type_at(at, rnd.choice([0, -1, 2]), rnd.choice(["ä", "😀", "x\n", " "]))
            elif op < 0.75 and block.count() > 20:
                block.remove(at, min(block.count(), at + rnd.randint(1, 9)))
            else:
                block.add(at, [f"{LINE.format(n=k)} {j}" for j in range(rnd.randint(1, 9))])
        block.type_at(rnd.randrange(block.count()), 0, f"push{k}word ")
        await block.send(admin, heap["id"])
        want = block.expected()
        assert await server_text(admin, block.id) == want
        assert await ids(admin, heap, query=f"push{k}word") == [block.id]
        inline, pieces = await stored(server, block.id)
        assert inline + "".join(b for _, b in pieces) == want


def test_the_projection_hands_over_segments_and_joins_on_read() -> None:
    """A push's projection keeps a many-children text in segments (no join, no NUL scan when
    no segment holds one); reading ``text`` joins it; a NUL makes the stored text a string
    with the NUL replaced."""
    block = ParagraphsBlock(40)
    doc = crdt.BlockDocument.load(None, [block.doc.get_update()])
    p = projection_of(doc)
    text = raw_text(p)
    assert isinstance(text, Segments) and len(text.parts) > 10
    assert p.text == str(text) == "\n".join(LINE.format(n=n) for n in range(40))
    block.type_at(5, 0, "a\x00b")
    doc.apply(block.doc.get_update(block.synced))
    p = projection_of(doc)
    assert isinstance(raw_text(p), str) and "a\ufffdb" in p.text and "\x00" not in p.text


async def test_concurrent_pushes_and_a_live_edit_of_one_block(
    admin: HeaperClient, server: RunningServer
) -> None:
    """Two HTTP pushes and a live edit over ``/ws`` into three segments of one big block at
    once: the server's text, search rows and pieces hold all three."""
    heap = await new_heap(admin)
    block = ParagraphsBlock(80)
    await block.send(admin, heap["id"])
    copies = []
    for _ in range(3):
        other = ParagraphsBlock.__new__(ParagraphsBlock)
        ClientBlock.__init__(other, block.id)
        other.doc.apply_update(block.doc.get_update())
        other.synced = other.doc.get_state()
        copies.append(other)
    copies[0].type_at(1, 0, "leftword ")
    copies[1].type_at(78, -1, " rightword")
    copies[2].type_at(40, 4, "liveword😀 ")
    address = f"{heap['id']}:{block.id}:v1"

    async def send(b: ParagraphsBlock) -> None:
        r = await push(admin, b.push_item(heap["id"]))
        assert r.status_code == 200 and r.json()["blocks"][0]["status"] == "ok", r.text

    async def live(b: ParagraphsBlock) -> None:
        async with live_client(server.url) as a:
            assert admin.access_token is not None
            await a.sync(address, admin.access_token)
            await a.send(m.SyncUpdate(address, b.pending()))
            assert (await a.expect(m.SyncStatus)).applied

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, copies[0])
        nursery.start_soon(send, copies[1])
        nursery.start_soon(live, copies[2])
    for other in copies:
        block.doc.apply_update(other.doc.get_update())
    want = block.expected()
    assert all(w in want for w in ("leftword", "rightword", "liveword😀"))
    assert await server_text(admin, block.id) == want
    for word in ("leftword", "rightword", "liveword"):
        assert await ids(admin, heap, query=word) == [block.id], word
    inline, pieces = await stored(server, block.id)
    assert (inline, "".join(b for _, b in pieces)) == ("", want)


async def test_a_push_into_a_big_text_joins_nothing_on_sqlite(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The point of segments: typing into a big text neither joins it (projection, NUL check,
    pieces, search rows) nor reads it back. PostgreSQL's writer joins it (not segment-aware)."""
    if server.services.storage.engine != "sqlite":
        pytest.skip("PostgreSQL's commit joins the text")
    heap = await new_heap(admin)
    block = ParagraphsBlock(80)
    await block.send(admin, heap["id"])
    joins: list[int] = []
    join = Segments.__str__

    def counted(self: Segments) -> str:
        if len(self) > 1000:  # the body, not the title
            joins.append(len(self))
        return join(self)

    monkeypatch.setattr(Segments, "__str__", counted)
    for k in range(3):
        block.type_at(20 * k + 5, 4, f"typed{k} ")
        await block.send(admin, heap["id"])
    assert joins == []
    monkeypatch.setattr(Segments, "__str__", join)
    assert await server_text(admin, block.id) == block.expected()
    assert await ids(admin, heap, query="typed2") == [block.id]
