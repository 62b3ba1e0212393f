"""Issue 10, item 4: ``POST /api/block`` hides relations to trashed and purged blocks (both
engines, real server).

The contract: while a block is in the trash its relations are hidden but kept; the raw map
(``relations.raw``, the document's ``relations_v1``) may still show them. Restoring the block
shows them again. Another user's trash never shows through: ids of their blocks are listed as
the document names them, like ids that do not exist.
"""

from __future__ import annotations

from heaper_trio.client import HeaperClient

from .test_harden_relations import created, link_to
from .test_sync import ClientBlock, new_heap

TRASHED_AT = 1_700_000_000_000


def block(title: str, *, trashed: bool = False, gone_for_good: bool = False) -> ClientBlock:
    b = ClientBlock()
    b.write(title, block_type="tag")
    if trashed or gone_for_good:
        b.meta["deleted_at"] = TRASHED_AT
    if gone_for_good:
        b.meta["permanently_deleted_at"] = TRASHED_AT
    return b


async def relations(client: HeaperClient, block_id: str) -> dict[str, list[str]]:
    r = await client.post(f"/api/block/{block_id}")
    assert r.status_code == 200, r.text
    return dict(r.json()["relations"])


async def test_relations_to_trashed_and_purged_blocks_are_hidden(
    admin: HeaperClient, eve: HeaperClient
) -> None:
    mine, other_mine, hers = await new_heap(admin), await new_heap(admin), await new_heap(eve)
    alive, binned, purged = (
        block("Alive"),
        block("Binned", trashed=True),
        block("Purged", trashed=True),
    )
    far_binned = block("Far binned", trashed=True)  # in admin's other heap
    marked_gone = block("Marked gone", gone_for_good=True)
    foreign = block("Eve's binned", trashed=True)
    await created(admin, mine["id"], alive, binned, purged, marked_gone)
    await created(admin, other_mine["id"], far_binned)
    await created(eve, hers["id"], foreign)

    note = ClientBlock()
    note.write("Note", "see", mention=binned.id)
    for target in (alive, binned, purged, far_binned, marked_gone, foreign):
        note.tag_with(target.id)
    link_to(note, purged.id)
    link_to(note, alive.id)
    await created(admin, mine["id"], note)

    # Children and backlinks of ``alive``: a live one, a trashed one, one marked gone for good.
    child, binned_child, gone_child = ClientBlock(), ClientBlock(), ClientBlock()
    for c in (child, binned_child, gone_child):
        c.write("Child", "x", mention=alive.id)
        c.tag_with(alive.id)
    binned_child.meta["deleted_at"] = TRASHED_AT
    gone_child.meta["deleted_at"] = TRASHED_AT
    gone_child.meta["permanently_deleted_at"] = TRASHED_AT
    await created(admin, mine["id"], child, binned_child, gone_child)

    r = await admin.delete(f"/api/trash/{mine['id']}", json={"block_ids": [purged.id]})
    assert r.status_code == 200 and r.json()["deleted"] == [purged.id], r.text

    got = (await admin.post(f"/api/block/{note.id}")).json()
    rel = got["relations"]
    # Eve's block is kept: whether it is in her trash is none of admin's business.
    assert rel["tags"] == sorted([alive.id, foreign.id])
    assert rel["mentions"] == []
    assert rel["links"] == [alive.id]
    # The document keeps every relation, and the raw map shows them.
    assert set(rel["raw"]) == {
        alive.id,
        binned.id,
        purged.id,
        far_binned.id,
        marked_gone.id,
        foreign.id,
    }

    rel = await relations(admin, alive.id)
    assert rel["children"] == sorted([note.id, child.id])
    assert rel["backlinks"] == sorted([note.id, child.id])  # note links it

    # Restored from the trash, the block's relations show again.
    r = await admin.post(f"/api/trash/{mine['id']}/restore", json={"block_ids": [binned.id]})
    assert r.json()["restored"] == [binned.id], r.text
    rel = await relations(admin, note.id)
    assert rel["tags"] == sorted([alive.id, binned.id, foreign.id])
    assert rel["mentions"] == [binned.id]


async def test_a_block_with_only_hidden_relations_and_none_at_all(admin: HeaperClient) -> None:
    heap = await new_heap(admin)
    binned = block("Binned", trashed=True)
    lonely, note = ClientBlock(), ClientBlock()
    lonely.write("Alone")
    note.write("Note", "x", mention=binned.id)
    note.tag_with(binned.id)
    await created(admin, heap["id"], binned, lonely, note)
    empty = {"tags": [], "mentions": [], "links": [], "children": [], "backlinks": []}
    assert {k: v for k, v in (await relations(admin, note.id)).items() if k != "raw"} == empty
    assert {k: v for k, v in (await relations(admin, lonely.id)).items() if k != "raw"} == empty
    # The trashed block itself still opens, and what points at it is hidden (it is in the
    # trash, its backlinks and children are not).
    rel = await relations(admin, binned.id)
    assert rel["children"] == [note.id] and rel["backlinks"] == [note.id]
