"""Follow-ups in the folder-scan area (issue 9), over real servers and sockets.

* A reindex or regenerate works only on files the caller may read: a hash a block of theirs
  merely names (pushed in files_v0, bytes never sent) is skipped like an unknown one, and
  nothing of the real file (type, size, dimensions, name) reaches the claiming block or the
  job's report (item 2's rule, applied to the jobs).
* On PostgreSQL a scan batch announces its blocks to the other processes inside its own
  transaction, like block commits (item 11): a process that dies after the commit cannot
  leave another process's subscribers without them, and the bridge does not announce twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pycrdt
import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.protocol import messages as m

from .conftest import StartServer, assert_error
from .live_client import live_client
from .test_harden_file_grants import picture
from .test_scans import files_v0, finished, png, write
from .test_sync import ClientBlock, new_heap, push
from .test_uploads import sha


async def bare_claim(client: HeaperClient, heap_id: str, h: str, size: int) -> str:
    """A block naming the hash with nothing else known about it (no type, no dimensions),
    so anything a reindex copied from the real file would show."""
    block = ClientBlock()
    block.write("claimed", block_type="file")
    with block.doc.transaction():
        files = block.doc.get("files_v0", type=pycrdt.Map)
        files[f"{h}:{size}"] = pycrdt.Map({"hash": h, "name": "mine.bin", "file_size": size})
    r = await push(client, block.push_item(heap_id))
    assert r.status_code == 200 and r.json()["blocks"][0]["status"] == "created", r.text
    return block.id


async def reindex(client: HeaperClient, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post("/api/reindex_files", json=body)
    assert r.status_code == 200, r.text
    return await finished(client, r.json()["scan_id"])


async def test_reindex_and_regenerate_skip_a_hash_only_claimed(
    admin: HeaperClient, eve: HeaperClient, server: RunningServer
) -> None:
    data = picture()
    h, key = sha(data), f"{sha(data)}:{len(data)}"
    mine = await new_heap(admin)
    r = await admin.post(
        f"/api/upload/file/{mine['id']}/blk-a", files={"file": ("secret.png", data, "image/png")}
    )
    assert r.status_code == 200, r.text
    file_id = r.json()["file_id"]

    theirs = await new_heap(eve)
    block_id = await bare_claim(eve, theirs["id"], h, len(data))
    unknown = sha(b"no such file")
    await bare_claim(eve, theirs["id"], unknown, 12)
    for body in ({"heap_id": theirs["id"]}, {}):
        job = await reindex(eve, body)
        assert (
            job["state"],
            job["files_seen"],
            job["files_done"],
            job["skipped"],
            job["bytes"],
            job["errors"],
        ) == ("done", 2, 0, 2, 0, 0), job
        assert "secret" not in json.dumps(job) and job["current_path"] == "", job
    assert (await files_v0(eve, block_id))[key] == {
        "hash": h,
        "name": "mine.bin",
        "file_size": len(data),
    }
    for k in (h, file_id):
        assert_error(
            await eve.post(
                "/api/regenerate_file", json={"file_hash": k} if k == h else {"file_id": k}
            ),
            404,
            "file_not_found",
        )
    assert (await files_v0(eve, block_id))[key] == {
        "hash": h,
        "name": "mine.bin",
        "file_size": len(data),
    }

    # the owner's own reindex still reads it, and fixes what differs
    await server.services.documents.server_edit(
        admin.user_id or "",
        mine["id"],
        "blk-a",
        lambda doc: doc.patch_file_entry(key, {"width": 1}),
    )
    job = await reindex(admin, {"heap_id": mine["id"]})
    assert (job["files_done"], job["files_changed"], job["skipped"], job["bytes"]) == (
        1,
        1,
        0,
        len(data),
    ), job
    entry = (await files_v0(admin, "blk-a"))[key]
    assert (entry["width"], entry["height"], entry["mime_type"]) == (160, 160, "image/png")
    r = await admin.post("/api/regenerate_file", json={"file_hash": h})
    assert r.status_code == 200 and r.json()["width"] == 160, r.text
    assert (await files_v0(eve, block_id))[key] == {
        "hash": h,
        "name": "mine.bin",
        "file_size": len(data),
    }


@pytest.mark.engines("postgres")
async def test_a_scan_batch_is_announced_by_its_own_commit(
    start_server: StartServer, tmp_path: Path
) -> None:
    roots = tmp_path / "roots"
    tree = roots / "shots"
    for i in range(3):
        write(tree / f"d{i % 2}" / f"{i}.png", png((10 + i, 10)))
    a: RunningServer = await start_server(scan_roots=str(roots))
    b: RunningServer = await start_server(scan_roots=str(roots))
    # After its commits, A announces nothing about blocks (as if killed right after each
    # COMMIT); user events still go out. Only an announcement sent by the commit reaches B.
    storage: Any = a.services.storage
    send_after_commit = storage.announce
    late: list[str] = []

    async def user_events_only(payloads: list[str]) -> None:
        late.extend(p for p in payloads if "u" not in json.loads(p))
        await send_after_commit([p for p in payloads if "u" in json.loads(p)])

    storage.announce = user_events_only
    async with HeaperClient(a.url) as client:
        await client.login()
        heap = await new_heap(client)
        async with live_client(b.url) as on_b:
            await on_b.open("events", client.access_token)
            await on_b.send(
                m.Stateless("events", json.dumps({"type": "subscribe", "heap_ids": [heap["id"]]}))
            )
            await on_b.expect(m.Stateless, lambda x: '"subscribed"' in x.payload)
            r = await client.post(
                "/api/scan_folder", json={"heap_id": heap["id"], "path": str(tree)}
            )
            assert r.status_code == 200, r.text
            job = await finished(client, r.json()["scan_id"], timeout=30)
            assert (job["state"], job["files_done"]) == ("done", 3), job
            rows = await storage.unseen_scan_entries(heap["id"], str(tree), "-", "", 100)
            expected = {row.block_id for row in rows}
            assert len(expected) == 5  # 3 files, the 2 folders inside
            seen: set[str] = set()
            with trio.fail_after(10):
                while not expected <= seen:
                    evt = json.loads((await on_b.expect(m.Stateless, timeout=10)).payload)
                    if evt.get("type") == "block.created":
                        seen.add(str(evt.get("block_id")))
    assert late == []  # the bridge did not announce them a second time


async def test_the_api_document_lists_what_the_job_routes_answer(admin: HeaperClient) -> None:
    """regenerate_file answers 409 file_changed for a scanned file changed on disk
    (test_harden_scanned); reindex_files 403 heap_forbidden and 409 scan_running."""
    paths = (await admin.get("/api/openapi.json")).json()["paths"]
    assert {"404", "409"} <= set(paths["/api/regenerate_file"]["post"]["responses"])
    assert {"403", "409"} <= set(paths["/api/reindex_files"]["post"]["responses"])
    r = await admin.post("/api/reindex_files", json={"heap_id": "not-mine"})
    assert_error(r, 403, "heap_forbidden")
