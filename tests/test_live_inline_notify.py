"""Issue 12, item 4: a small commit's updates travel inline in the cross-process NOTIFY, so a
process holding the document applies them without rereading storage; large ones, gaps and
anything malformed fall back to the pointer and its reread."""

from __future__ import annotations

import base64
import json
from typing import Any

import pycrdt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.protocol import announce as a
from heaper_trio.protocol import messages as m

from .live_client import live_client
from .test_live_processes import state_of
from .test_sync import ClientBlock, new_heap, push

ids = st.text(max_size=30)
ints = st.integers(min_value=0, max_value=2**53 - 1)


@settings(max_examples=25, deadline=None)
@given(ids, ids, ints, ints, st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=5))
def test_inline_updates_round_trip(
    origin: str, block: str, seq: int, version: int, updates: list[bytes]
) -> None:
    text = a.inline_updates(origin, block, seq, version, updates)
    assert text is not None
    assert a.decode(text) == a.UpdatesAnnouncement(origin, block, seq, version, tuple(updates))


def test_updates_too_large_for_a_notify_are_not_inlined() -> None:
    assert a.inline_updates("o", "b", 1, 1, [b"x" * 5300]) is None  # 7.07 KB of base64 + keys
    assert a.inline_updates("o", "b", 1, 1, [b"x" * 5200, b"y" * 100]) is None
    assert a.inline_updates("o", "b", 1, 1, []) is None
    text = a.inline_updates("o", "b", 1, 1, [b"x" * 4000])
    assert text is not None and len(text) <= a.MAX_PAYLOAD_BYTES


@pytest.mark.parametrize(
    "data",
    [
        {"o": "p", "b": "b", "s": 1, "v": 1, "d": []},  # no updates
        {"o": "p", "b": "b", "s": 1, "v": 1, "d": ["***"]},  # not base64
        {"o": "p", "b": "b", "s": "1", "v": 1, "d": ["AA=="]},
        {"o": "p", "b": "b", "s": 1, "v": True, "d": ["AA=="]},
        {"o": "p", "b": 7, "s": 1, "v": 1, "d": ["AA=="]},
        {"o": "p", "b": "b", "s": 1, "v": 1, "d": "AA=="},
        {"o": "p", "b": "b", "s": 1, "v": 1, "d": [1]},
    ],
)
def test_malformed_inline_updates_are_refused(data: dict[str, Any]) -> None:
    with pytest.raises(a.MalformedAnnouncement):
        a.decode(json.dumps(data))


@pytest.mark.slow
@pytest.mark.engines("postgres")
async def test_small_remote_commits_apply_without_a_reread_large_ones_reread(
    start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    one: RunningServer = await start_server()
    two: RunningServer = await start_server()
    hub = two.services.hub
    reads: list[str] = []
    real_load = hub.storage.load_block

    async def counting(block_id: str) -> Any:
        reads.append(block_id)
        return await real_load(block_id)

    async with HeaperClient(one.url) as client:
        await client.login()
        heap = await new_heap(client)
        block = ClientBlock()
        block.write("Inline between processes")
        await push(client, block.push_item(heap["id"]))
        block.synced = block.doc.get_state()
        address = f"{heap['id']}:{block.id}"
        async with live_client(one.url) as on_one, live_client(two.url) as on_two:
            await on_one.sync(address, client.access_token)
            mirror = pycrdt.Doc()
            mirror.apply_update(await on_two.sync(address, client.access_token))
            monkeypatch.setattr(hub.storage, "load_block", counting)
            for i in range(5):
                block.meta[f"edit{i}"] = i
                await on_one.send(m.SyncUpdate(address, block.pending()))
                block.synced = block.doc.get_state()
                mirror.apply_update((await on_two.expect(m.SyncUpdate, timeout=5)).update)
                assert (await on_one.expect(m.SyncStatus)).applied
            assert state_of(mirror) == state_of(block.doc)
            assert reads == []  # every edit came inline

            block.meta["big"] = base64.b64encode(bytes(range(256)) * 40).decode()  # ~13.7 KB
            await on_one.send(m.SyncUpdate(address, block.pending()))
            block.synced = block.doc.get_state()
            mirror.apply_update((await on_two.expect(m.SyncUpdate, timeout=5)).update)
            assert state_of(mirror) == state_of(block.doc)
            assert reads == [block.id]  # too big for a NOTIFY: the pointer's reread
