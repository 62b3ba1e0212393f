"""An HTTP push of one block this process holds commits with no read ahead
(``services/push_unchecked.py``): the commit checks the heap's owner and the block's row
itself. Whatever it refuses must be answered as the checked way answers it, with nothing
stored and nothing of another user's document told; over a real socket, on both engines."""

from __future__ import annotations

from typing import Any

import pycrdt
import pytest

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.crdt.codec import decode_b64

from .test_live_push_checks import _last_seq, _sql
from .test_sync import ClientBlock, new_heap, push


async def _created(admin: HeaperClient, heap_id: str, text: str = "first draft") -> ClientBlock:
    block = ClientBlock()
    block.write("Plans", text)
    r = await push(admin, block.push_item(heap_id))
    assert r.json()["blocks"][0]["status"] == "created", r.text
    block.synced = block.doc.get_state()
    return block


def _edit(block: ClientBlock, text: str) -> None:
    """A paragraph added, as a client typing would."""
    block.content.children.append(pycrdt.XmlElement("paragraph", {}, [pycrdt.XmlText(text)]))


def _counted(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    storage = server.services.storage
    reads: list[str] = []
    for name in ("get_heap", "tombstones", "load_block", "push_reads", "load_blocks"):
        real = getattr(storage, name)

        async def counted(*args: Any, _real: Any = real, _name: str = name) -> Any:
            reads.append(_name)
            return await _real(*args)

        monkeypatch.setattr(storage, name, counted)
    return reads


async def test_a_push_of_one_cached_block_reads_nothing_ahead(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = _counted(server, monkeypatch)
    heap = await new_heap(admin)
    block = await _created(admin, heap["id"])
    other = await _created(admin, heap["id"], "another")
    reads.clear()
    for text in ("one", "two", "three"):
        _edit(block, text)
        r = await push(admin, block.push_item(heap["id"]))
        answer = r.json()["blocks"][0]
        assert answer["status"] == "ok" and answer["state_vector"], r.text
        block.synced = block.doc.get_state()
    assert reads == []
    stored = await server.services.storage.load_block(block.id)
    assert stored is not None and stored.last_seq == 4
    reads.clear()
    # two blocks, or a push that changes nothing, take the checked way: it reads first
    _edit(block, "four")
    _edit(other, "more")
    r = await push(admin, block.push_item(heap["id"]), other.push_item(heap["id"]))
    assert [b["status"] for b in r.json()["blocks"]] == ["ok", "ok"], r.text
    assert reads == ["push_reads"]
    reads.clear()
    block.synced = block.doc.get_state()
    r = await push(admin, block.push_item(heap["id"]))
    assert r.json()["blocks"][0]["status"] == "ok" and reads == ["push_reads"], r.text


@pytest.mark.parametrize(
    "change", ["another_user", "heap_given_away", "heap_deleted", "block_purged", "stale_version"]
)
async def test_what_the_commit_refuses_is_answered_as_the_checked_way_answers(
    admin: HeaperClient, eve: HeaperClient, server: RunningServer, change: str
) -> None:
    heap = await new_heap(admin)
    block = await _created(admin, heap["id"])
    _edit(block, "kept")
    r = await push(admin, block.push_item(heap["id"]))
    assert r.json()["blocks"][0]["status"] == "ok", r.text  # the document is cached now
    block.synced = block.doc.get_state()
    pusher, extra = admin, {}
    if change == "another_user":
        pusher = eve
    elif change == "block_purged":  # trashed the ordinary way, purged "elsewhere"
        block.meta["deleted_at"] = 1_700_000_000_000
        r = await push(admin, block.push_item(heap["id"]))
        assert r.json()["blocks"][0]["status"] == "ok", r.text
        block.synced = block.doc.get_state()
        assert await server.services.storage.purge_blocks(heap["id"], [block.id], 1) == [block.id]
    elif change == "heap_deleted":
        assert await server.services.storage.delete_heap(heap["id"])
    elif change == "heap_given_away":
        await _sql(
            server,
            "UPDATE heaps SET owner_id=? WHERE id=?",
            "UPDATE heaps SET owner_id=$1 WHERE id=$2",
            eve.user_id,
            heap["id"],
        )
    else:
        extra = {"sync_version": 7}
    before = await _last_seq(server, block.id)
    _edit(block, "must not be stored")
    r = await push(pusher, block.push_item(heap["id"], **extra))
    assert r.status_code == 200, r.text
    answer = r.json()["blocks"][0]
    expected = {
        "another_user": ("forbidden", "heap_forbidden"),
        "heap_given_away": ("forbidden", "heap_forbidden"),
        "heap_deleted": ("forbidden", "heap_forbidden"),
        "block_purged": ("deleted", "block_deleted"),
        "stale_version": ("version_mismatch", "sync_version_mismatch"),
    }[change]
    assert (answer["status"], answer.get("error")) == expected, answer
    assert "update" not in answer and "state_vector" not in answer  # nothing told
    assert await _last_seq(server, block.id) == before
    if change in ("another_user", "stale_version"):  # the owner's document is as it was
        block.synced = pycrdt.Doc().get_state()
        r = await admin.post("/api/sync/pull", json={"blocks": [{"block_id": block.id}]})
        pulled = pycrdt.Doc()
        pulled.apply_update(decode_b64(r.json()["blocks"][0]["update"]))
        text = str(pulled.get("content_v0", type=pycrdt.XmlFragment))
        assert "kept" in text and "must not be stored" not in text


async def test_a_foreign_push_that_changes_nothing_tells_nothing(
    admin: HeaperClient, eve: HeaperClient, server: RunningServer
) -> None:
    """No change means no commit, so no owner check in one: the checked way answers it."""
    heap = await new_heap(admin)
    block = await _created(admin, heap["id"])
    block.synced = pycrdt.Doc().get_state()  # the whole document again: nothing new
    r = await push(eve, block.push_item(heap["id"]))
    answer = r.json()["blocks"][0]
    assert (answer["status"], answer.get("error")) == ("forbidden", "heap_forbidden"), answer
    assert "update" not in answer and "state_vector" not in answer


async def test_trash_and_restore_are_named_from_the_cached_state(
    admin: HeaperClient, server: RunningServer
) -> None:
    """A cached document keeps whether it was in the trash (``DocumentBase.deleted``), so a
    push need not read it from the document; the change kinds must come out as before."""
    documents = server.services.documents
    heap = await new_heap(admin)
    block = ClientBlock()
    heard: list[str] = []
    documents.listeners.append(
        lambda committed: heard.extend(c.kind for c in committed if c.block_id == block.id)
    )
    block.write("Plans", "first draft")
    r = await push(admin, block.push_item(heap["id"]))
    block.synced = block.doc.get_state()
    steps: list[tuple[str, Any]] = [
        ("edit", "one"),
        ("deleted_at", 1_700_000_000_000),
        ("edit", "while trashed"),
        ("deleted_at", None),
        ("edit", "back"),
    ]
    for field, value in steps:
        if field == "edit":
            _edit(block, value)
        elif value is None:
            del block.meta["deleted_at"]
        else:
            block.meta["deleted_at"] = value
        r = await push(admin, block.push_item(heap["id"]))
        assert r.json()["blocks"][0]["status"] == "ok", r.text
        block.synced = block.doc.get_state()
    kinds = ["created", "changed", "deleted", "changed", "restored", "changed"]
    assert heard == kinds
    # the same with the cache emptied before each push (the document tells)
    heard.clear()
    documents.cache.evict(block.id)
    block.meta["deleted_at"] = 1_700_000_000_001
    r = await push(admin, block.push_item(heap["id"]))
    block.synced = block.doc.get_state()
    documents.cache.evict(block.id)
    del block.meta["deleted_at"]
    r = await push(admin, block.push_item(heap["id"]))
    assert r.json()["blocks"][0]["status"] == "ok", r.text
    assert heard == ["deleted", "restored"]
