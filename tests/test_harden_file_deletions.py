"""A deleted file's bytes go even when their removal is interrupted (``FileStore
.forget_unreferenced``, ``finish_interrupted_deletions``). The row is dropped first, with a
deletion mark; the bytes are removed next, and the mark ends last. Before, a removal that
failed (EIO, the bucket unreachable) ended the mark all the same and failed the request
after the blocks were gone, and a process killed between the drop and the removal left its
mark to the claim sweep, which forgot it: either way the bytes of a deleted file stayed on
disk for ever, with nothing left to say they should go. Now the mark stays until the bytes
are gone, and the claim sweep (both engines, at start and every 10 minutes) finishes what it
names. Real servers over real sockets, both engines."""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

import heaper_trio.services.file_store as file_store_module
from heaper_trio.app import run_server
from heaper_trio.client import HeaperClient, KeyPair
from heaper_trio.services.file_claims import DELETION_TTL_MS
from heaper_trio.settings import Settings

from .test_storage import opened
from .test_storage_claim_sweep import rows
from .test_sync import new_heap

DATA = b"bytes of a file that is deleted for good\n" * 300
DIGEST = hashlib.sha256(DATA).hexdigest()


async def upload(client: HeaperClient, heap_id: str, block_id: str) -> None:
    r = await client.post(
        f"/api/upload/file/{heap_id}/{block_id}", files={"file": ("f.txt", DATA, "text/plain")}
    )
    assert r.status_code == 200, r.text


async def test_a_failed_removal_answers_success_and_the_sweep_removes_the_bytes(
    start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server()
    files = server.services.files
    stored = files.store_path(DIGEST)
    real_unlink = Path.unlink
    failed: list[Path] = []

    def failing_unlink(self: Path, missing_ok: bool = False) -> None:
        if self == stored and not failed:  # the disk fails once, at the bytes' removal
            failed.append(self)
            raise OSError(errno.EIO, "Input/output error")
        real_unlink(self, missing_ok=missing_ok)

    async with HeaperClient(server.url) as client:
        await client.login()
        heap = await new_heap(client)
        await upload(client, heap["id"], "blk-1")
        assert stored.exists()
        monkeypatch.setattr(Path, "unlink", failing_unlink)

        r = await client.delete(f"/api/heap/{heap['id']}")
        assert r.status_code == 200, r.text  # the heap is gone: that is what was asked
        assert failed and stored.exists()
        assert (await rows(files.storage))[1] == {DIGEST}  # still to be removed
        r = await client.get(f"/api/file/{DIGEST}/raw/f.txt")
        assert r.status_code == 404, r.text

        # a minute later (the mark's TTL; a live deletion is never taken over), the sweep
        monkeypatch.setattr(file_store_module, "DELETION_TTL_MS", 0)
        await trio.sleep(0.01)
        assert await files.finish_interrupted_deletions() == 1
        assert not stored.exists()
        assert await rows(files.storage) == (set(), set())
        assert await files.finish_interrupted_deletions() == 0

        # the same bytes uploaded again: stored again, and nothing waits
        second = await new_heap(client, "again")
        with trio.fail_after(10):
            await upload(client, second["id"], "blk-2")
        r = await client.get(f"/api/file/{DIGEST}/raw/f.txt")
        assert (r.status_code, r.content) == (200, DATA), r.text[:200]


async def test_bytes_a_killed_process_left_mid_deletion_go_at_the_next_start(
    make_settings: Callable[..., Settings], start_server: Any
) -> None:
    """The state a SIGKILL between the drop and the removal leaves (the drop committed, its
    mark from over a minute ago, the bytes still there), then a start: its first sweep
    finishes the deletion. A mark whose hash was uploaded again meanwhile keeps its bytes."""
    key = KeyPair.generate()
    kept = b"other bytes, uploaded again after their deletion was cut short\n" * 100
    kept_digest = hashlib.sha256(kept).hexdigest()
    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        first = await nursery.start(partial(run_server, make_settings(), shutdown=stop))
        files = first.services.files
        async with HeaperClient(first.url, key) as client:
            await client.login()
            heap = await new_heap(client)
            await upload(client, heap["id"], "blk-1")
            r = await client.post(
                f"/api/upload/file/{heap['id']}/blk-2",
                files={"file": ("k.txt", kept, "text/plain")},
            )
            assert r.status_code == 200, r.text
        stored, kept_path = files.store_path(DIGEST), files.store_path(kept_digest)
        stop.set()
    async with opened(make_settings()) as storage:  # the killed process's drop, long ago
        long_ago = await storage.clock_ms() - DELETION_TTL_MS - 1000
        assert await storage.blocks_holding_files(heap["id"])
        await storage.delete_heap(heap["id"])
        dropped = await storage.drop_unreferenced_files(
            [DIGEST, kept_digest], now=long_ago, claims_after=long_ago
        )
        assert sorted(f.hash for f in dropped) == sorted([DIGEST, kept_digest])
        for record in dropped:  # one of them uploaded again since (its row is back)
            if record.hash == kept_digest:
                await storage.add_file(record)
        assert (await rows(storage))[1] == {DIGEST, kept_digest}
    assert stored.exists() and kept_path.exists()

    second = await start_server()
    with trio.fail_after(10):
        while stored.exists():
            await trio.sleep(0.02)
    assert kept_path.exists()
    with trio.fail_after(10):
        while (await rows(second.services.storage))[1]:
            await trio.sleep(0.02)


async def test_removals_stop_before_their_marks_go_stale(
    start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``DELETION_TTL_MS`` an upload no longer waits for a mark: it would find bytes a
    slow deletion has yet to remove (a bucket's DELETE retried for minutes), keep them and
    record its file, and the late removal would leave that file without bytes. So no removal
    starts ``REMOVAL_BUDGET_S`` (half the TTL) after the mark's stamp: the rest keep their
    marks for the next sweep, which stamps them again. Before, every removal of the batch ran
    however late. The disk's clock is made to run past the budget at the first removal."""
    server = await start_server()
    files = server.services.files
    other = DATA + b"the second file\n"
    stored = {files.store_path(DIGEST), files.store_path(hashlib.sha256(other).hexdigest())}
    real_unlink = Path.unlink
    clock = [1000.0]

    def slow_unlink(self: Path, missing_ok: bool = False) -> None:
        if self in stored:
            clock[0] += file_store_module.REMOVAL_BUDGET_S + 1  # this one took that long
        real_unlink(self, missing_ok=missing_ok)

    async with HeaperClient(server.url) as client:
        await client.login()
        heap = await new_heap(client)
        await upload(client, heap["id"], "blk-1")
        r = await client.post(
            f"/api/upload/file/{heap['id']}/blk-2",
            files={"file": ("g.txt", other, "text/plain")},
        )
        assert r.status_code == 200, r.text
        assert all(p.exists() for p in stored)
        monkeypatch.setattr(file_store_module, "monotonic", lambda: clock[0])
        monkeypatch.setattr(Path, "unlink", slow_unlink)

        r = await client.delete(f"/api/heap/{heap['id']}")
        assert r.status_code == 200, r.text
        [left] = [p for p in stored if p.exists()]  # the second removal never started
        assert (await rows(files.storage))[1] == {left.name}  # still marked: still to go

        monkeypatch.setattr(file_store_module, "DELETION_TTL_MS", 0)  # the next sweep
        await trio.sleep(0.01)
        assert await files.finish_interrupted_deletions() == 1
        assert not left.exists()
        assert await rows(files.storage) == (set(), set())
