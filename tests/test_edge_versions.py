"""Issue 10, item 1: sync versions a client may not know (both engines, real server).

The contract: a pull with no ``sync_version`` or 0 (a client that never saw the block) gets the
full state and the current version; a push creates a new block at 1 whatever it carried; a
push to an existing block with a stale version or 0 is a version mismatch and nothing of it is
applied. Numbers outside 0 .. 2**53-1 stay a clean 400.
"""

from __future__ import annotations

from typing import Any

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient

from .conftest import assert_error
from .test_live_ws import title_of
from .test_sync import ClientBlock, b64, new_heap, push, unb64


async def raise_version(server: RunningServer, block_id: str, version: int) -> None:
    """What a restore does to a block's version, done in the database (no route for it yet)."""
    storage: Any = server.services.storage
    if storage.engine == "sqlite":

        def bump(c: Any) -> None:
            c.execute("UPDATE blocks SET sync_version=? WHERE id=?", (version, block_id))

        await storage.rt.write(bump)
    else:
        from heaper_trio.storage.postgres.runtime import tx

        async def bump_pg(c: Any) -> None:
            await c.execute("UPDATE blocks SET sync_version=$1 WHERE id=$2", version, block_id)

        await storage._run(tx, bump_pg)
    server.services.documents.cache.evict(block_id)


async def pull_one(client: HeaperClient, **item: Any) -> dict[str, Any]:
    r = await client.post("/api/sync/pull", json={"blocks": [item]})
    assert r.status_code == 200, r.text
    [answer] = r.json()["blocks"]
    return dict(answer)


async def stored_block(admin: HeaperClient, title: str) -> tuple[str, ClientBlock]:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write(title, "body")
    [answer] = (await push(admin, block.push_item(heap["id"]))).json()["blocks"]
    assert answer["status"] == "created", answer
    block.synced = block.doc.get_state()
    return heap["id"], block


async def test_pull_with_version_0_gets_the_full_state(admin: HeaperClient) -> None:
    _, block = await stored_block(admin, "Never seen")
    for extra in ({}, {"state_vector": b64(block.doc.get_state())}):
        answer = await pull_one(admin, block_id=block.id, sync_version=0, **extra)
        assert answer["status"] == "version_mismatch", answer
        assert answer["sync_version"] == 1 and "update" not in answer
        assert "Never seen" in title_of(unb64(answer["full_state"]))
    # An unknown block is still not_found, whatever the version.
    answer = await pull_one(admin, block_id="nobody-has-this", sync_version=0)
    assert answer["status"] == "not_found"


async def test_pull_without_version(admin: HeaperClient, server: RunningServer) -> None:
    _, block = await stored_block(admin, "No version told")
    # Never replaced (version 1): every state is a continuation; no state vector, everything.
    answer = await pull_one(admin, block_id=block.id)
    assert answer["status"] == "ok" and answer["sync_version"] == 1
    assert "No version told" in title_of(unb64(answer["update"]))
    answer = await pull_one(admin, block_id=block.id, state_vector=b64(block.doc.get_state()))
    assert answer["status"] == "ok" and unb64(answer["update"]) in (b"\x00\x00", b"\x00\x01\x00")

    # Replaced (a restore raised it to 3): a client that tells no version gets the full state.
    await raise_version(server, block.id, 3)
    for extra in ({}, {"state_vector": b64(block.doc.get_state())}):
        answer = await pull_one(admin, block_id=block.id, **extra)
        assert answer["status"] == "version_mismatch" and answer["sync_version"] == 3, answer
        assert "No version told" in title_of(unb64(answer["full_state"]))
    for told in (0, 1, 2, 4, 2**53 - 1):
        answer = await pull_one(admin, block_id=block.id, sync_version=told)
        assert answer["status"] == "version_mismatch" and answer["sync_version"] == 3, told
        assert answer["full_state"]
    answer = await pull_one(admin, block_id=block.id, sync_version=3)
    assert answer["status"] == "ok" and "full_state" not in answer


async def test_push_creates_at_1_whatever_it_carried(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    for told in ({"sync_version": 0}, {}, {"sync_version": 9}, {"sync_version": 2**53 - 1}):
        block = ClientBlock()
        block.write("New")
        [answer] = (await push(admin, block.push_item(heap["id"], **told))).json()["blocks"]
        assert answer["status"] == "created" and answer["sync_version"] == 1, (told, answer)
        stored = await server.services.storage.load_block(block.id)
        assert stored is not None and stored.sync_version == 1


async def test_push_to_an_existing_block_with_0_or_stale_version(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap_id, block = await stored_block(admin, "Existing")
    with block.doc.transaction():
        block.meta["edited"] = 1
    before = await server.services.storage.load_block(block.id)
    for told in (0, 2):
        [answer] = (await push(admin, block.push_item(heap_id, sync_version=told))).json()["blocks"]
        assert answer["status"] == "version_mismatch" and answer["sync_version"] == 1, answer
        assert answer["error"] == "sync_version_mismatch"
        assert await server.services.storage.load_block(block.id) == before

    # After a replacement, the old version is stale too; the current one, or none, applies.
    await raise_version(server, block.id, 3)
    before = await server.services.storage.load_block(block.id)
    for told in (0, 1):
        [answer] = (await push(admin, block.push_item(heap_id, sync_version=told))).json()["blocks"]
        assert answer["status"] == "version_mismatch" and answer["sync_version"] == 3, answer
        assert await server.services.storage.load_block(block.id) == before
    [answer] = (await push(admin, block.push_item(heap_id, sync_version=3))).json()["blocks"]
    assert answer["status"] == "ok" and answer["sync_version"] == 3, answer
    after = await server.services.storage.load_block(block.id)
    assert after is not None and after.last_seq == before.last_seq + 1


async def test_versions_out_of_range_stay_a_clean_400(admin: HeaperClient) -> None:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Bounds")
    for value, code in (
        (-1, "invalid_value"),
        (2**53, "invalid_value"),
        (2**63, "invalid_value"),
        (2**64 + 1, "invalid_value"),
        (-(2**63) - 1, "invalid_value"),
        (0.5, "invalid_type"),
        ("0", "invalid_type"),
        (None, "invalid_type"),
    ):
        r = await push(admin, block.push_item(heap["id"], sync_version=value))
        assert_error(r, 400, code)
        r = await admin.post(
            "/api/sync/pull", json={"blocks": [{"block_id": block.id, "sync_version": value}]}
        )
        assert_error(r, 400, code)
    assert (await admin.post(f"/api/block/{block.id}")).status_code == 404  # nothing stored
