"""Issue 9, item 3: relations never cross into another user's heaps (both engines, real server).

Block ids are guessable, so eve can write admin's ids into her own blocks (as tags, mentions,
page links) and can even create a block under an id that admin's blocks point at but admin
never pushed. None of that may show up in admin's answers, change what admin's queries return,
or tell eve whether an id exists.
"""

from __future__ import annotations

from typing import Any

import pycrdt

from heaper_trio.client import HeaperClient

from .test_sync import ClientBlock, new_heap, push


def link_to(block: ClientBlock, target: str) -> None:
    """A ``pagelink`` in the body, as Heaper's editor writes it."""
    para = block.content.children.append(pycrdt.XmlElement("paragraph"))
    para.children.append(pycrdt.XmlElement("pagelink", {"blockKey": target}))


async def created(client: HeaperClient, heap_id: str, *blocks: ClientBlock) -> None:
    r = await push(client, *(b.push_item(heap_id) for b in blocks))
    assert [a["status"] for a in r.json()["blocks"]] == ["created"] * len(blocks), r.text


async def ids_of(client: HeaperClient, heap_id: str, **filters: Any) -> set[str]:
    r = await client.post("/api/heap", json={"heap_id": heap_id, **filters})
    assert r.status_code == 200, r.text
    return {b["id"] for b in r.json()["blocks"]}


async def test_backlinks_and_children_stay_in_the_owners_heaps(
    admin: HeaperClient, eve: HeaperClient
) -> None:
    mine, other_mine, hers = await new_heap(admin), await new_heap(admin), await new_heap(eve)
    tag, note, far = ClientBlock(), ClientBlock(), ClientBlock()
    tag.write("Secret project", block_type="tag")
    note.write("Plan", "see", mention=tag.id)
    note.tag_with(tag.id)
    far.write("Elsewhere")
    far.tag_with(tag.id)
    await created(admin, mine["id"], tag, note)
    await created(admin, other_mine["id"], far)  # admin's own other heap still counts

    spy = ClientBlock()
    spy.write("Spy", "ping", mention=tag.id)
    spy.tag_with(tag.id)
    link_to(spy, tag.id)
    await created(eve, hers["id"], spy)

    r = await admin.post(f"/api/block/{tag.id}")
    assert r.status_code == 200, r.text
    rel = r.json()["relations"]
    assert rel["children"] == sorted([note.id, far.id])
    assert rel["backlinks"] == [note.id]
    assert spy.id not in r.text

    # Eve sees her own writing (her document holds the ids) and nothing of admin's side.
    r = await eve.post(f"/api/block/{spy.id}")
    rel = r.json()["relations"]
    assert rel["children"] == rel["backlinks"] == []
    assert note.id not in r.text and far.id not in r.text
    assert (await eve.post(f"/api/block/{tag.id}")).status_code == 404

    # And admin's block that points at eve's block does not list it back to eve.
    back = ClientBlock()
    back.write("Back", "x", mention=spy.id)
    back.tag_with(spy.id)
    await created(admin, mine["id"], back)
    r = await eve.post(f"/api/block/{spy.id}")
    assert r.json()["relations"]["children"] == r.json()["relations"]["backlinks"] == []
    assert back.id not in r.text


async def test_tag_filter_follows_only_this_heaps_tag_edges(
    admin: HeaperClient, eve: HeaperClient
) -> None:
    mine, hers = await new_heap(admin), await new_heap(eve)
    tag, sub, deep = ClientBlock(), ClientBlock(), ClientBlock()
    tag.write("Work", block_type="tag")
    sub.write("Reports", block_type="tag")
    sub.tag_with(tag.id)
    deep.write("Q3 report")
    deep.tag_with(sub.id)
    # ``orphan`` is tagged with an id admin never pushed (a tag still on another device).
    orphan, squatted = ClientBlock(), ClientBlock()
    orphan.write("Private diary")
    orphan.tag_with(squatted.id)
    await created(admin, mine["id"], tag, sub, deep, orphan)
    before = await ids_of(admin, mine["id"], tag=tag.id)
    assert before == {sub.id, deep.id}
    unlinked_before = await ids_of(admin, mine["id"], unlinked=True)
    assert orphan.id in unlinked_before  # its only tag names no block (yet)

    # Eve takes the missing id in her heap and tags it with admin's tag: a tag -> tag edge
    # that, if followed, would pull admin's "Private diary" under admin's "Work".
    squatted.write("Bridge", block_type="tag")
    squatted.tag_with(tag.id)
    tagged_too = ClientBlock()
    tagged_too.write("Eve's note")
    tagged_too.tag_with(tag.id)
    tagged_too.tag_with(sub.id)
    await created(eve, hers["id"], squatted, tagged_too)

    assert await ids_of(admin, mine["id"], tag=tag.id) == before
    assert await ids_of(admin, mine["id"], tag=sub.id) == {deep.id}
    count = (
        await admin.post("/api/heap_count", json={"heap_id": mine["id"], "tag": tag.id})
    ).json()
    assert count["count"] == 2
    # Eve's block existing does not make admin's orphan "linked" (which would tell admin's
    # queries, and through timing of ids anyone, that the id exists elsewhere).
    assert await ids_of(admin, mine["id"], unlinked=True) == unlinked_before

    # Eve's own query with admin's tag id sees only her own blocks.
    assert await ids_of(eve, hers["id"], tag=tag.id) == {squatted.id, tagged_too.id}
    assert await ids_of(eve, hers["id"], tag=squatted.id) == set()


async def test_other_listings_carry_no_foreign_ids(admin: HeaperClient, eve: HeaperClient) -> None:
    """changed_blocks, delta, heap listing, trash and stats of admin's heap never hold eve's
    block ids, whatever eve's blocks point at."""
    mine, hers = await new_heap(admin), await new_heap(eve)
    tag, gone = ClientBlock(), ClientBlock()
    tag.write("Tag", block_type="tag")
    gone.write("Binned")
    gone.tag_with(tag.id)
    gone.meta["deleted_at"] = 1_700_000_000_000
    await created(admin, mine["id"], tag, gone)
    spy = ClientBlock()
    spy.write("Spy", "x", mention=tag.id)
    spy.tag_with(tag.id)
    spy.tag_with(gone.id)
    await created(eve, hers["id"], spy)

    answers = [
        await admin.post("/api/heap/changed_blocks", json={"heap_id": mine["id"], "marker": 0}),
        await admin.get("/api/sync/delta", params={"workspace_id": mine["id"], "since": 0}),
        await admin.post("/api/heap", json={"heap_id": mine["id"]}),
        await admin.post("/api/heap", json={"heap_id": mine["id"], "trash": True}),
        await admin.get(f"/api/trash/{mine['id']}"),
        await admin.get(f"/api/heap/stats/{mine['id']}"),
        await admin.post(f"/api/block/{gone.id}"),
    ]
    for r in answers:
        assert r.status_code == 200, (r.request.url, r.text)
        assert spy.id not in r.text and hers["id"] not in r.text, r.request.url
