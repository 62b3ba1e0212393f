"""Object-store races between server processes (issue 14), on one database and one bucket (a
moto server on loopback), each interleaving driven by hooks, not by sleeping:

- the last holder's deletion on one process against an upload of the same bytes on another
  (``services/file_claims``): the upload must never end up recorded with its object gone;
- two processes racing to start an upload's multipart upload after a crash: both send their
  parts to the one whose id the row stores.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from heaper_trio.client import HeaperClient
from heaper_trio.keys import SERVER_KEY_FILE as KEY
from heaper_trio.records import UploadRecord
from heaper_trio.services.file_claims import FileClaims
from heaper_trio.services.object_uploads import ObjectUploads
from heaper_trio.settings import Settings
from heaper_trio.storage import Storage
from heaper_trio.storage.blobs.base import ObjectMissing, file_key, upload_key
from heaper_trio.storage.blobs.s3 import S3Objects

from .objects_support import bucket, s3_client, s3_endpoint, s3_settings
from .test_storage import NOW
from .test_storage_contract import add_users
from .test_storage_object_state import two
from .test_sync import new_heap

__all__ = ["bucket", "s3_endpoint"]  # fixtures, used by name


@pytest.mark.engines("postgres")
async def test_an_upload_racing_the_last_holders_deletion_keeps_its_bytes(
    start_server: Any,
    s3_endpoint: str,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A deletes the last heap holding a file and is held between dropping the row and
    deleting the object; B then uploads the same bytes. Before the claims, B saw the object,
    skipped its PUT and recorded its file, and A's delete left B's file answering
    ``file_missing`` (found in review)."""
    settings = s3_settings(s3_endpoint, bucket, auto_approve=True)
    a = await start_server(**settings, data_dir=str(tmp_path / "a"))
    shutil.copytree(tmp_path / "a", tmp_path / "b", ignore=lambda d, names: set(names) - {KEY})
    b = await start_server(**settings, data_dir=str(tmp_path / "b"))
    data = b"the same bytes on two processes\n" * 500
    digest = hashlib.sha256(data).hexdigest()

    held, release = trio.Event(), trio.Event()
    a_objects = a.services.files.objects
    real_delete = a_objects.delete

    async def held_delete(key: str) -> None:
        if key == file_key(digest):
            held.set()
            await release.wait()
        await real_delete(key)

    monkeypatch.setattr(a_objects, "delete", held_delete)
    b_waits, b_storage = trio.Event(), b.services.files.storage
    real_claim = b_storage.claim_file_now

    async def watched_claim(*args: Any) -> bool:
        deleting = await real_claim(*args)
        if deleting:
            b_waits.set()  # B saw the deletion under way and waits for its end
        return deleting

    monkeypatch.setattr(b_storage, "claim_file_now", watched_claim)

    async with HeaperClient(a.url) as on_a, HeaperClient(b.url) as on_b:
        await on_a.login()
        await on_b.login()  # another user: dedupe trusts only the store's HEAD here
        first, second = await new_heap(on_a, "first"), await new_heap(on_b, "second")
        r = await on_a.post(
            f"/api/upload/file/{first['id']}/blk-1", files={"file": ("f.txt", data, "text/plain")}
        )
        assert r.status_code == 200, r.text

        async def delete_on_a() -> None:
            assert (await on_a.delete(f"/api/heap/{first['id']}")).status_code == 200

        async def upload_on_b() -> None:
            r = await on_b.post(
                f"/api/upload/file/{second['id']}/blk-2",
                files={"file": ("f.txt", data, "text/plain")},
            )
            assert r.status_code == 200, r.text
            b_waits.set()  # done without waiting (the race as it was)

        with trio.fail_after(30):
            async with trio.open_nursery() as both:
                both.start_soon(delete_on_a)
                await held.wait()  # A dropped the row and is about to delete the object
                both.start_soon(upload_on_b)
                await b_waits.wait()
                release.set()
        r = await on_b.get(f"/api/file/{digest}/raw/f.txt", headers={"Range": "bytes=0-7"})
        assert (r.status_code, r.content) == (206, b"the same"), r.text
        assert await b.services.files._in_store(digest)


async def test_two_processes_racing_start_share_one_multipart_upload(
    make_settings: Callable[..., Settings], s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    """A crash left an upload's row without a multipart upload; two processes take chunks of
    it at once and both start one before either stores its id. The row keeps the first id
    stored; the loser aborts its own and sends its part to the winner's."""
    settings = make_settings(**s3_settings(s3_endpoint, bucket))
    async with two(lambda **_: settings) as (db_a, db_b):
        await add_users(db_a)
        upload = UploadRecord("up1", "u1", "h1", "blk", "c" * 64, 12, 6, "a", "x/y", NOW, 2**50)
        await db_a.save_upload(upload)
        both_started, both_listed = trio.Event(), trio.Event()
        started: list[str] = []
        listed: list[list[str]] = []

        def process(storage: Any) -> ObjectUploads:
            objects = S3Objects(bucket, endpoint=s3_endpoint)
            real_start, real_list = objects.start_multipart, objects.multipart_ids

            async def list_together(key: str) -> list[str]:
                # Both look before either starts: else the later one finds the earlier one's
                # multipart upload, starts none, and the wait below never ends (a CI hang).
                found = await real_list(key)
                listed.append(found)
                if len(listed) == 2:
                    both_listed.set()
                await both_listed.wait()
                return found

            async def start_and_keep(key: str) -> str:
                mine = await real_start(key)
                started.append(mine)
                if len(started) == 2:
                    both_started.set()
                await both_started.wait()
                return mine

            objects.start_multipart = start_and_keep  # type: ignore[method-assign]
            objects.multipart_ids = list_together  # type: ignore[method-assign]
            return ObjectUploads(objects, storage)

        a, b = process(db_a), process(db_b)
        (tmp_path / "part").write_bytes(b"123456")
        with trio.fail_after(30):
            async with trio.open_nursery() as race:
                race.start_soon(a.put_part, upload, 0, tmp_path / "part")
                race.start_soon(b.put_part, upload, 1, tmp_path / "part")
        objects_a, objects_b = a.objects, b.objects
        objects_a.multipart_ids = objects_b.multipart_ids = S3Objects(  # type: ignore[method-assign]
            bucket, endpoint=s3_endpoint
        ).multipart_ids  # the checks below list freely
        stored = (await db_b.get_upload("h1", "blk", "c" * 64)).multipart_id  # type: ignore[union-attr]
        assert stored in started and len(set(started)) == 2
        client = s3_client(s3_endpoint)
        listed = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        assert [u["UploadId"] for u in listed] == [stored]  # the loser's is aborted
        parts = client.list_parts(Bucket=bucket, Key=upload_key("up1"), UploadId=stored)
        assert [p["PartNumber"] for p in parts["Parts"]] == [1, 2]  # no part was lost
        assert await a.received(upload, lambda i: 6) == [0, 1]


@pytest.mark.engines("sqlite")  # the UPDATE itself: test_storage_object_state, both
async def test_a_row_from_before_the_column_has_its_multipart_id_stored_once(
    make_settings: Callable[..., Settings], s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    settings = make_settings(**s3_settings(s3_endpoint, bucket))
    async with two(lambda **_: settings) as (db, _):
        await add_users(db)
        upload = UploadRecord("up2", "u1", "h1", "blk", "d" * 64, 6, 6, "a", "x/y", NOW, 2**50)
        await db.save_upload(upload)
        objects = S3Objects(bucket, endpoint=s3_endpoint)
        legacy = await objects.start_multipart(upload_key("up2"))  # started by the old code
        parts = ObjectUploads(objects, db)
        await parts.start(upload, created=False)
        assert (await db.get_upload("h1", "blk", "d" * 64)).multipart_id == legacy  # type: ignore[union-attr]
        (tmp_path / "part").write_bytes(b"abcdef")
        await ObjectUploads(objects, db).put_part(  # another process: from the row
            (await db.get_upload("h1", "blk", "d" * 64)) or upload, 0, tmp_path / "part"
        )
        assert await parts.received(upload, lambda i: 6) == [0]
        # the multipart upload vanishes (a lifecycle rule) while the row stays: a new one is
        # stored in its place, conditionally
        await objects.abort_multipart(upload_key("up2"), legacy)
        real_put = objects.put_part

        async def put_part(key: str, multipart_id: str, number: int, source: Path) -> None:
            if multipart_id == legacy:  # S3 answers NoSuchUpload (moto: a 500)
                raise ObjectMissing(key)
            await real_put(key, multipart_id, number, source)

        objects.put_part = put_part  # type: ignore[method-assign]
        await parts.put_part(upload, 0, tmp_path / "part")
        fresh = (await db.get_upload("h1", "blk", "d" * 64)).multipart_id  # type: ignore[union-attr]
        assert fresh not in (None, legacy)
        await parts.discard(replace(upload, multipart_id=fresh))
        assert s3_client(s3_endpoint).list_multipart_uploads(Bucket=bucket).get("Uploads") in (
            None,
            [],
        )


async def test_in_one_process_claims_and_deletions_take_turns_in_memory() -> None:
    """SQLite (one process per database): the same protocol without a write per upload."""
    claims = FileClaims(cast(Storage, SimpleNamespace(shares_processes=False)))
    got: list[str] = []

    async def upload(hash: str) -> None:
        async with claims.hold(hash):
            got.append(hash)

    async with claims.hold("held"), trio.open_nursery() as nursery:
        async with claims.deleting(["held", "free", "free"]) as dropping:
            assert dropping == ["free"]  # a held hash is left alone
            async with claims.deleting(["free"]) as again:
                assert again == []  # one deletion at a time
            nursery.start_soon(upload, "free")
            await wait_all_tasks_blocked()
            assert got == []  # waits until the deletion ends
        await wait_all_tasks_blocked()
        assert got == ["free"]
    async with claims.deleting(["held"]) as dropping:
        assert dropping == ["held"]  # released
