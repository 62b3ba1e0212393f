"""A chunk PUT that passed its checks just before ``complete`` discarded its upload must not
make the upload's folder again (found in review: it answered 200 and left a full-size sparse
``data`` file and a ``.done`` marker under ``uploads/`` that nothing ever removed)."""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any

import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.services import upload_layout

from .test_sync import new_heap


@pytest.mark.engines("sqlite")  # the local disk layout; the row check is one storage read
async def test_a_chunk_racing_complete_leaves_nothing_behind(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    heap = await new_heap(admin)
    block = str(uuid.uuid4())
    size = 64 * 1024
    data = os.urandom(2 * size)
    digest = hashlib.sha256(data).hexdigest()
    r = await admin.post(
        f"/api/upload/init/{heap['id']}/{block}",
        json={"size": len(data), "chunk_size": size, "hash": digest},
    )
    assert r.status_code == 200, r.text
    held, go = trio.Event(), trio.Event()
    write_chunk = upload_layout.write_chunk
    calls = 0

    async def held_first(*args: Any, **kwargs: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:  # a resent chunk 1: past its checks, its file not yet opened
            held.set()
            await go.wait()
        return await write_chunk(*args, **kwargs)

    monkeypatch.setattr(upload_layout, "write_chunk", held_first)
    base = f"/api/upload/chunk/{heap['id']}/{block}/{digest}"
    late: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:

        async def resend() -> None:
            late["r"] = await admin.put(f"{base}/1", content=data[size:])

        nursery.start_soon(resend)
        with trio.fail_after(10):
            await held.wait()
        assert (await admin.put(f"{base}/1", content=data[size:])).status_code == 200
        assert (await admin.put(f"{base}/0", content=data[:size])).status_code == 200
        done = await admin.post(f"/api/upload/complete/{heap['id']}/{block}/{digest}")
        assert done.status_code == 200, done.text
        go.set()
    assert late["r"].status_code == 404, late["r"].text
    assert late["r"].json()["error"] == "upload_not_found"
    uploads = server.services.files.uploads
    assert [p for p in uploads.rglob("*") if p.is_file()] == []
