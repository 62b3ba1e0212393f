"""Upload folders no upload row names (a crash between a discard's row and its folder, an
older bug) are removed by the expiry sweep once untouched for ``upload_expiry_hours``; a
folder with a row is kept however old, a young one whatever its row, and one touched while
the sweep asks the database (a late chunk writer) is kept too. Both engines."""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import pytest

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.services.upload_orphans import sweep_orphan_folders

from .test_harden_uploads import init, send_chunks
from .test_sync import new_heap
from .test_uploads import CHUNK, sha


async def test_upload_folders_without_a_row_are_swept_once_old(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = server.services.files
    heap_id = (await new_heap(admin))["id"]
    data = os.urandom(2 * CHUNK)
    await init(admin, heap_id, "blk-live", data)
    await send_chunks(admin, heap_id, "blk-live", sha(data), data, [0])
    upload = await files.storage.get_upload(heap_id, "blk-live", sha(data))
    assert upload is not None
    live = files.uploads / upload.id
    old = time.time() - files.settings.upload_expiry_hours * 3600 - 60

    def folder(name: str, mtime: float | None) -> Any:
        path = files.uploads / name
        path.mkdir(parents=True, exist_ok=True)
        (path / "data").write_bytes(b"x")
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        return path

    orphan = folder(uuid.uuid4().hex, old)
    young = folder(uuid.uuid4().hex, None)  # e.g. made a moment before its row
    touched = folder(uuid.uuid4().hex, old)
    os.utime(live, (old, old))  # a live upload untouched for as long: its row keeps it
    (files.uploads / "direct-x.part").write_bytes(b"")  # a file, not a folder: not ours here
    asked = files.storage.uploads_present

    async def late_writer_meanwhile(ids: list[str]) -> set[str]:
        (touched / "3.done").touch()  # a late chunk writer: the folder is young again
        return await asked(ids)

    monkeypatch.setattr(files.storage, "uploads_present", late_writer_meanwhile)
    assert await sweep_orphan_folders(files, time.time()) == 1
    assert not orphan.exists()
    assert live.exists() and young.exists() and touched.exists()
    assert (files.uploads / "direct-x.part").exists()
    monkeypatch.setattr(files.storage, "uploads_present", asked)
    another = folder(uuid.uuid4().hex, old)
    assert await files.expire(int(time.time() * 1000)) == 0  # the expiry sweep does it too
    assert not another.exists() and live.exists() and young.exists()
    await send_chunks(admin, heap_id, "blk-live", sha(data), data, [1])
    r = await admin.post(f"/api/upload/complete/{heap_id}/blk-live/{sha(data)}")
    assert r.status_code == 200, r.text
