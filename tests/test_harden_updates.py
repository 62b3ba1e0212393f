"""Issue 9, item 8: an update must decode exactly, with nothing left over, or nothing is stored.

yrs (and Yjs) read one update off the front of the bytes and ignore what follows, so a valid
update with megabytes of junk behind it used to be applied, and the whole payload stored and
served back. Unit properties for the check, then the HTTP push and ``/ws`` paths on a real
server (both engines).
"""

from __future__ import annotations

import base64
import os
from typing import Any

import pycrdt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pycrdt import Doc

from heaper_trio import crdt
from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.protocol import messages as m
from heaper_trio.protocol.split import decodes_exactly, split_update

from .conftest import assert_error
from .live_client import live_client
from .test_live_split import BUILD, FAST, _node, build, operations
from .test_sync import ClientBlock, b64, new_heap, push

pytestmark = [
    pytest.mark.filterwarnings("ignore:unclosed <socket:ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


def updates_of(ops: list[Any]) -> list[bytes]:
    """What clients send: each transaction's update, diffs against older states, the whole."""
    doc = build(ops)
    sent: list[bytes] = []
    other = Doc(client_id=4242)
    other.observe(lambda e: sent.append(bytes(e.update)))
    other.apply_update(doc.get_update())
    with other.transaction():
        other.get("map", type=pycrdt.Map)["late"] = "edit"
    sent += [
        doc.get_update(),
        doc.get_update(b"\x00"),
        other.get_update(doc.get_state()),
        crdt.EMPTY_UPDATE,
    ]
    return sent


def assert_refused(update: bytes) -> None:
    assert not decodes_exactly(update)
    with pytest.raises(crdt.InvalidUpdate):
        crdt.check_update(update)


@FAST
@given(operations)
def test_valid_updates_pass(ops: list[Any]) -> None:
    for update in updates_of(ops):
        assert decodes_exactly(update)
        crdt.check_update(update)


@FAST
@given(operations, st.binary(min_size=1, max_size=64))
def test_any_suffix_is_refused(ops: list[Any], suffix: bytes) -> None:
    for update in updates_of(ops):
        assert_refused(update + suffix)


@FAST
@given(operations, st.integers(1, 64))
def test_truncated_updates_are_refused(ops: list[Any], cut: int) -> None:
    update = build(ops).get_update()
    assert_refused(update[: max(0, len(update) - cut)])


@FAST
@given(operations, st.integers(16, 512))
def test_split_pieces_are_exact_updates(ops: list[Any], max_bytes: int) -> None:
    """What the live path sends out (split large states) would pass its own check."""
    for piece in split_update(build(ops).get_update(), max_bytes):
        assert decodes_exactly(piece)


def test_yjs_written_updates_pass() -> None:
    """npm yjs output (XmlHook, undefined, BigInt, subdocs, clients in Yjs's order), whole and
    split, passes; the same with a byte after it does not."""
    update = base64.b64decode(_node(BUILD))
    crdt.check_update(update)
    for piece in split_update(update, 300):
        crdt.check_update(piece)
    assert_refused(update + b"\x00")


def test_five_megabytes_after_an_update_cost_little() -> None:
    block = ClientBlock()
    block.write("Hello")
    assert_refused(block.pending() + os.urandom(5 * 1024 * 1024))


# --- a real server --------------------------------------------------------------------------


async def history(client: HeaperClient, block_id: str) -> list[dict[str, Any]]:
    r = await client.post(f"/api/block_updates/{block_id}")
    assert r.status_code == 200, r.text
    return list(r.json()["updates"])


async def pulled(client: HeaperClient, block_id: str) -> dict[str, Any]:
    r = await client.post("/api/sync/pull", json={"blocks": [{"block_id": block_id}]})
    return dict(r.json()["blocks"][0])


async def test_http_push_with_trailing_bytes_stores_nothing(admin: HeaperClient) -> None:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Kept")
    [created] = (await push(admin, block.push_item(heap["id"]))).json()["blocks"]
    assert created["status"] == "created"
    block.synced = block.doc.get_state()
    before, log = await pulled(admin, block.id), await history(admin, block.id)
    usage = (await admin.post("/api/me")).json()["usage"]

    block.meta["color"] = "red"
    junk = block.pending() + os.urandom(5 * 1024 * 1024)
    r = await push(
        admin,
        {"block_id": block.id, "workspace_id": heap["id"], "update": b64(junk), "sync_version": 1},
    )
    # A push none of whose blocks decodes is a 422 that still lists each block's status.
    assert_error(r, 422, "invalid_update")
    [answer] = r.json()["blocks"]
    assert answer["status"] == "invalid" and answer["error"] == "invalid_update", answer
    assert "update" not in answer
    assert await pulled(admin, block.id) == before  # same state, same sync_version
    assert await history(admin, block.id) == log
    assert (await admin.post("/api/me")).json()["usage"] == usage

    # A new block whose first update carries trailing bytes is not created at all.
    fresh = ClientBlock()
    fresh.write("Never")
    r = await push(
        admin,
        {
            "block_id": fresh.id,
            "workspace_id": heap["id"],
            "update": b64(fresh.pending() + b"\x00"),
        },
        block.push_item(heap["id"], sync_version=1),
    )
    assert r.status_code == 200, r.text
    [refused, ok] = r.json()["blocks"]
    assert refused["status"] == "invalid" and ok["status"] == "ok"
    assert (await pulled(admin, fresh.id))["status"] == "not_found"
    # ... while the very same update as before, without the tail, is stored as ever.
    assert len(await history(admin, block.id)) == len(log) + 1


async def test_live_update_with_trailing_bytes_is_refused(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Live")
    await push(admin, block.push_item(heap["id"]))
    block.synced = block.doc.get_state()
    before, log = await pulled(admin, block.id), await history(admin, block.id)
    address = f"{heap['id']}:{block.id}"
    async with live_client(server.url) as a:
        await a.sync(address, admin.access_token)
        await a.expect(m.SyncStep1)
        block.meta["x"] = 1
        await a.send(m.SyncUpdate(address, block.pending() + b"\x00\x00junk"))
        assert not (await a.expect(m.SyncStatus)).applied
        await a.send(m.SyncStep2(address, block.pending() + b"\x01"))
        assert not (await a.expect(m.SyncStatus)).applied
        assert await pulled(admin, block.id) == before
        assert await history(admin, block.id) == log
        # The connection stays usable: the exact update is stored and acknowledged.
        await a.send(m.SyncUpdate(address, block.pending()))
        assert (await a.expect(m.SyncStatus)).applied
    assert len(await history(admin, block.id)) == len(log) + 1
