"""The Heaper app's ``/ws`` document names (``block/<block_id>?workspaceId=<heap_id>``) over
real sockets, on both engines: the same block document as the contract's ``<heap>:<block>``
names (one room, edits both ways, stored like any update), the same per-document auth, and
``syncVersion`` checked like ``:vN``."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pycrdt
import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.protocol import messages as m
from heaper_trio.protocol.names import app_document_name

from .live_client import UNCLOSED_SOCKETS, collect_closed_sockets, live_client  # noqa: F401 (autouse)
from .test_live_ws import pull_update, title_of
from .test_sync import ClientBlock, new_heap, push

pytestmark = [
    pytest.mark.slow,
    *UNCLOSED_SOCKETS,
]


async def test_app_name_is_the_same_document_as_the_contract_name(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("From the app")
    app_name = f"block/{block.id}?workspaceId={heap['id']}"
    contract_name = f"{heap['id']}:{block.id}"
    async with live_client(server.url) as app, live_client(server.url) as other:
        assert await app.sync(app_name, admin.access_token) == b"\x00\x00"  # a new block
        await other.sync(contract_name, admin.access_token)
        await app.expect(m.SyncStep1, lambda x: x.address == app_name)
        await app.send(m.SyncUpdate(app_name, block.pending()))
        ack = await app.expect(m.SyncStatus)
        assert ack.address == app_name and ack.applied
        # acknowledged means stored, in the heap the name gave
        assert "From the app" in title_of(await pull_update(admin, block.id))
        r = await admin.post("/api/heap", json={"heap_id": heap["id"], "type": "document"})
        assert [b["id"] for b in r.json()["blocks"]] == [block.id]
        # the other name is the same room: the edit reaches it, under its own address
        got = await other.expect(m.SyncUpdate)
        assert got.address == contract_name and "From the app" in title_of(got.update)

        # and back: an edit on the contract's name reaches the app's, under the app's address
        peer = ClientBlock(block.id)
        peer.doc.apply_update(got.update)
        peer.synced = peer.doc.get_state()
        peer.meta["color"] = "red"
        await other.send(m.SyncUpdate(contract_name, peer.pending()))
        assert (await other.expect(m.SyncStatus)).applied
        seen = await app.expect(m.SyncUpdate)
        assert seen.address == app_name
        block.doc.apply_update(seen.update)
        assert block.meta["color"] == "red"


async def test_app_name_with_a_session_and_a_current_version(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Versioned")
    assert (await push(admin, block.push_item(heap["id"]))).json()["blocks"][0]["status"] == (
        "created"
    )
    block.synced = block.doc.get_state()
    # provider v4 appends "\0" + session id; syncVersion=1 is the block's version
    address = app_document_name(heap["id"], block.id, 1) + "\x00s-1"
    async with live_client(server.url) as a:
        assert "Versioned" in title_of(await a.sync(address, admin.access_token))
        block.meta["x"] = 1
        await a.send(m.SyncUpdate(address, block.pending()))
        assert (await a.expect(m.SyncStatus, lambda x: x.address == address)).applied
        assert not any(isinstance(x, m.Stateless) for x in a.seen)  # no mismatch
    doc = pycrdt.Doc()
    doc.apply_update(await pull_update(admin, block.id))
    assert doc.get("meta_v0", type=pycrdt.Map)["x"] == 1


async def test_app_names_are_authorized_like_contract_names(
    admin: HeaperClient, eve: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    eves_heap = await new_heap(eve, "Eve's")
    block = ClientBlock()
    block.write("Secret")
    await push(admin, block.push_item(heap["id"]))
    async with live_client(server.url) as a:
        # eve's token on the owner's heap: forbidden, and nothing of the block reaches her
        theirs = app_document_name(heap["id"], block.id)
        await a.open(theirs, eve.access_token)
        assert (await a.expect(m.PermissionDenied)).reason == "forbidden"
        # eve names the owner's block in her own heap: another heap's block
        moved = app_document_name(eves_heap["id"], block.id)
        await a.open(moved, eve.access_token)
        denied = await a.expect(m.PermissionDenied)
        assert denied.address == moved
        assert not any(isinstance(x, (m.SyncStep2, m.SyncUpdate)) for x in a.seen)
        for bad in (f"block/{block.id}", f"block/{block.id}?workspaceId=a&workspaceId=b"):
            await a.open(bad, admin.access_token)
            denied = await a.expect(m.PermissionDenied)
            assert (denied.address, denied.reason) == (bad, "invalid_document_name")
        await a.open(theirs, admin.access_token)  # the socket goes on; the owner gets it
        await a.expect(m.Authenticated, lambda x: x.address == theirs)
        step2 = await a.expect(m.SyncStep2, lambda x: x.address == theirs)
        assert "Secret" in title_of(step2.update)


LIVE_NODE = Path(__file__).resolve().parent / "live_node"


async def test_stock_provider_on_an_app_name(admin: HeaperClient, server: RunningServer) -> None:
    """The stock @hocuspocus/provider (what the app runs) on ``block/<id>?workspaceId=<heap>``
    beside one on ``<heap>:<id>``: one document, edits both ways, stored; a third on
    ``&syncVersion=1`` gets it without a mismatch. Skipped without node (as test_live_node)."""
    node = shutil.which("node")
    if not node or not (LIVE_NODE / "node_modules" / "@hocuspocus" / "provider").is_dir():
        if os.environ.get("HEAPER_TEST_REQUIRE_NODE") == "1":
            pytest.fail("HEAPER_TEST_REQUIRE_NODE=1 but node or tests/live_node is missing")
        pytest.skip("node and tests/live_node's packages are needed")
    heap, block = (await new_heap(admin))["id"], str(uuid.uuid4())
    args = {
        "ws_url": server.url.replace("http://", "ws://", 1) + "/ws",
        "http_url": server.url,
        "token": admin.access_token,
        "heap_id": heap,
        "block_id": block,
    }
    with trio.fail_after(45):
        done = await trio.run_process(
            [node, str(LIVE_NODE / "app_names.mjs")],
            stdin=json.dumps(args).encode(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    out = json.loads(done.stdout)
    assert out["authenticated"] == [["read-write"]] * 3 and out["failed"] == []
    assert out["app"] == out["contract"] == out["versioned"]
    assert out["app"]["title"] == "<paragraph>Written by the app</paragraph>"
    assert "And from the contract name." in out["app"]["content"]
    assert out["app"]["meta"] == {"type": "document", "via": "contract"}
    assert not any("sync_version_mismatch" in str(x) for x in out["stateless"])
    # stored in the heap the app's name gave
    r = await admin.post("/api/heap", json={"heap_id": heap, "type": "document"})
    assert [b["id"] for b in r.json()["blocks"]] == [block]
    doc = pycrdt.Doc()
    doc.apply_update(await pull_update(admin, block))
    assert "And from the contract name." in str(doc.get("content_v0", type=pycrdt.XmlFragment))
