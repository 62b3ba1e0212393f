"""Big block texts (issue 12 item 4): SQLite keeps a text of ``text_parts.BIG_TEXT`` characters
or more in pieces and rewrites only the pieces an edit changed (migration 0022). Whatever the
storage, every reader sees the whole text: the block view, queries, search, the trash. The
threshold and piece size are lowered here so that a few KB stand for megabytes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import pycrdt
import pytest
import trio

from heaper_trio import crdt
from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.settings import Settings
from heaper_trio.storage import text_pieces
from heaper_trio.storage.migrate import migration_scripts
from heaper_trio.storage.postgres import commit_batch
from heaper_trio.storage.postgres import documents as pg_documents
from heaper_trio.storage.postgres.runtime import tx
from heaper_trio.storage.sqlite import documents, text_parts

from .test_harden_file_grants import raw_sql
from .test_query import ids
from .test_storage import NOW, opened
from .test_storage_contract import add_users, change
from .test_storage_contract import new_heap as storage_heap
from .test_sync import ClientBlock, new_heap, push

# Multi-byte characters everywhere, so that piece boundaries fall inside UTF-8 sequences.
LINE = "Zoë 東京 😀 naïve ünïcödé words {n}\n"


@pytest.fixture(autouse=True)
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text_pieces, "BIG_TEXT", 2000)
    monkeypatch.setattr(text_pieces, "PIECE", 200)


class BigBlock(ClientBlock):
    """A block whose body is one XmlText the test edits at will."""

    def __init__(self) -> None:
        super().__init__()
        with self.doc.transaction():
            self.meta["type"] = "document"
            title = pycrdt.XmlElement("paragraph")
            self.title.children.append(title)
            title.children.append(pycrdt.XmlText("Big"))
            p = pycrdt.XmlElement("paragraph")
            self.content.children.append(p)
            p.children.append(pycrdt.XmlText(""))

    @property
    def body(self) -> Any:
        return self.content.children[0].children[0]

    def _at(self, k: int) -> int:
        """pycrdt counts UTF-8 bytes here: the offset of character ``k`` (negative: from the
        end)."""
        return len(str(self.body)[:k].encode())

    def insert(self, k: int, text: str) -> None:
        self.body.insert(self._at(k), text)

    def delete(self, start: int, end: int | None = None) -> None:
        a, b = self._at(start), len(str(self.body).encode()) if end is None else self._at(end)
        del self.body[a:b]

    def expected(self) -> str:
        """The text the server must answer: the projection of the same document."""
        return crdt.BlockDocument.load(None, [self.doc.get_update()]).project().text

    async def send(self, client: HeaperClient, heap_id: str) -> None:
        r = await push(client, self.push_item(heap_id))
        assert r.status_code == 200 and r.json()["blocks"][0]["status"] in ("ok", "created")
        self.synced = self.doc.get_state()


def lines(first: int, count: int) -> str:
    return "".join(LINE.format(n=n) for n in range(first, first + count))


async def server_text(client: HeaperClient, block_id: str) -> str:
    r = await client.post(f"/api/block/{block_id}", json={})
    assert r.status_code == 200, r.text
    return str(r.json()["text"])


async def stored(server: RunningServer, block_id: str) -> tuple[str, list[tuple[int, str]]]:
    """(blocks.text, pieces (pos, body)) as committed, on either engine."""
    storage: Any = server.services.storage
    if storage.engine == "sqlite":
        with sqlite3.connect(storage.rt.path) as c:  # a connection of our own
            n, text = c.execute("SELECT n, text FROM blocks WHERE id=?", (block_id,)).fetchone()
            return text, text_parts.pieces(c, n)

    async def read(c: Any) -> tuple[str, list[tuple[int, str]]]:
        text = await c.fetchval("SELECT text FROM blocks WHERE id=$1", block_id)
        rows = await c.fetch(
            "SELECT pos, body FROM block_text_parts WHERE block_id=$1 ORDER BY pos", block_id
        )
        return text, [(r[0], r[1]) for r in rows]

    result: tuple[str, list[tuple[int, str]]] = await storage._run(tx, read)
    return result


async def test_every_reader_sees_the_whole_text_through_every_edit(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    block = BigBlock()
    block.insert(0, lines(0, 120))  # ~4,000 characters: in pieces
    await block.send(admin, heap["id"])

    async def check(in_pieces: bool) -> None:
        want = block.expected()
        assert await server_text(admin, block.id) == want
        found = await ids(admin, heap, has_content=True)
        assert (block.id in found) == bool(want)
        r = await admin.post("/api/heap", json={"heap_id": heap["id"]})
        [row] = [b for b in r.json()["blocks"] if b["block_id"] == block.id]
        assert row["text"] == want
        inline, pieces = await stored(server, block.id)
        assert (inline, "".join(b for _, b in pieces)) == (("", want) if in_pieces else (want, ""))
        assert all(0 < len(b) <= 2 * text_pieces.PIECE for _, b in pieces)

    await check(True)
    before = await stored(server, block.id)
    block.insert(len(block.expected()) // 2, "typed ")  # one word in the middle
    await block.send(admin, heap["id"])
    await check(True)
    after = await stored(server, block.id)
    # a word rewrites one piece, not the text
    assert len(set(after[1]) - set(before[1])) == 1
    assert len(set(before[1]) - set(after[1])) == 1
    assert await ids(admin, heap, query="typed") == [block.id]

    edits: list[Callable[[], None]] = [
        lambda: block.insert(0, "¡"),  # the first character
        lambda: block.insert(len(str(block.body)), "終"),  # the last
        lambda: block.delete(0, 1),
        lambda: block.delete(len(str(block.body)) - 1),
        lambda: block.delete(100, 1900),  # a big stretch
        lambda: block.insert(50, lines(500, 60)),  # a paste of many pieces
    ]
    for edit in edits:
        edit()
        await block.send(admin, heap["id"])
        await check(True)
    assert await ids(admin, heap, query="words") == [block.id]

    # shrinks under half the threshold: back in the row; grows again: in pieces again
    block.delete(300)
    await block.send(admin, heap["id"])
    await check(False)
    block.insert(10, lines(900, 100))
    await block.send(admin, heap["id"])
    await check(True)
    assert await ids(admin, heap, query="naïve") == [block.id]
    # everything deleted
    block.delete(0)
    await block.send(admin, heap["id"])
    await check(False)
    assert await ids(admin, heap, query="naïve") == []


async def test_concurrent_pushes_to_one_big_block(
    admin: HeaperClient, make_client: Callable[..., HeaperClient], server: RunningServer
) -> None:
    """Two writers edit the same big text at once; the server's text is their merge."""
    heap = await new_heap(admin)
    block = BigBlock()
    block.insert(0, lines(0, 150))
    await block.send(admin, heap["id"])
    other = BigBlock.__new__(BigBlock)
    ClientBlock.__init__(other, block.id)
    other.doc.apply_update(block.doc.get_update())
    other.synced = other.doc.get_state()
    block.insert(10, "left edit ")
    other.insert(len(str(other.body)) - 5, "right edit ")
    results: list[Any] = []

    async def send(b: BigBlock) -> None:
        results.append(await push(admin, b.push_item(heap["id"])))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, block)
        nursery.start_soon(send, other)
    assert all(r.status_code == 200 for r in results)
    block.doc.apply_update(other.doc.get_update())
    assert await server_text(admin, block.id) == block.expected()
    assert "left edit" in block.expected() and "right edit" in block.expected()


async def test_a_failed_commit_leaves_pieces_and_row_as_they_were(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pieces and the row change in one transaction: a commit that fails after the pieces
    were written (as a kill -9 would cut it) leaves the old text whole."""
    heap = await new_heap(admin)
    block = BigBlock()
    block.insert(0, lines(0, 120))
    await block.send(admin, heap["id"])
    before = await stored(server, block.id)

    def crash(*_: Any) -> None:
        raise RuntimeError("cut between the pieces and the row")

    monkeypatch.setattr(documents, "write_block_files", crash)
    monkeypatch.setattr(pg_documents, "write_block_files", crash)
    monkeypatch.setattr(commit_batch, "write_lines_many", crash)
    block.insert(500, "lost ")
    r = await push(admin, block.push_item(heap["id"]))
    assert r.status_code >= 500 or r.json()["blocks"][0]["status"] != "ok"
    assert await stored(server, block.id) == before
    monkeypatch.undo()
    monkeypatch.setattr(text_pieces, "BIG_TEXT", 2000)
    monkeypatch.setattr(text_pieces, "PIECE", 200)
    r = await push(admin, block.push_item(heap["id"]))
    assert r.json()["blocks"][0]["status"] == "ok", r.text
    assert await server_text(admin, block.id) == block.expected()


async def test_another_writer_between_pushes_is_read_back(
    admin: HeaperClient, server: RunningServer
) -> None:
    """The writer keeps the texts it wrote by token; pieces written by anyone else (another
    process on the same file) carry another token and are read back, whatever their cut."""
    heap = await new_heap(admin)
    block = BigBlock()
    block.insert(0, lines(0, 120))
    await block.send(admin, heap["id"])
    text = "".join(b for _, b in (await stored(server, block.id))[1])
    recut = [(i, text[i : i + 77]) for i in range(0, len(text), 77)]  # same text, new token
    storage: Any = server.services.storage
    if storage.engine == "sqlite":
        with sqlite3.connect(storage.rt.path) as c:
            n = c.execute("SELECT n FROM blocks WHERE id=?", (block.id,)).fetchone()[0]
            c.execute("DELETE FROM block_text_parts WHERE block_n=?", (n,))
            c.executemany(
                "INSERT INTO block_text_parts (block_n, pos, body) VALUES (?, ?, ?)",
                [(n, pos, body) for pos, body in recut],
            )
            c.execute("UPDATE blocks SET text_parts = text_parts + 1 WHERE n=?", (n,))
    else:

        async def write(c: Any) -> None:
            await c.execute("DELETE FROM block_text_parts WHERE block_id=$1", block.id)
            await c.executemany(
                "INSERT INTO block_text_parts (block_id, pos, body) VALUES ($1, $2, $3)",
                [(block.id, pos, body) for pos, body in recut],
            )
            await c.execute("UPDATE blocks SET text_parts = text_parts + 1 WHERE id=$1", block.id)

        await storage._run(tx, write)
    block.insert(len(lines(0, 30)), "moved ")
    await block.send(admin, heap["id"])
    assert await server_text(admin, block.id) == block.expected()
    assert await ids(admin, heap, query="moved") == [block.id]


async def test_the_migration_moves_snapshots_out_of_the_rows(
    make_settings: Callable[..., Settings],
) -> None:
    """0022 on a database with compacted blocks: their snapshots move to block_snapshots and
    load as before."""
    async with opened(make_settings()) as storage:
        if storage.engine != "sqlite":
            pytest.skip("SQLite only")
        await add_users(storage)
        await storage_heap(storage, "h1")
        await storage.commit_changes([change("b1", "h1", updates=(b"1", b"2", b"3"))], NOW)
        compact = change("b1", "h1", expected=3, updates=(b"4",), compacted=(b"S3", 3))
        await storage.commit_changes([compact], NOW + 5)
        script = {v: sql for v, _, sql in migration_scripts(storage.engine)}[22]
        move = [
            s for s in script.split(";") if "block_snapshots (block_n" in s or "SET snapshot" in s
        ]
        assert len(move) == 2
        await raw_sql(  # as before 0022: the snapshot in the row
            storage,
            "UPDATE blocks SET snapshot = (SELECT snapshot FROM block_snapshots "
            "WHERE block_n = blocks.n)",
            "DELETE FROM block_snapshots",
        )
        await raw_sql(storage, *move)
        loaded = await storage.load_block("b1")
        assert loaded is not None and loaded.snapshot == b"S3" and loaded.updates == (b"4",)
        rt: Any = storage
        with sqlite3.connect(rt.rt.path) as c:
            assert (
                c.execute("SELECT COUNT(*) FROM blocks WHERE snapshot IS NOT NULL").fetchone()[0]
                == 0
            )


async def test_pieces_and_snapshots_go_with_their_block(
    make_settings: Callable[..., Settings],
) -> None:
    """Emptying the trash and deleting a heap leave no pieces or snapshots behind."""
    big = lines(0, 100)
    async with opened(make_settings()) as storage:
        await add_users(storage)
        for heap_id in ("h1", "h2"):
            await storage_heap(storage, heap_id)
            first = change(f"{heap_id}-b", heap_id, updates=(b"1",), text=big)
            await storage.commit_changes([first], NOW)
            compact = change(
                f"{heap_id}-b", heap_id, expected=1, updates=(b"2",), text=big + "!",
                compacted=(b"S", 1), deleted_at=NOW,
            )  # fmt: skip
            await storage.commit_changes([compact], NOW + 1)
        assert len(await pieces_left(storage)) == 2
        assert await storage.purge_blocks("h1", ["h1-b"], NOW + 2) == ["h1-b"]
        assert await pieces_left(storage) == {"h2-b"}
        assert await storage.delete_heap("h2")
        assert await pieces_left(storage) == set()


async def pieces_left(storage: Any) -> set[str]:
    """The blocks that have pieces (SQLite: or a snapshot row) stored."""
    if storage.engine == "sqlite":
        with sqlite3.connect(storage.rt.path) as c:
            rows = c.execute(
                "SELECT DISTINCT block_n FROM block_text_parts UNION "
                "SELECT block_n FROM block_snapshots"
            ).fetchall()
            ids = c.execute("SELECT n, id FROM blocks").fetchall()
        known = dict(ids)
        return {known.get(r[0], f"orphan {r[0]}") for r in rows}

    async def read(c: Any) -> set[str]:
        rows = await c.fetch("SELECT DISTINCT block_id FROM block_text_parts")
        return {r[0] for r in rows}

    result: set[str] = await storage._run(tx, read)
    return result
