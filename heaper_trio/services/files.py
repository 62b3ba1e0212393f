"""Files: the content-addressed store, direct and resumable uploads, who may read what.

Bytes live once per SHA-256 under ``<data_dir>/files/sha256/ab/cd/<hash>`` (a scanned file
stays where it is and is served in place). Nothing becomes visible before its size and hash are
checked: a chunk is written at its offset into the upload's one file and marked received once
synced; a completed upload's file is hashed where it lies and renamed into the store
(``upload_layout``); only then is the
file recorded in the index and in the block's ``files_v0`` (a server-side CRDT edit, broadcast
like any other). An upload's chunks and row survive a restart, so it resumes from what it has.

A hash alone proves nothing. A user reads a file (and gets the deduplicated ``exists``) only
when a block of theirs holds it AND they proved its bytes: the server verified them from this
user (a grant, written by ``_record``) or a scan of the user's folder found them. A block's
``files_v0`` is whatever its owner pushed, so it is a claim, never a proof; anyone else sends
the bytes, which are verified against the copy in the store (kept once). The temp-file side of
uploads is in ``upload_disk``, the store and its index in ``file_store``. Work per request is
bounded: chunks are at least ``MIN_CHUNK_BYTES`` and at most ``MAX_CHUNKS`` per file
(``upload_rules``, with the other checks of what a client names), and
file-system probing runs on its own small thread limiter, never on the one the database threads
share. A full disk is a 507 and leaves nothing half-written; temporary files a killed process
left are removed at start-up. With ``files_backend = "s3"`` the bytes live in a bucket
instead (``file_store``, ``object_uploads``): the same checks, the same order.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

import trio

from heaper_trio.errors import (
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    Unprocessable,
    disk_full_is_507,
)
from heaper_trio.records import UploadRecord, User
from heaper_trio.services import upload_layout
from heaper_trio.services.documents import DocumentService
from heaper_trio.services.file_claims import DELETION_TTL_MS
from heaper_trio.services.file_outcomes import (
    AlreadyStored,
    ChunkStored,
    FileMissing,
    FileState,
    StoredFile,
    UploadProgress,
    UploadReady,
    UploadStart,
)
from heaper_trio.services.file_store import FileStore
from heaper_trio.services.object_uploads import PROBE_HEAD, ObjectUploads, part_chunk_size
from heaper_trio.services.upload_disk import (  # _write: tests make the disk full there
    UploadSlots,
    _close_and_remove,
    _commit,
    _open_temp,
    _write,
    copy_hashing,
    receive_body,
    sweep_temp_files,
)
from heaper_trio.services.upload_hash import UploadHashes
from heaper_trio.services.upload_orphans import sweep_orphan_folders
from heaper_trio.services.upload_rules import chunk_plan, guess_mime
from heaper_trio.settings import Settings
from heaper_trio.storage.base import Storage

if TYPE_CHECKING:  # boto3 is imported only when a bucket is used
    from heaper_trio.storage.blobs.s3 import S3Objects

log = logging.getLogger(__name__)
NO_SPACE = "the server has no space left for this upload; retry later"


class FileService(FileStore):
    def __init__(
        self,
        storage: Storage,
        documents: DocumentService,
        settings: Settings,
        publish: Callable[[str, dict[str, object]], None],
        probe: Callable[[Path, str], Awaitable[Any]] | None = None,
        objects: S3Objects | None = None,
    ) -> None:
        super().__init__(storage, documents, settings, publish, probe, objects)
        self.parts = ObjectUploads(objects, storage) if objects is not None else None
        self.uploads = settings.data_path / "uploads"
        self._assembling: dict[str, trio.Lock] = {}
        self.slots = UploadSlots(settings.max_uploads_per_user)
        self.hashes = UploadHashes()  # running hashes of uploads in progress (upload_hash)

    def _upload_dir(self, upload: UploadRecord) -> Path:
        return self.uploads / upload.id

    # -- direct upload --------------------------------------------------------------------------
    async def direct(
        self,
        user: User,
        heap_id: str,
        block_id: str,
        source: IO[bytes],
        size: int,
        claimed_hash: str | None,
        name: str,
        mime_type: str | None,
    ) -> StoredFile:
        """A whole file in one request (spooled by the multipart parser; read in a thread)."""
        await self._check_block(user, heap_id, block_id)
        if size > self.settings.max_upload_bytes:
            raise PayloadTooLarge("the file exceeds max_upload_bytes")
        temp = self.uploads / f"direct-{uuid.uuid4().hex}.part"
        out: BinaryIO | None = None
        with self.slots.hold(user.id):  # the copy holds a temp file and a thread
            try:
                # the bytes always travel: the hash is of what came
                with disk_full_is_507(NO_SPACE):
                    out = await self._io(_open_temp, temp)
                    hash = await self._io(self._copy_hashing, [source], out)
                    if claimed_hash is not None and hash != claimed_hash:
                        raise Unprocessable(
                            "the content does not match the given hash",
                            code="hash_mismatch",
                            details={"actual_hash": hash},
                        )
                async with self.claims.hold(hash):  # no deletion takes it meanwhile
                    with disk_full_is_507(NO_SPACE):
                        stored = await self._in_store(hash)
                        await self._stored(None if stored else out, temp, hash)
                    record = await self._record(
                        user,
                        heap_id,
                        block_id,
                        hash,
                        size,
                        name,
                        guess_mime(name, mime_type),
                        source=temp if self.objects is not None else None,
                    )
                    await self._still_stored(out, temp, hash)
            finally:
                with trio.CancelScope(shield=True):
                    await self._io(_close_and_remove, out, temp)
        return StoredFile.of(record, block_id)

    def _copy_hashing(self, sources: Sequence[Path | IO[bytes]], out: BinaryIO | None) -> str:
        """The SHA-256 of the sources in order, written to ``out`` unless it is None (the
        bytes are in the store already: they are only checked, not written twice)."""
        return copy_hashing(sources, out, _write)  # _write looked up now: tests replace it

    # -- resumable uploads ------------------------------------------------------------------------
    async def init(
        self,
        user: User,
        heap_id: str,
        block_id: str,
        hash: str,
        size: int,
        chunk_size: int,
        name: str,
        mime_type: str | None,
    ) -> UploadStart:
        await self._check_block(user, heap_id, block_id)
        if size > self.settings.max_upload_bytes:
            raise PayloadTooLarge("the file exceeds max_upload_bytes")
        if self.parts is not None:  # parts but the last are >= 5 MiB: the answer says so
            chunk_size = part_chunk_size(size, chunk_size)
        total = chunk_plan(size, chunk_size, self.settings.max_chunk_bytes)
        known = await self._known(hash)
        if known is not None and await self.storage.file_readable_by(hash, user.id):
            # deduplicated: the caller holds these bytes already (a hash alone is no proof,
            # so anyone else sends them and complete checks them against the stored copy)
            if known.size != size:
                raise Unprocessable("a file with this hash has another size", code="size_mismatch")
            async with self.claims.hold(hash):  # a deletion under way is waited for
                if (known := await self._known(hash)) is not None:  # none starts till held
                    await self._record(
                        user, heap_id, block_id, hash, size, name, guess_mime(name, mime_type)
                    )
                    return AlreadyStored(chunk_size, total, hash, known.id)
        now = int(time.time() * 1000)
        # the row this request would start; its id is new, so it is stored only where no
        # upload of these bytes into this block exists yet (the storage answers that one)
        fresh = UploadRecord(
            uuid.uuid4().hex,
            user.id,
            heap_id,
            block_id,
            hash,
            size,
            chunk_size,
            name,
            guess_mime(name, mime_type),
            now,
            now + self.settings.upload_expiry_hours * 3600 * 1000,
        )
        upload = await self.storage.save_upload(fresh)
        if upload.user_id == user.id and upload.chunk_size != chunk_size:
            try:
                chunk_plan(upload.size, upload.chunk_size, self.settings.max_chunk_bytes)
            except (BadRequest, PayloadTooLarge):  # from before the limits: start it afresh
                await self._discard(upload)
                upload = await self.storage.save_upload(fresh)
        if upload.user_id != user.id or upload.size != size:
            raise Conflict(
                "an upload of this file to this block is under way with other parameters",
                code="upload_conflict",
            )
        if self.parts is not None:
            await self.parts.start(upload, created=upload.id == fresh.id)
        return UploadReady(
            upload.chunk_size,
            upload.total_chunks,
            tuple(await self._received(upload)),
            upload.expires_at,
        )

    async def _upload(self, user: User, heap_id: str, block_id: str, hash: str) -> UploadRecord:
        upload = await self.storage.get_upload(heap_id, block_id, hash)
        if upload is None or upload.user_id != user.id:
            # not in a heap of yours: 403 whether or not its owner has an upload there
            await self.documents.owned_heap(user, heap_id)
            raise NotFound(
                "no upload of this file to this block; call init first", code="upload_not_found"
            )
        return upload

    def _chunk_size(self, upload: UploadRecord, index: int) -> int:
        return upload_layout.chunk_length(upload, index)

    async def _received(self, upload: UploadRecord) -> list[int]:
        """Chunks received, rebuilt from disk (``upload_layout``), so a restart loses nothing.
        In a bucket: the parts the store lists."""
        if self.parts is not None:
            return await self.parts.received(upload, lambda i: self._chunk_size(upload, i))
        folder = self._upload_dir(upload)
        found: list[int] = await self._probe_fs(upload_layout.received, folder, upload)
        if not found and await self._published(upload):  # complete has only to record it
            return list(range(upload.total_chunks))
        return found

    async def _published(self, upload: UploadRecord) -> bool:
        """An earlier ``complete`` of this upload verified its bytes and renamed them into
        the store, then failed (or its process died) before recording the file: it is
        recorded from the store, not sent again (``upload_layout.published``)."""
        return bool(
            await self._probe_fs(upload_layout.published, self._upload_dir(upload))
        ) and await self._in_store(upload.hash)

    async def chunk(
        self,
        user: User,
        heap_id: str,
        block_id: str,
        hash: str,
        index: int,
        body: AsyncIterator[bytes],
    ) -> ChunkStored:
        upload = await self._upload(user, heap_id, block_id, hash)
        if not 0 <= index < upload.total_chunks:
            raise BadRequest(f"index must be 0..{upload.total_chunks - 1}", code="bad_chunk_index")
        folder = self._upload_dir(upload)
        with self.slots.hold(user.id):  # before any file is opened; see UploadSlots
            written = None
            if self.parts is None:
                with disk_full_is_507(NO_SPACE):  # write looked up now: tests replace _write
                    written = await upload_layout.write_chunk(
                        self._io,
                        lambda f, b: _write(f, b),
                        folder,
                        upload,
                        index,
                        body,
                        self.hashes,
                    )
            if written is None:  # a part, or a file of its own (upload_layout.open_chunk)
                written = await self._chunk_file(upload, index, body)
        if self.parts is None:
            await self._still_open(upload, folder)
        return ChunkStored(index, written)

    async def _chunk_file(
        self, upload: UploadRecord, index: int, body: AsyncIterator[bytes]
    ) -> int:
        """A chunk in a file of its own, then a part in the bucket or ``<index>.chunk``."""
        folder, expected = self._upload_dir(upload), self._chunk_size(upload, index)
        temp = folder / f"{index}.{uuid.uuid4().hex}.part"
        out: BinaryIO | None = None
        try:
            with disk_full_is_507(NO_SPACE):
                out = file = await self._io(_open_temp, temp)
                written = await receive_body(  # a thread hop per block, not per read
                    body, expected, f"chunk {index}", lambda b: self._io(_write, file, b)
                )
                if self.parts is not None:  # a part once whole, sent from the disk
                    await self._io(out.flush)
                    await self.parts.put_part(upload, index, temp)
                else:
                    await self._io(_commit, out, temp, folder / f"{index}.chunk")
        finally:
            with trio.CancelScope(shield=True):  # cut off mid-way: nothing half-written stays
                await self._io(_close_and_remove, out, temp)
        return written

    async def _still_open(self, upload: UploadRecord, folder: Path) -> None:
        """After a chunk is on disk: its upload's row is still there, or the folder goes and
        the chunk is ``404``. A chunk that passed its checks just before a ``complete`` (or an
        expiry) discarded the upload would otherwise make the folder again, past anything that
        removes it (found in review). Written first, checked second: whichever of the two, the
        chunk or the discard, comes last removes the folder."""
        row = await self.storage.get_upload(upload.heap_id, upload.block_id, upload.hash)
        if row is None or row.id != upload.id:
            await self._io(lambda: shutil.rmtree(folder, ignore_errors=True))
            raise NotFound("this upload was completed meanwhile", code="upload_not_found")

    async def status(self, user: User, heap_id: str, block_id: str, hash: str) -> FileState:
        """This block's file: ``uploading`` (with progress), ``complete`` or ``missing``.
        Both status routes answer with it."""
        await self.documents.owned_heap(user, heap_id)
        upload = await self.storage.get_upload(heap_id, block_id, hash)
        if upload is not None and upload.user_id == user.id:
            received = await self._received(upload)
            return UploadProgress(
                upload.size,
                upload.chunk_size,
                upload.total_chunks,
                tuple(received),
                upload.expires_at,
                sum(self._chunk_size(upload, i) for i in received),
            )
        record = await self.storage.get_file(hash)
        if (
            record is None
            or hash not in await self.storage.file_hashes_of_heap(heap_id, [block_id])
            or not await self.storage.file_readable_by(hash, user.id)
        ):
            # only claimed (files_v0 names it, no proof): no file id or size for a bare hash
            return FileMissing(block_id, hash)
        return StoredFile.of(record, block_id)

    async def complete(self, user: User, heap_id: str, block_id: str, hash: str) -> StoredFile:
        # The heap first: whether its owner has an upload there is not another user's business
        await self.documents.owned_heap(user, heap_id)
        lock = self._assembling.setdefault(hash, trio.Lock())
        try:
            async with lock:
                return await self._complete(user, heap_id, block_id, hash)
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._assembling.pop(hash, None)

    async def _complete(self, user: User, heap_id: str, block_id: str, hash: str) -> StoredFile:
        upload = await self.storage.get_upload(heap_id, block_id, hash)
        if upload is None:  # completed before (complete is idempotent) or never started
            status = await self.status(user, heap_id, block_id, hash)
            if isinstance(status, StoredFile):
                return status
        upload = await self._upload(user, heap_id, block_id, hash)
        received = set(await self._received(upload))
        missing = [i for i in range(upload.total_chunks) if i not in received]
        if missing:
            raise Conflict(
                f"{len(missing)} chunks are missing",
                code="upload_incomplete",
                details={"missing": missing[:1000]},
            )
        if self.parts is not None:
            return await self._complete_parts(user, heap_id, block_id, hash, upload)
        # Always hashed: the store having a file of this hash proves nothing about these bytes.
        async with self.claims.hold(hash):  # no deletion takes it till it is recorded
            stored = await self._in_store(hash)
            folder = self._upload_dir(upload)
            if await self._probe_fs(upload_layout.published, folder):
                if not stored:  # removed since (a deletion of these bytes ended meanwhile)
                    await self._unpublish(upload)
                    raise Conflict(
                        f"{upload.total_chunks} chunks are missing",
                        code="upload_incomplete",
                        details={"missing": list(range(upload.total_chunks))[:1000]},
                    )
                actual = hash  # checked before its rename, by the complete that failed
            else:
                with disk_full_is_507(NO_SPACE):
                    actual = await upload_layout.locked(
                        self._io,
                        upload_layout.complete_in_place,
                        self._upload_dir(upload),
                        upload,
                        lambda f, b: _write(f, b),  # looked up now: tests replace _write
                        None if stored else self.store_path(hash),
                        self.hashes,
                    )
            if actual != hash:
                await self._discard(upload)  # a wrong hash: nothing is stored
                raise Unprocessable(
                    "the assembled content does not match the hash",
                    code="hash_mismatch",
                    details={"actual_hash": actual},
                )
            await self._stored(None, self._upload_dir(upload) / upload_layout.DATA, hash)
            record = await self._record(
                user, heap_id, block_id, hash, upload.size, upload.name, upload.mime_type
            )
        await self._discard(upload)
        return StoredFile.of(record, block_id)

    async def _complete_parts(
        self, user: User, heap_id: str, block_id: str, hash: str, upload: UploadRecord
    ) -> StoredFile:
        """``complete`` in a bucket (``object_uploads``): joined there, hashed as it streams
        (its two ends only kept on disk, for the media probe), published if it matches."""
        assert self.parts is not None
        temp = self.uploads / f"assemble-{uuid.uuid4().hex}.part"
        out: BinaryIO | None = None
        try:
            with disk_full_is_507(NO_SPACE):
                out = await self._io(_open_temp, temp)
                async with self.turns.turn(user.id):
                    actual = await self.parts.assemble(upload, out, keep=PROBE_HEAD)
            if actual != hash:
                await self._discard(upload)
                raise Unprocessable(
                    "the assembled content does not match the hash",
                    code="hash_mismatch",
                    details={"actual_hash": actual},
                )
            async with self.claims.hold(hash):  # no deletion takes it meanwhile
                await self.parts.publish(upload, hash)
                await self._stored(None, temp, hash)
                record = await self._record(
                    user,
                    heap_id,
                    block_id,
                    hash,
                    upload.size,
                    upload.name,
                    upload.mime_type,
                    source=temp,
                    partial=upload.size > PROBE_HEAD,
                )
                await self._still_stored(out, temp, hash)
        finally:
            with trio.CancelScope(shield=True):
                await self._io(_close_and_remove, out, temp)
        await self._discard(upload)
        return StoredFile.of(record, block_id)

    async def _orphaned_bytes(self, hash: str) -> None:
        """Bytes of an expired upload's hash in the store that no file row names (its
        ``complete`` published them and failed, and the client never sent it again): marked
        for deletion, stamped as stale already so no upload waits for it, and the claim
        sweep removes them under its usual turns (``finish_interrupted_deletions``: a hash
        that is a file's again, or claimed by an upload, keeps its bytes). Before, nothing
        named them any more and they stayed for ever. Another upload of the same hash still
        alive keeps them: its own ``complete`` may have published them (or will find them
        there), and would otherwise ask for every chunk again; the last one to expire marks
        them."""
        if await self.storage.has_upload_of(hash):
            return
        if await self.storage.get_file(hash) is None and await self._in_store(hash):
            stamp = await self.storage.clock_ms() - DELETION_TTL_MS - 1
            await self.storage.mark_file_deletions([hash], stamp)

    async def _unpublish(self, upload: UploadRecord) -> None:
        """The bytes an earlier ``complete`` of this upload published are gone from the store
        (a deletion removed them before the file was recorded): the upload holds nothing, and
        says so (``cut`` goes, so status lists no chunk); the client sends them again."""
        self.hashes.drop(upload.id)
        cut = self._upload_dir(upload) / upload_layout.CUT
        await self._probe_fs(lambda: cut.unlink(missing_ok=True))

    async def _discard(self, upload: UploadRecord) -> None:
        if self.parts is not None:
            await self.parts.discard(upload)
        await self.storage.delete_upload(upload.id)
        self.hashes.drop(upload.id)
        folder = self._upload_dir(upload)
        await self._io(lambda: shutil.rmtree(folder, ignore_errors=True))

    # -- housekeeping ---------------------------------------------------------------------------
    async def expire(self, now: int) -> int:
        """Remove uploads that expired before ``now`` (ms), chunks and all."""
        expired = await self.storage.expired_uploads(now)
        for upload in expired:
            log.info("upload %s of %s expired", upload.id, upload.hash)
            await self._discard(upload)
            await self._orphaned_bytes(upload.hash)
        if self.parts is not None:  # an hour's margin past the longest an upload lives
            await self.parts.sweep(now - (self.settings.upload_expiry_hours + 1) * 3600 * 1000)
        await self._io(sweep_temp_files, self.uploads)
        await sweep_orphan_folders(self, now / 1000)  # left without their row
        return len(expired)
