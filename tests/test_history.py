"""Issue 10: version history that outlives compaction, versions, restore, compaction on request
and thinning; both engines, a real server and real clients."""

from __future__ import annotations

import time
from typing import Any

import pycrdt
import pytest

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.records.history import HistoryKind, HistoryRow
from heaper_trio.services import history_thinning as thinning
from heaper_trio.services.documents import COMPACT_EVERY

from .conftest import assert_error
from .test_sync import ClientBlock, b64, new_heap, push, unb64

DAY_MS = 24 * 3600 * 1000


def add_line(block: ClientBlock, text: str) -> None:
    with block.doc.transaction():
        p = pycrdt.XmlElement("paragraph")
        block.content.children.append(p)
        p.children.append(pycrdt.XmlText(text))


async def edited_block(client: HeaperClient, lines: int) -> tuple[str, ClientBlock]:
    """A block created with a title (seq 1), then one pushed line per seq: seq n + 1 adds
    line n."""
    heap = await new_heap(client)
    block = ClientBlock()
    block.write("Diary")
    for n in range(lines + 1):
        if n:
            add_line(block, f"line {n}")
        [answer] = (await push(client, block.push_item(heap["id"]))).json()["blocks"]
        assert answer["status"] in ("created", "ok"), answer
        block.synced = block.doc.get_state()
    return heap["id"], block


def text_of(state: bytes) -> str:
    doc = pycrdt.Doc()
    doc.apply_update(state)
    return str(doc.get("content_v0", type=pycrdt.XmlFragment))


async def updates(client: HeaperClient, block_id: str, **body: Any) -> dict[str, Any]:
    r = await client.post(f"/api/block_updates/{block_id}", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def version(client: HeaperClient, block_id: str, seq: int) -> dict[str, Any]:
    r = await client.post(f"/api/block_version/{block_id}", json={"seq": seq})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def all_entries(client: HeaperClient, block_id: str, **body: Any) -> list[dict[str, Any]]:
    return list((await updates(client, block_id, limit=1000, **body))["updates"])


async def test_history_outlives_compaction(admin: HeaperClient, server: RunningServer) -> None:
    _, block = await edited_block(admin, COMPACT_EVERY + 9)
    last = COMPACT_EVERY + 10
    stored = await server.services.storage.load_block(block.id)
    assert stored is not None and stored.snapshot_seq > 0  # compacted...
    assert len(stored.updates) < COMPACT_EVERY  # ...and loading reads only the rows after it
    page = await updates(admin, block.id, limit=1000)
    assert page["compacted_through"] == stored.snapshot_seq and page["last_seq"] == last
    assert [u["seq"] for u in page["updates"]] == list(range(1, last + 1))  # ...history kept
    assert all(u["author_id"] == admin.user_id and u["kind"] == "update" for u in page["updates"])
    assert text_of(unb64(page["state"])) == text_of(block.doc.get_update())

    early = await version(admin, block.id, 4)
    assert early["seq"] == 4 and early["title"] == "Diary"
    assert "line 3" in early["text"] and "line 4" not in early["text"]
    assert text_of(unb64(early["state"])) == "".join(
        f"<paragraph>line {n}</paragraph>" for n in (1, 2, 3)
    )
    assert early["created_at"] == page["updates"][3]["created_at"]
    latest = await version(admin, block.id, last)
    assert text_of(unb64(latest["state"])) == text_of(block.doc.get_update())


async def test_pages_and_bytes(admin: HeaperClient) -> None:
    _, block = await edited_block(admin, 24)  # seqs 1..25
    seen: list[int] = []
    body: dict[str, Any] = {"limit": 10}
    while True:
        page = await updates(admin, block.id, **body)
        seqs = [u["seq"] for u in page["updates"]]
        assert seqs == sorted(seqs) and len(seqs) <= 10 and "data" not in page["updates"][0]
        seen = seqs + seen
        if not page["has_more"]:
            assert page["next_before_seq"] is None
            break
        assert page["next_before_seq"] == seqs[0]
        body = {"limit": 10, "before_seq": page["next_before_seq"]}
    assert seen == list(range(1, 26))

    entries = await all_entries(admin, block.id, include_data=True, before_seq=8)
    assert [e["seq"] for e in entries] == list(range(1, 8))
    doc = pycrdt.Doc()
    for e in entries:
        assert len(unb64(e["data"])) == e["size"]
        doc.apply_update(unb64(e["data"]))
    assert str(doc.get("content_v0", type=pycrdt.XmlFragment)) == text_of(
        unb64((await version(admin, block.id, 7))["state"])
    )


async def test_restore_raises_the_version(admin: HeaperClient, server: RunningServer) -> None:
    heap_id, block = await edited_block(admin, COMPACT_EVERY + 4)
    last = COMPACT_EVERY + 5
    old = await version(admin, block.id, 3)
    r = await admin.post(f"/api/block_restore/{block.id}", json={"seq": 3})
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True, "block_id": block.id, "sync_version": 2}

    # HTTP clients on the old version: full state on pull, version_mismatch on push.
    [pulled] = (
        await admin.post(
            "/api/sync/pull",
            json={
                "blocks": [
                    {
                        "block_id": block.id,
                        "sync_version": 1,
                        "state_vector": b64(block.doc.get_state()),
                    }
                ]
            },
        )
    ).json()["blocks"]
    assert pulled["status"] == "version_mismatch" and pulled["sync_version"] == 2, pulled
    assert text_of(unb64(pulled["full_state"])) == text_of(unb64(old["state"]))
    add_line(block, "written on the old version")
    [pushed] = (await push(admin, block.push_item(heap_id, sync_version=1))).json()["blocks"]
    assert pushed["status"] == "version_mismatch" and pushed["sync_version"] == 2, pushed
    view = (await admin.post(f"/api/block/{block.id}")).json()
    assert "written on the old version" not in view["text"] and "line 3" not in view["text"]
    assert view["block"]["sync_version"] == 2 and "line 2" in view["text"]

    # A client on the new version continues from the restored state.
    fresh = ClientBlock(block.id)
    fresh.doc.apply_update(unb64(pulled["full_state"]))
    fresh.synced = fresh.doc.get_state()
    add_line(fresh, "after the restore")
    [pushed] = (await push(admin, fresh.push_item(heap_id, sync_version=2))).json()["blocks"]
    assert pushed["status"] == "ok" and pushed["sync_version"] == 2, pushed

    # The restore is history too, and so is everything before it.
    entries = await all_entries(admin, block.id)
    assert [e["seq"] for e in entries] == list(range(1, last + 3))
    restore = entries[last]
    assert restore["kind"] == "restore" and restore["sync_version"] == 2
    assert restore["author_id"] == admin.user_id
    assert all(e["sync_version"] == 1 for e in entries[:last])
    at_restore = await version(admin, block.id, last + 1)
    assert at_restore["text"] == old["text"] and at_restore["sync_version"] == 2
    before = await version(admin, block.id, last)
    assert f"line {last - 1}" in before["text"] and before["sync_version"] == 1
    assert "after the restore" in (await version(admin, block.id, last + 2))["text"]
    assert server.services.documents.cache.take(block.id) is not None  # the push cached it


async def test_restore_keeps_the_trash_state(admin: HeaperClient) -> None:
    """Decided: a restore replaces the content, never the trash state (both ways)."""
    heap_id, block = await edited_block(admin, 2)
    with block.doc.transaction():
        block.meta["deleted_at"] = int(time.time() * 1000)
    await push(admin, block.push_item(heap_id))
    r = await admin.post(f"/api/block_restore/{block.id}", json={"seq": 2})
    assert r.status_code == 200, r.text
    view = (await admin.post(f"/api/block/{block.id}")).json()
    assert view["block"]["deleted_at"] is not None and "line 2" not in view["text"]
    trash = (await admin.get(f"/api/trash/{heap_id}")).json()["blocks"]
    assert [b["block_id"] for b in trash] == [block.id]


async def test_compact_now(admin: HeaperClient, server: RunningServer) -> None:
    heap_id, block = await edited_block(admin, 5)
    before = (await admin.post(f"/api/block/{block.id}")).json()
    r = await admin.post("/api/ydoc/compact", json={"block_id": block.id})
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True, "block_id": block.id, "compacted": 6}
    again = await admin.post("/api/ydoc/compact", json={"block_id": block.id})
    assert again.json()["compacted"] == 0
    stored = await server.services.storage.load_block(block.id)
    assert stored is not None and stored.snapshot_seq == 6 and stored.updates == ()
    after = (await admin.post(f"/api/block/{block.id}")).json()
    assert after["text"] == before["text"]
    assert after["block"]["updated_at"] == before["block"]["updated_at"]  # no change to sync
    assert [e["seq"] for e in await all_entries(admin, block.id)] == list(range(1, 7))
    add_line(block, "after compaction")  # the cached document was dropped: pushes still apply
    [pushed] = (await push(admin, block.push_item(heap_id, sync_version=1))).json()["blocks"]
    assert pushed["status"] == "ok"
    assert "after compaction" in (await admin.post(f"/api/block/{block.id}")).json()["text"]


async def test_thinning_and_retention(admin: HeaperClient, server: RunningServer) -> None:
    heap_id, block = await edited_block(admin, 20)
    assert (await admin.post("/api/ydoc/compact", json={"block_id": block.id})).status_code == 200
    history = server.services.documents.history
    now = int(time.time() * 1000)
    assert await history.maintain(now) == 0  # nothing older than a day yet
    assert len(await all_entries(admin, block.id)) == 21

    await history.maintain(now + 2 * DAY_MS)  # past a day: one entry per hour
    entries = await all_entries(admin, block.id, include_data=True)
    assert 1 <= len(entries) <= 2  # an hour boundary may fall between the pushes
    assert entries[-1]["seq"] == 21 and entries[0]["first_seq"] == 1
    doc = pycrdt.Doc()
    for e in entries:
        doc.apply_update(unb64(e["data"]))
    assert str(doc.get("content_v0", type=pycrdt.XmlFragment)) == text_of(block.doc.get_update())
    kept = await version(admin, block.id, 21)
    assert kept["seq"] == 21 and "line 20" in kept["text"]
    inside = await admin.post(f"/api/block_version/{block.id}", json={"seq": 5})
    if len(entries) == 1:  # seq 5 is inside the merged entry: no version of its own any more
        assert_error(inside, 410, "version_gone")
    assert await history.maintain(now + 2 * DAY_MS) == 0  # thinned once, not again

    await history.maintain(now + 8 * DAY_MS)  # past a week: one per day
    assert len(await all_entries(admin, block.id)) <= 2
    await history.maintain(now + 31 * DAY_MS)  # past the retention: one base entry
    [base] = await all_entries(admin, block.id)
    assert base["kind"] == "snapshot" and base["seq"] == 21
    assert_error(
        await admin.post(f"/api/block_version/{block.id}", json={"seq": 20}), 410, "version_gone"
    )
    assert_error(
        await admin.post(f"/api/block_restore/{block.id}", json={"seq": 20}), 410, "version_gone"
    )
    assert "line 20" in (await version(admin, block.id, 21))["text"]

    add_line(block, "later")  # the block lives on; the base is where its history starts
    [pushed] = (await push(admin, block.push_item(heap_id))).json()["blocks"]
    assert pushed["status"] == "ok"
    assert "later" in (await version(admin, block.id, 22))["text"]
    r = await admin.post(f"/api/block_restore/{block.id}", json={"seq": 21})
    assert r.json()["sync_version"] == 2
    assert "later" not in (await admin.post(f"/api/block/{block.id}")).json()["text"]


async def test_not_yours_and_bad_seqs(
    admin: HeaperClient, eve: HeaperClient, server: RunningServer
) -> None:
    _, block = await edited_block(admin, 2)
    for path, body in (
        (f"/api/block_updates/{block.id}", {}),
        (f"/api/block_version/{block.id}", {"seq": 1}),
        (f"/api/block_restore/{block.id}", {"seq": 1}),
        ("/api/ydoc/compact", {"block_id": block.id}),
    ):
        assert_error(await eve.post(path, json=body), 404, "block_not_found")
        unknown = {k: "nobody-has-this" if v == block.id else v for k, v in body.items()}
        r = await admin.post(path.replace(block.id, "nobody-has-this"), json=unknown)
        assert_error(r, 404, "block_not_found")
    stored = await server.services.storage.load_block(block.id)
    assert stored is not None and stored.sync_version == 1 and stored.snapshot_seq == 0

    for route in ("block_version", "block_restore"):
        for seq in (0, -1, 2**60):
            r = await admin.post(f"/api/{route}/{block.id}", json={"seq": seq})
            assert_error(r, 400, "invalid_value")
        for bad in ("3", None, 1.5):
            r = await admin.post(f"/api/{route}/{block.id}", json={"seq": bad})
            assert_error(r, 400, "invalid_type")
        for seq in (4, 2**53 - 1):
            r = await admin.post(f"/api/{route}/{block.id}", json={"seq": seq})
            assert_error(r, 422, "seq_out_of_range")
        assert_error(await admin.post(f"/api/{route}/{block.id}", json={}), 400, "missing_field")
    for body in ({"limit": 0}, {"limit": 1001}, {"before_seq": 0}):
        r = await admin.post(f"/api/block_updates/{block.id}", json=body)
        assert_error(r, 400, "invalid_value")
    r = await admin.post(f"/api/block_updates/{block.id}", json={"include_data": "yes"})
    assert_error(r, 400, "invalid_type")
    assert [e["seq"] for e in await all_entries(admin, block.id, before_seq=2**50)] == [1, 2, 3]


async def test_purge_drops_the_history(admin: HeaperClient, server: RunningServer) -> None:
    heap_id, block = await edited_block(admin, 3)
    assert (await admin.post("/api/ydoc/compact", json={"block_id": block.id})).status_code == 200
    storage = server.services.storage
    assert len(await storage.history_page(block.id, 100, 100, False)) == 4
    with block.doc.transaction():
        block.meta["deleted_at"] = int(time.time() * 1000)
    await push(admin, block.push_item(heap_id))
    r = await admin.request("DELETE", f"/api/trash/{heap_id}", json={"block_ids": [block.id]})
    assert r.status_code == 200, r.text
    assert await storage.history_page(block.id, 100, 100, False) == []
    assert await storage.thin_candidates(2**62, 2**62, 2**62, 10) == []


# -- thinning, the pure plan ------------------------------------------------------------------

HOUR_MS = 3600 * 1000


def planned_rows() -> tuple[list[HistoryRow], list[str]]:
    """Eight rows of one block edited within one hour at T: updates 1-3, a restore at 4 (its
    full state: "restored"), updates 5-8; and each row's text as of its seq."""
    t = 1_780_000_000_000 // HOUR_MS * HOUR_MS
    block, texts, rows = ClientBlock(), [], []
    block.write("T")
    for seq in range(1, 9):
        if seq == 4:
            block = ClientBlock(block.id)
            block.write("T")
            add_line(block, "restored")
            data, kind = block.doc.get_update(), HistoryKind.restore
        else:
            add_line(block, f"line {seq}")
            data, kind = block.pending(), HistoryKind.update
        block.synced = block.doc.get_state()
        texts.append(text_of(block.doc.get_update()))
        rows.append(
            HistoryRow("b", seq, seq, kind, 0, 1 + (seq >= 4), t + seq, "u1", len(data), data)
        )
    return rows, texts


def state_at(rows: list[HistoryRow], seq: int) -> str:
    kept = [r for r in rows if r.seq <= seq]
    start = max((i for i, r in enumerate(kept) if r.base), default=0)
    doc = pycrdt.Doc()
    for r in kept[start:]:
        doc.apply_update(r.data or b"")
    return str(doc.get("content_v0", type=pycrdt.XmlFragment))


def test_plan_keeps_every_kept_point_and_never_merges_across_a_base() -> None:
    rows, texts = planned_rows()
    now = rows[0].created_at + 2 * DAY_MS  # past a day: per hour
    plan = thinning.plan(rows, thinning.Cuts.at(now, 30))
    assert plan.spans == [(1, 3, 3), (4, 8, 5)]
    first, second = plan.rows
    assert (first.first_seq, first.seq, first.kind, first.level) == (1, 3, HistoryKind.update, 1)
    assert (second.first_seq, second.seq, second.kind, second.sync_version) == (
        4,
        8,
        HistoryKind.restore,
        2,
    )
    assert state_at(plan.rows, 3) == texts[2] and state_at(plan.rows, 8) == texts[7]
    assert "restored" in texts[7] and "line 3" not in texts[7]
    assert thinning.plan(plan.rows, thinning.Cuts.at(now, 30)).spans == []  # done once

    past = thinning.Cuts.at(rows[0].created_at + 40 * DAY_MS, 30)  # past the retention
    [base] = thinning.plan(plan.rows, past).rows
    assert (base.kind, base.seq, base.level, base.first_seq) == (HistoryKind.snapshot, 8, 3, 1)
    assert state_at([base], 8) == texts[7]
    assert thinning.plan([base], past).spans == []


@pytest.mark.filterwarnings("ignore:unclosed <socket:ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_restore_replaces_open_live_rooms(
    admin: HeaperClient, server: RunningServer
) -> None:
    """Providers on the old ``:vN`` get the restored state and ``sync_version_mismatch``."""
    from heaper_trio.protocol import messages as m

    from .live_client import live_client
    from .test_live_restore import expect_replacement

    heap_id, block = await edited_block(admin, 3)
    old = await version(admin, block.id, 2)
    address = f"{heap_id}:{block.id}:v1"
    async with live_client(server.url) as live:
        assert "line 3" in text_of(await live.sync(address, admin.access_token))
        r = await admin.post(f"/api/block_restore/{block.id}", json={"seq": 2})
        assert r.json()["sync_version"] == 2
        state = await expect_replacement(live, address, 2)
        assert text_of(state) == text_of(unb64(old["state"])) and "line 2" not in text_of(state)
        add_line(block, "from the old version")
        await live.send(m.SyncUpdate(address, block.pending()))
        assert not (await live.expect(m.SyncStatus)).applied
    assert "from the old version" not in (await admin.post(f"/api/block/{block.id}")).json()["text"]


async def test_the_maintenance_task_thins_every_hour(autojump_clock: Any) -> None:
    """``maintain_forever`` (the housekeeping task) passes once an hour and outlives a failing
    pass."""
    import trio

    from heaper_trio.services.history import MAINTAIN_EVERY_S, HistoryService

    class Documents:
        storage = settings = None

    service = HistoryService(Documents())  # type: ignore[arg-type]
    passes: list[float] = []

    async def maintain(now_ms: int | None = None) -> int:
        passes.append(trio.current_time())
        if len(passes) == 2:
            raise RuntimeError("a failing pass")
        return 0

    service.maintain = maintain  # type: ignore[method-assign]
    with trio.move_on_after(2.5 * MAINTAIN_EVERY_S):
        await service.maintain_forever()
    start = passes[0]
    assert [p - start for p in passes] == [0, MAINTAIN_EVERY_S, 2 * MAINTAIN_EVERY_S]
