"""``meta_v0.deleted_at`` is a client's JavaScript number: 1e300 must not become a 301-digit
integer for a 64-bit column (a 500). Times past 2**53 are dropped, as no exact millisecond."""

from __future__ import annotations

from heaper_trio.client import HeaperClient

from .test_sync import ClientBlock, new_heap, push


async def test_a_huge_deleted_at_is_not_a_500(admin: HeaperClient) -> None:
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Plans", "first draft")
    r = await push(admin, block.push_item(heap["id"]))
    assert r.json()["blocks"][0]["status"] == "created", r.text
    block.synced = block.doc.get_state()
    block.meta["deleted_at"] = 1e300  # cached now: the HTTP fast path and, on PG, the one call
    r = await push(admin, block.push_item(heap["id"]))
    assert r.status_code == 200, r.text
