"""The content-addressed store and its index: where verified bytes live, recording a file
for a user (the grant and the block's ``files_v0`` entry), who may read what, and forgetting
files no block holds. Uploads (``files.FileService``) build on it; the rules are in the
``files`` module docstring."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from time import monotonic  # by name: tests make removals slow
from typing import TYPE_CHECKING, Any, BinaryIO

import trio

from heaper_trio import crdt
from heaper_trio.errors import (
    Conflict,
    NotFound,
)
from heaper_trio.protocol import events
from heaper_trio.records import FileRecord, User
from heaper_trio.services.documents import DocumentService
from heaper_trio.services.file_claims import CLAIM_TTL_MS, DELETION_TTL_MS, FileClaims
from heaper_trio.services.scans.source import OpenFile, open_own
from heaper_trio.services.staging import SharedStages, UserTurns
from heaper_trio.services.upload_disk import (  # _write: tests make the disk full there
    _close_and_remove,
    _commit,
    _open_temp,
)
from heaper_trio.settings import Settings
from heaper_trio.storage.base import Storage
from heaper_trio.storage.blobs.base import ObjectMissing, file_key

if TYPE_CHECKING:  # boto3 is imported only when a bucket is used
    from heaper_trio.storage.blobs.s3 import S3Objects

log = logging.getLogger(__name__)
HASH = re.compile(r"[0-9a-f]{64}")
PROBE_THREADS = 4  # stat, scandir, mkdir, unlink of uploads: quick, but never the DB's threads
IO_THREADS = 4  # writing, hashing, assembling: long, kept off the probes' limiter
THUMBNAILS = Path("thumbnails", "generated")  # under the data directory (services/container)
RESUME_BATCH = 500  # interrupted deletions taken up per statement
RESUME_MAX_BATCHES = 20  # per sweep pass: a backlog is worked off over several passes
# No removal of deleted bytes starts later than this after its mark's stamp: half the TTL
# after which an upload of the same bytes stops waiting for the mark (_remove_bytes).
REMOVAL_BUDGET_S = DELETION_TTL_MS / 2000
PRESIGNED_TTL_S = 300  # files_presigned_redirect: long enough to start, short if leaked
RangeReader = Callable[[int, int], Awaitable[AsyncIterator[bytes]]]


class FileStore:
    def __init__(
        self,
        storage: Storage,
        documents: DocumentService,
        settings: Settings,
        publish: Callable[[str, dict[str, object]], None],
        probe: Callable[[Path, str], Awaitable[Any]] | None = None,
        objects: S3Objects | None = None,
    ) -> None:
        self.storage = storage
        self.objects = objects  # files_backend = "s3": the bucket; None: the data directory
        self.probe = probe  # media probe: type from content, width/height/duration
        self.documents = documents
        self.settings = settings
        self.publish = publish  # user events (file.ready) for the live channel
        self.claims = FileClaims(storage)  # uploads against the last holder's deletion
        self.store = settings.data_path / "files" / "sha256"
        # trio.to_thread's default limiter is shared with the database threads (SQLite)
        self._probe_threads = trio.CapacityLimiter(PROBE_THREADS)
        self._io_threads = trio.CapacityLimiter(IO_THREADS)
        # bucket files staged for Pillow and ffmpeg: one download per file at a time, shared
        self.stages = SharedStages(settings.data_path / "uploads", self._remove_temp)
        self.turns = UserTurns(settings.s3_bulk_per_user)  # whole-object transfers per user
        self._staged: dict[Path, BinaryIO] = {}  # kept open: its lock keeps the sweeper off

    async def _remove_temp(self, path: Path) -> None:
        await self._io(_close_and_remove, self._staged.pop(path, None), path)

    async def _probe_fs(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._probe_threads)

    async def _io(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._io_threads)

    # -- paths and access ---------------------------------------------------------------------
    def store_path(self, hash: str) -> Path:
        return self.store / hash[:2] / hash[2:4] / hash

    def path_of(self, record: FileRecord) -> Path:
        return Path(record.source_path) if record.source_path else self.store_path(record.hash)

    def in_bucket(self, record: FileRecord) -> S3Objects | None:
        """The bucket holding this file's bytes; None when they are on a local disk (the
        store's, or a scanned folder's: scanned files stay where they are)."""
        return self.objects if record.source_path is None else None

    async def held(self, record: FileRecord) -> bool:
        """Whether the server holds the file's bytes now (in the store or the scanned path)."""
        if self.in_bucket(record) is not None:
            return await self._in_store(record.hash)
        return bool(await self._probe_fs(self.path_of(record).is_file))

    def reader(self, record: FileRecord) -> RangeReader:
        """Ranged GETs of a bucket file, for ``file_response``: the request is made before
        any header is sent, so a missing object is a 404, not a cut body."""
        objects, key = self.objects, file_key(record.hash)
        assert objects is not None

        async def read(first: int, length: int) -> AsyncIterator[bytes]:
            try:
                return await objects.read_range(key, first, length)
            except ObjectMissing:
                raise NotFound(
                    "the file's bytes are gone from the store", code="file_missing"
                ) from None

        return read

    def presigned(self, record: FileRecord, *, content_type: str, disposition: str) -> str:
        """A short-lived URL of the bucket file (never logged: it is a credential while it
        lasts)."""
        assert self.objects is not None
        return self.objects.presign(
            file_key(record.hash),
            PRESIGNED_TTL_S,
            content_type=content_type,
            disposition=disposition,
        )

    def staged(
        self, record: FileRecord, owner: str | None = None
    ) -> AbstractAsyncContextManager[Path]:
        """A bucket file's bytes in a local temporary file, for the tools that need a path
        (Pillow, ffmpeg); checked against the hash on the way, removed after its last user
        (``staging``: concurrent requests for one file share one download). ``owner``: the
        user whose turn at bulk work the download takes."""
        return self.stages.use(record.hash, lambda temp: self._stage(record.hash, temp, owner))

    async def _stage(self, hash: str, temp: Path, owner: str | None) -> None:
        assert self.objects is not None
        out: BinaryIO | None = None
        try:
            out = await self._io(_open_temp, temp)
            async with self.turns.turn(owner):
                try:
                    actual, _ = await self.objects.read_into_tagged(file_key(hash), out)
                except ObjectMissing:
                    raise NotFound(
                        "the file's bytes are gone from the store", code="file_missing"
                    ) from None
            if actual != hash:
                log.error("the bucket's copy of %s has hash %s", hash, actual)
                raise NotFound("the store's copy of this file is damaged", code="file_missing")
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._io(_close_and_remove, out, temp)
            raise
        assert out is not None
        self._staged[temp] = out  # closed with the stage (its last user)

    async def forget_thumbnails(self, hash: str) -> None:
        """The bucket's thumbnails of a file (made again on request); the local cache is the
        media service's to drop."""
        if self.objects is not None:
            await self.objects.delete_prefix(f"thumbnails/{hash[:2]}/{hash}/")

    async def open_staged(self, record: FileRecord, owner: str | None = None) -> OpenFile:
        """A bucket file's bytes as an open local file (its temporary name already gone): for
        callers that want what ``ScanService.open_file`` gives for a file on disk."""
        async with self.staged(record, owner) as path:
            return await open_own(path)

    async def derived(
        self,
        record: FileRecord,
        target: Path,
        derive: Callable[[Path], Awaitable[Path]],
        owner: str | None = None,
    ) -> Path:
        """A thumbnail of a bucket file: the local cache's, else the bucket's copy (made by
        any process), else made here from the staged bytes and put in the bucket."""
        assert self.objects is not None
        if await self._probe_fs(target.is_file):
            return target
        thumbs = self.settings.data_path / THUMBNAILS
        key = "thumbnails/" + target.relative_to(thumbs).as_posix()
        temp = target.with_name(f".{uuid.uuid4().hex}.part")
        out = await self._io(_open_temp, temp)
        try:
            await self.objects.read_into(key, out)
            await self._io(_commit, out, temp, target)
            return target
        except ObjectMissing:
            pass
        finally:
            with trio.CancelScope(shield=True):
                await self._io(_close_and_remove, out, temp)
        async with self.staged(record, owner) as path:
            made = await derive(path)
        await self.objects.put_file(key, made)
        return made

    async def readable(self, user: User, key: str) -> FileRecord:
        """The file a ``:key`` (file id or hash) names, if a block of the user's holds it and
        the user proved its bytes. Unknown, not-yours and only-claimed answer alike: no
        existence leak."""
        record = await self.storage.get_file(key.lower() if HASH.fullmatch(key.lower()) else key)
        if record is None or not await self.storage.file_readable_by(record.hash, user.id):
            raise NotFound("no such file in your heaps", code="file_not_found")
        return record

    # -- recording a verified file --------------------------------------------------------------
    async def _probe(
        self, hash: str, name: str, mime_type: str, source: Path | None, partial: bool = False
    ) -> tuple[str, dict[str, Any]]:
        """Type and dimensions from the content (a client's type is a hint only). ``partial``:
        ``source`` holds only the file's two ends (a bucket upload is hashed as it streams,
        never copied whole to disk); a video or audio file whose ends do not give its
        duration (an index larger than the end kept) is then probed from a staged copy,
        best effort."""
        if self.probe is None:
            return mime_type, {}
        try:
            info = await self.probe(source or self.store_path(hash), name)
            if partial and info.kind in ("video", "audio") and info.duration is None:
                make = lambda temp: self._stage(hash, temp, None)  # noqa: E731
                async with self.stages.use(hash, make) as whole:
                    info = await self.probe(whole, name)
        except Exception:  # metadata is a bonus: an upload never fails for it
            log.exception("probing %s failed", hash)
            return mime_type, {}
        found = {
            k: v
            for k, v in info.as_dict().items()
            if k in ("width", "height", "duration", "frames", "kind") and v is not None
        }
        if info.mime_type and info.mime_type != "application/octet-stream":
            mime_type = info.mime_type
        return mime_type, found

    async def _record(
        self,
        user: User,
        heap_id: str,
        block_id: str,
        hash: str,
        size: int,
        name: str,
        mime_type: str,
        meta: dict[str, Any] | None = None,
        source: Path | None = None,
        partial: bool = False,
    ) -> FileRecord:
        """Every caller has the bytes verified for this user first (direct and complete hash
        them; init's ``exists`` requires a proof already), so this is where grants come from.
        ``source``: where the verified bytes are on local disk, when not in the local store."""
        if meta is None and await self.storage.get_file(hash) is None:
            mime_type, meta = await self._probe(hash, name, mime_type, source, partial)
        record = await self.storage.add_file(
            FileRecord(
                hash,
                uuid.uuid4().hex[:16],
                size,
                mime_type,
                name,
                None,
                meta or {},
                int(time.time() * 1000),
            )
        )
        await self.storage.grant_file(hash, user.id)
        # the caller's name only: the stored row keeps the first uploader's, which is theirs
        entry = {
            "hash": hash,
            "name": name,
            "mime_type": record.mime_type,
            "file_size": size,
            "file_id": record.id,
            **{
                k: v
                for k, v in record.meta.items()
                if k in ("width", "height", "duration") and v is not None
            },
        }
        status = await self.documents.server_edit(
            user.id,
            heap_id,
            block_id,
            lambda doc: doc.set_file_entry(f"{hash}:{size}", entry),
            create=lambda: crdt.new_block_document(block_type="file", title=name),
        )
        if status in ("not_found", "conflict"):
            raise Conflict(
                f"the block could not record the file ({status})",
                code="block_unavailable" if status == "not_found" else "conflict",
            )
        self.publish(
            user.id,
            events.event(
                "file.ready", heap_id=heap_id, block_id=block_id, file_hash=hash, file_id=record.id
            ),
        )
        return record

    async def _in_store(self, hash: str) -> bool:
        """The store holds verified bytes of this hash. A scanned copy does not count: it
        lives in somebody's folder, may change or go at any time, and must never be where
        another upload's only copy is."""
        if self.objects is not None:
            return await self.objects.size(file_key(hash)) is not None
        return bool(await self._probe_fs(self.store_path(hash).is_file))

    async def _stored(self, out: BinaryIO | None, temp: Path, hash: str) -> None:
        """Move verified bytes into the store; a file row that pointed at a scanned copy now
        points at the store, so every holder reads the stable copy."""
        if out is not None and self.objects is not None:
            await self._io(out.flush)  # a PUT once whole: visible only then
            await self.objects.put_file(file_key(hash), temp)
        elif out is not None:
            await self._io(_commit, out, temp, self.store_path(hash))
        record = await self.storage.get_file(hash)
        if record is not None and record.source_path is not None:
            await self.storage.update_file(hash, clear_source=True)

    async def _still_stored(self, out: BinaryIO | None, temp: Path, hash: str) -> None:
        """After recording into a bucket: the object is still there, else it is PUT again
        (the second line of ``services/file_claims``: a deletion stalled past its mark)."""
        if self.objects is not None and out is not None and not await self._in_store(hash):
            log.warning("files/%s vanished while it was recorded; stored again", hash)
            await self._io(out.flush)
            await self.objects.put_file(file_key(hash), temp)

    async def _known(self, hash: str) -> FileRecord | None:
        record = await self.storage.get_file(hash)
        if record is None:
            return None
        if not await self.held(record):
            return None  # bytes gone (a scanned file moved): take them again
        return record

    async def _check_block(self, user: User, heap_id: str, block_id: str) -> None:
        await self.documents.owned_heap(user, heap_id)
        if await self.storage.tombstones([block_id]):
            raise Conflict("this block was deleted for good", code="block_deleted")
        record = (await self.storage.get_blocks([block_id])).get(block_id)
        if record is not None and record.heap_id != heap_id:
            raise NotFound("no such block in this heap", code="block_not_found")

    async def forget_unreferenced(self, hashes: list[str]) -> int:
        """After blocks are removed for good: files no block holds any more go, bytes too
        (never a scanned file's own bytes: those belong to the user's folder). The rows go
        first, each with a deletion mark that stays until its bytes are gone: if removing
        them fails (or the process dies first), the claim sweep removes them later
        (``finish_interrupted_deletions``), so the blocks' removal still answers success."""
        async with self.claims.deleting(hashes) as free:  # uploads of them wait till done
            begun = trio.current_time()  # no later than the stamp: the marks' age from it
            now = await self.storage.clock_ms()  # the clock claims are stamped and aged by
            dropped = await self.storage.drop_unreferenced_files(
                free, now=now, claims_after=now - CLAIM_TTL_MS
            )  # services/file_claims
            own = [r.hash for r in dropped if r.source_path is None]
            scanned = [r.hash for r in dropped if r.source_path is not None]
            await self._remove_bytes(own, scanned, now, begun)
        for record in dropped:
            await self.forget_thumbnails(record.hash)
        return len(dropped)

    async def finish_interrupted_deletions(self) -> int:
        """Remove the bytes of files whose rows a deletion dropped but whose removal never
        ended (the process died, or the removal failed): their deletion marks are the
        journal of what is left to do. A mark whose hash is a file's again, or one an
        upload claims, costs no byte (``Storage.resume_file_deletions``). Run by the claim
        sweep (``file_claims.sweep_claims_forever``), in batches of ``RESUME_BATCH`` until
        none is left: at most ``RESUME_MAX_BATCHES`` a pass, and none after a batch that
        takes none up or whose removals fail or run out of time (the rest waits for the
        next pass). How many were finished."""
        finished = 0
        for _ in range(RESUME_MAX_BATCHES):
            cutoff = await self.storage.clock_ms() - DELETION_TTL_MS
            stale = await self.storage.stale_file_deletions(cutoff, RESUME_BATCH)
            if not stale:
                break
            resumed, removed = await self._resume_batch(stale)
            finished += len(removed)
            if len(stale) < RESUME_BATCH or not resumed or len(removed) < len(resumed):
                break
        return finished

    async def _resume_batch(self, stale: list[str]) -> tuple[list[str], list[str]]:
        """One batch of ``finish_interrupted_deletions``: (hashes taken up, bytes removed)."""
        async with self.claims.deleting(stale) as free:  # in-process uploads: memory turns
            begun = trio.current_time()
            now = await self.storage.clock_ms()
            resumed = await self.storage.resume_file_deletions(
                free, started_before=now - DELETION_TTL_MS, now=now, claims_after=now - CLAIM_TTL_MS
            )
            if resumed:
                log.info("removing the bytes of %d files an earlier deletion left", len(resumed))
            removed = await self._remove_bytes(resumed, [], now, begun)
        for hash in removed:
            await self.forget_thumbnails(hash)
        return resumed, removed

    async def _remove_bytes(
        self, hashes: list[str], done: list[str], stamp: int, begun: float
    ) -> list[str]:
        """Remove the stored bytes of ``hashes``; end the deletion marks (stamped ``stamp``,
        at ``begun`` by trio's clock or later) of those removed and of ``done`` (nothing to
        remove); the hashes whose bytes went. A failed removal is logged, not raised: its
        mark stays, and the sweep takes it up again (an upload of the same bytes waits for
        it at most ``DELETION_TTL_MS``). A cancel keeps the marks of what is left too.

        No removal starts ``REMOVAL_BUDGET_S`` (half ``DELETION_TTL_MS``) after the stamp: past
        the TTL an upload of the same bytes no longer waits for the mark, finds the bytes
        still there, records its file and keeps them; a removal landing after that would
        leave the file without bytes. The rest keep their marks for the next sweep (a
        bucket's DELETE can take minutes with its retries). Each mark ends only if it is
        still this remover's own stamp (``end_file_deletions``)."""
        deadline = begun + REMOVAL_BUDGET_S
        removed = list(done)
        left = 0
        try:
            if self.objects is not None:
                for at, hash in enumerate(hashes):
                    if trio.current_time() > deadline:
                        left = len(hashes) - at
                        break
                    await self.objects.delete(file_key(hash))
                    removed.append(hash)
            else:
                local_deadline = monotonic() + deadline - trio.current_time()

                def remove() -> int:
                    for at, hash in enumerate(hashes):
                        if monotonic() > local_deadline:
                            return len(hashes) - at
                        self.store_path(hash).unlink(missing_ok=True)
                        removed.append(hash)
                    return 0

                left = await self._io(remove)
            if left:
                log.warning(
                    "%d deleted files keep their bytes till the next sweep: removing them took"
                    " too long",
                    left,
                )
        except Exception:
            log.exception(
                "removing the bytes of %d deleted files failed; the claim sweep tries again",
                len(hashes) + len(done) - len(removed),
            )
        finally:
            with trio.CancelScope(shield=True):
                await self.storage.end_file_deletions(removed, stamp)
        return removed[len(done) :]
