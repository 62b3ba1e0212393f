"""Block ids are global, so another user's id in one's own heap must be refused; the refusal
itself must tell nothing more about that block (issue 9: no answer reveals another user's ids
or data). Over real servers and sockets, on both engines."""

from __future__ import annotations

import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.protocol import messages as m

from .live_client import UNCLOSED_SOCKETS, collect_closed_sockets, live_client  # noqa: F401 (autouse)
from .test_sync import ClientBlock, new_heap, push

pytestmark = [
    *UNCLOSED_SOCKETS,
]


async def _a_block_of(client: HeaperClient, edits: int = 3) -> tuple[str, ClientBlock]:
    """A heap and a block in it whose sync_version and content are A's own."""
    heap = (await new_heap(client, "A's"))["id"]
    block = ClientBlock()
    block.write("A's secret title")
    r = await push(client, block.push_item(heap))
    assert r.json()["blocks"][0]["status"] == "created", r.text
    for i in range(edits):
        block.synced = block.doc.get_state()
        block.write(f"edit {i}")
        assert (await push(client, block.push_item(heap))).json()["blocks"][0]["status"] == "ok"
    return heap, block


async def test_pushing_anothers_block_id_tells_nothing_of_it(
    admin: HeaperClient, eve: HeaperClient
) -> None:
    _, victim = await _a_block_of(admin)
    eves_heap = (await new_heap(eve, "Eve's"))["id"]
    probe = ClientBlock(victim.id)
    probe.write("probe")
    for extra in ({}, {"sync_version": 1}, {"sync_version": 99}):
        r = await push(eve, probe.push_item(eves_heap, **extra))
        assert r.status_code == 200, r.text
        [answer] = r.json()["blocks"]
        assert answer == {
            "block_id": victim.id,
            "status": "forbidden",
            "error": "block_in_other_heap",
        }, answer
    # a heap that is not one's own is refused the same way, with no version either
    r = await push(eve, probe.push_item("no-such-heap"))
    [answer] = r.json()["blocks"]
    assert answer == {"block_id": victim.id, "status": "forbidden", "error": "heap_forbidden"}


async def test_a_deleted_block_of_another_heap_is_refused_not_reported_deleted(
    admin: HeaperClient, eve: HeaperClient, server: RunningServer
) -> None:
    """A tombstone names its heap: pushing its id into another heap is block_in_other_heap,
    never "deleted" (which told Eve that id was Admin's and is gone)."""
    heap, victim = await _a_block_of(admin, edits=0)
    victim.synced = victim.doc.get_state()
    r = await admin.request("DELETE", f"/api/trash/{heap}")  # empty the trash: nothing yet
    assert r.status_code == 200, r.text
    with victim.doc.transaction():
        victim.meta["deleted_at"] = 1_700_000_000_000.0
    assert (await push(admin, victim.push_item(heap))).json()["blocks"][0]["status"] == "ok"
    r = await admin.request("DELETE", f"/api/trash/{heap}")
    assert r.status_code == 200, r.text
    assert victim.id in await server.services.storage.tombstones([victim.id])
    eves_heap = (await new_heap(eve, "Eve's"))["id"]
    probe = ClientBlock(victim.id)
    probe.write("probe")
    [answer] = (await push(eve, probe.push_item(eves_heap))).json()["blocks"]
    assert answer == {
        "block_id": victim.id,
        "status": "forbidden",
        "error": "block_in_other_heap",
    }, answer
    # its owner, in its own heap, still hears that it was deleted
    [answer] = (await push(admin, victim.push_item(heap))).json()["blocks"]
    assert answer["status"] == "deleted" and answer["error"] == "block_deleted", answer


@pytest.mark.parametrize("a_is_live", [False, True])
async def test_live_address_with_anothers_block_gets_nothing_of_it(
    admin: HeaperClient, eve: HeaperClient, server: RunningServer, a_is_live: bool
) -> None:
    """``<Eve's heap>:<Admin's block>`` is refused with block_in_other_heap and nothing of the
    block: also while Admin has that block open live (its room is then in memory)."""
    heap, victim = await _a_block_of(admin)
    eves_heap = (await new_heap(eve, "Eve's"))["id"]
    mine, theirs = f"{heap}:{victim.id}", f"{eves_heap}:{victim.id}"
    async with live_client(server.url) as a, live_client(server.url) as e:
        if a_is_live:
            assert b"secret" in await a.sync(mine, admin.access_token)
        await e.open(theirs, eve.access_token)
        with trio.move_on_after(2):
            await e.expect(m.PermissionDenied, lambda x: x.address == theirs)
        denied = [x for x in e.seen if isinstance(x, m.PermissionDenied)]
        assert [x.reason for x in denied] == ["block_in_other_heap"], e.seen
        for message in e.seen:
            assert b"secret" not in m.encode(message), message
            assert not isinstance(message, (m.SyncStep1, m.SyncStep2, m.SyncUpdate)), message
        if not a_is_live:  # Eve's refused room is gone: Admin opens its block as ever
            assert b"secret" in await a.sync(mine, admin.access_token)
        # and Eve's try changed nothing of Admin's document
        r = await admin.post("/api/sync/pull", json={"blocks": [{"block_id": victim.id}]})
        assert r.json()["blocks"][0]["status"] == "ok"


async def test_live_address_with_anothers_deleted_block_is_not_told_deleted(
    admin: HeaperClient, eve: HeaperClient, server: RunningServer
) -> None:
    """Over /ws too, another heap's purged block is ``block_in_other_heap``; only its own heap
    hears ``block_deleted``."""
    heap, victim = await _a_block_of(admin, edits=0)
    with victim.doc.transaction():
        victim.meta["deleted_at"] = 1_700_000_000_000.0
    assert (await push(admin, victim.push_item(heap))).json()["blocks"][0]["status"] == "ok"
    assert (await admin.request("DELETE", f"/api/trash/{heap}")).status_code == 200
    assert victim.id in await server.services.storage.tombstones([victim.id])
    eves_heap = (await new_heap(eve, "Eve's"))["id"]
    for client, address in ((eve, f"{eves_heap}:{victim.id}"), (admin, f"{heap}:{victim.id}")):
        async with live_client(server.url) as c:
            await c.open(address, client.access_token)
            with trio.fail_after(5):
                denied = await c.expect(m.PermissionDenied, lambda x, a=address: x.address == a)
            expected = "block_deleted" if client is admin else "block_in_other_heap"
            assert denied.reason == expected, c.seen
