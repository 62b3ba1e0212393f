"""Uploads across workers (``--workers N``, or servers sharing ``uploads/``) when a chunk's
sync fails, over a real socket: the three-worker race reduced to one deterministic run, each
worker's view of the journal (``upload_journal.VERIFIED``, its running hashes) swapped in
turn inside one server. Worker A's sync of chunk 0 fails while a status on worker B vouches
for it (and seeds B's running hash with its bytes); a resend of other bytes on worker C must
not rewrite them in ``data``, or B's complete would publish them under the upload's hash."""

from __future__ import annotations

import errno
import os

import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.services import upload_hash, upload_journal
from heaper_trio.services.upload_hash import UploadHashes

from .conftest import assert_error
from .test_harden_uploads import init
from .test_sync import new_heap
from .test_uploads import CHUNK, sha


async def test_a_chunk_another_worker_vouched_for_is_never_published_rewritten(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    heap = await new_heap(admin)
    data = os.urandom(2 * CHUNK)
    h = sha(data)
    files = server.services.files
    url = f"/api/upload/{{}}/{heap['id']}/blk-w/{h}"
    assert (await init(admin, heap["id"], "blk-w", data)).status_code == 200
    hashes_b = files.hashes
    a, b, c = (upload_journal.Verified() for _ in range(3))

    def as_worker(verified: upload_journal.Verified, hashes: UploadHashes) -> None:
        monkeypatch.setattr(upload_journal, "VERIFIED", verified)
        monkeypatch.setattr(upload_hash, "VERIFIED", verified)
        monkeypatch.setattr(files, "hashes", hashes)

    async def status_on_b() -> list[int]:
        as_worker(b, hashes_b)
        try:
            return (await admin.get(url.format("status"))).json()["received"]  # type: ignore[no-any-return]
        finally:
            as_worker(a, UploadHashes())

    real = os.fdatasync
    failed: list[list[int]] = []

    def fdatasync_failing_once(fd: int) -> None:
        if failed:
            return real(fd)
        failed.append([])
        failed[0].extend(trio.from_thread.run(status_on_b))  # while A's sync fails
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    as_worker(a, UploadHashes())
    monkeypatch.setattr(os, "fdatasync", fdatasync_failing_once)
    r = await admin.put(url.format("chunk") + "/0", content=data[:CHUNK])
    assert r.status_code >= 500, r.text
    assert failed == [[0]], "worker B's status did not vouch for chunk 0"

    as_worker(c, UploadHashes())  # the resend, of other bytes, on worker C
    other = os.urandom(CHUNK)
    r = await admin.put(url.format("chunk") + "/0", content=other)
    assert r.status_code == 200, r.text

    as_worker(b, hashes_b)  # chunk 1 and the complete on worker B
    r = await admin.put(url.format("chunk") + "/1", content=data[CHUNK:])
    assert r.status_code == 200, r.text
    r = await admin.post(url.format("complete"))
    assert_error(r, 422, "hash_mismatch")  # the bytes are other + chunk 1: not this hash
    assert not files.store_path(h).exists()
