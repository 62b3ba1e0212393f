"""Several server processes on one PostgreSQL database: live edits and events cross between
them through LISTEN/NOTIFY. Two servers in one test process stand in for two processes: each
has its own hub, its own LISTEN connection and its own process id, as separate processes do.
"""

from __future__ import annotations

import base64
import json
import statistics
import time
from typing import Any

import pycrdt
import pytest

from heaper_trio import crdt
from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.protocol import messages as m

from .live_client import live_client
from .test_sync import ClientBlock, new_heap, push

pytestmark = [pytest.mark.slow, pytest.mark.engines("postgres")]


def state_of(doc: pycrdt.Doc) -> dict[int, int]:
    """A document's state vector as {client: clock}: its encoding orders the clients as the
    document's hash map happens to, so equal states need not be equal bytes."""
    return crdt._parse_state_vector(doc.get_state())


async def test_live_edits_and_events_cross_processes_quickly(start_server: Any) -> None:
    a: RunningServer = await start_server()
    b: RunningServer = await start_server()
    async with HeaperClient(a.url) as client:
        await client.login()
        heap = await new_heap(client)
        block = ClientBlock()
        block.write("Shared between processes")
        await push(client, block.push_item(heap["id"]))
        block.synced = block.doc.get_state()
        address = f"{heap['id']}:{block.id}"
        async with live_client(a.url) as on_a, live_client(b.url) as on_b:
            await on_a.sync(address, client.access_token)
            initial = await on_b.sync(address, client.access_token)
            mirror = pycrdt.Doc()
            mirror.apply_update(initial)

            latencies = []
            for i in range(20):
                block.meta[f"edit{i}"] = i
                started = time.perf_counter()
                await on_a.send(m.SyncUpdate(address, block.pending()))
                block.synced = block.doc.get_state()
                got = await on_b.expect(m.SyncUpdate, timeout=2)
                latencies.append((time.perf_counter() - started) * 1000)
                mirror.apply_update(got.update)
                assert (await on_a.expect(m.SyncStatus)).applied
            assert state_of(mirror) == state_of(block.doc)
            print(
                f"\ncross-process delivery ms: p50 {statistics.median(latencies):.1f}, "
                f"max {max(latencies):.1f}"
            )
            assert statistics.median(latencies) < 100, latencies

            # Block events and user events cross too.
            await on_b.open("events", client.access_token)
            await on_b.send(
                m.Stateless("events", json.dumps({"type": "subscribe", "heap_ids": [heap["id"]]}))
            )
            await on_b.expect(m.Stateless, lambda x: '"subscribed"' in x.payload)
            other = ClientBlock()
            other.write("Born on A")
            await push(client, other.push_item(heap["id"]))
            evt = await on_b.expect(m.Stateless, lambda x: other.id in x.payload)
            assert json.loads(evt.payload)["type"] == "block.created"
            scan = {
                "type": "scan.done",
                "scan_id": "s",
                "heap_id": heap["id"],
                "path": "/p",
                "files_seen": 1,
                "files_done": 1,
                "bytes": 1,
            }
            a.services.hub.publish_user_event(client.user_id or "", scan)
            got_scan = await on_b.expect(m.Stateless, lambda x: '"scan.done"' in x.payload)
            assert json.loads(got_scan.payload) == scan


async def test_cached_documents_stay_right_when_another_process_writes(start_server: Any) -> None:
    """Each process keeps the blocks it pushed to in memory; a push from the other process
    moves the log on, so the next push here conflicts in storage and rebuilds from it."""
    a: RunningServer = await start_server()
    b: RunningServer = await start_server()
    async with HeaperClient(a.url) as on_a, HeaperClient(b.url, on_a.key) as on_b:
        await on_a.login()
        await on_b.login()
        heap = await new_heap(on_a)
        writers = [ClientBlock(), ClientBlock()]
        writers[1].id = writers[0].id
        for i in range(30):
            client, cb = (on_a, writers[0]) if i % 2 == 0 else (on_b, writers[1])
            cb.meta[f"m{i}"] = i
            r = await push(client, cb.push_item(heap["id"]))
            answer = r.json()["blocks"][0]
            assert answer["status"] in ("ok", "created"), answer
            cb.doc.apply_update(base64.b64decode(answer["update"]))
            cb.synced = cb.doc.get_state()
        r = await on_b.post("/api/sync/pull", json={"blocks": [{"block_id": writers[0].id}]})
        doc = pycrdt.Doc()
        doc.apply_update(base64.b64decode(r.json()["blocks"][0]["update"]))
        assert set(doc.get("meta_v0", type=pycrdt.Map).keys()) == {f"m{i}" for i in range(30)}
        assert a.services.documents.cache.hits + b.services.documents.cache.hits > 0
