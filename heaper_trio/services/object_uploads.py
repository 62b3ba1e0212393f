"""Resumable uploads into an S3-compatible store: each chunk is one multipart part.

Any server process may take any chunk and any may ``complete``: the upload's row is in the
database and its parts are in the store, under the key ``uploads/<upload id>``, so nothing of
an upload lives on one machine's disk longer than one request (a chunk is spooled to a local
temporary file while it arrives, then sent as its part: the part's length must be known
before it is sent, and a cut-off body must never reach the store).

- Chunk ``i`` is part ``i + 1``. S3 wants every part but the last to be at least 5 MiB, so in
  this mode ``init`` raises a smaller ``chunk_size`` to ``PART_MIN`` and says so in its answer
  (clients use the answered size); a file up to that size is one part.
- Which chunks arrived is what ListParts says (a part of the wrong size does not count), so
  a restart or another process loses nothing.
- The multipart upload is started by the ``init`` that created the row, and its id is stored
  on the row (migration 0015) by a conditional UPDATE: the first process to store one wins,
  and a loser aborts its own and uses the winner's, so two processes racing after a crash
  (the row made, no multipart upload yet) send every part to the same one. A row from before
  the column has its id looked up in the store (ListMultipartUploads) once, then stored.
- ``complete`` finishes the multipart upload into ``uploads/<id>``, hashes it as it streams
  in bulk pieces (only its two ends are kept on local disk, for the media probe: the
  temporary disk need not fit the file), and only when the hash matches copies that very version
  (ETag-pinned) server-side to ``files/<hash>``: nothing unverified is ever visible there.
- Discarding (a wrong hash, expiry) aborts the multipart uploads and deletes the assembled
  object; a bucket lifecycle rule for incomplete multipart uploads is the second line
  (docs/self-hosting.md).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from heaper_trio.errors import Conflict, NotFound
from heaper_trio.records import UploadRecord
from heaper_trio.storage.base import Storage
from heaper_trio.storage.blobs.base import ObjectChanged, ObjectMissing, file_key, upload_key

if TYPE_CHECKING:  # boto3 is imported only when a bucket is used
    from heaper_trio.storage.blobs.s3 import S3Objects

log = logging.getLogger(__name__)
PART_MIN = 5 * 1024 * 1024  # S3's smallest part but the last
REMEMBERED = 1024  # multipart ids kept per process (uploads in progress at once)
PROBE_HEAD = 8 * 1024 * 1024  # of each end of an assembled upload kept on disk, for the probe


def part_chunk_size(size: int, chunk_size: int) -> int:
    """The chunk size used in a bucket: at least ``PART_MIN`` unless one chunk holds all."""
    return chunk_size if chunk_size >= size or chunk_size >= PART_MIN else PART_MIN


def _not_found() -> NotFound:
    return NotFound(
        "no upload of this file to this block; call init first", code="upload_not_found"
    )


class ObjectUploads:
    def __init__(self, objects: S3Objects, storage: Storage | None = None) -> None:
        self.objects = objects
        self.storage = storage  # where multipart ids are kept; None: looked up in the store
        # upload id -> its multipart upload id, as this process last found it: a chunk then
        # costs one request (the part), not two; a stale entry fails and is looked up again
        self._ids: OrderedDict[str, str] = OrderedDict()
        # upload id -> ETag of the object its ``assemble`` hashed, until ``publish`` copies it
        self._read: OrderedDict[str, str] = OrderedDict()  # bounded: a cancelled complete

    async def start(self, upload: UploadRecord, *, created: bool) -> None:
        """After ``init``: the row's multipart upload exists (started here by the request
        that created the row)."""
        if created and self.storage is not None:
            await self._stored(upload, await self.objects.start_multipart(upload_key(upload.id)))
        elif created:
            self._remember(upload.id, await self.objects.start_multipart(upload_key(upload.id)))
        else:
            await self._multipart(upload)

    def _remember(self, upload_id: str, multipart_id: str) -> None:
        self._ids[upload_id] = multipart_id
        while len(self._ids) > REMEMBERED:
            self._ids.popitem(last=False)

    async def _stored(
        self, upload: UploadRecord, mine: str, *, expected: str | None = None, found: bool = False
    ) -> str:
        """``mine`` on the row unless another process stored one first (then ``mine`` is
        aborted, unless ``found``: it was the store's, not started here)."""
        assert self.storage is not None
        kept = await self.storage.set_multipart_id(upload.id, mine, expected)
        if kept != mine and not found:
            await self.objects.abort_multipart(upload_key(upload.id), mine)
        if kept is None:  # the row is gone: completed, expired or discarded meanwhile
            raise _not_found()
        self._remember(upload.id, kept)
        return kept

    async def _multipart(self, upload: UploadRecord) -> str:
        if (known := self._ids.get(upload.id)) is not None:
            return known
        if upload.multipart_id is not None:
            self._remember(upload.id, upload.multipart_id)
            return upload.multipart_id
        key = upload_key(upload.id)
        found = await self.objects.multipart_ids(key)  # a row from before the column
        if self.storage is not None:
            mine = found[0] if found else await self.objects.start_multipart(key)
            return await self._stored(upload, mine, found=bool(found))
        if found:
            kept = found[0]
        else:
            mine = await self.objects.start_multipart(key)
            kept = (await self.objects.multipart_ids(key) or [mine])[0]
            if kept != mine:  # another process started one at the same moment: the oldest
                await self.objects.abort_multipart(key, mine)
        self._remember(upload.id, kept)
        return kept

    async def _replace(self, upload: UploadRecord, stale: str) -> str:
        """The multipart upload ``stale`` is gone (aborted by a lifecycle rule, or finished by
        a ``complete``) while a chunk came: the row's current one, or a new one stored in
        its place (conditionally, as ``start``)."""
        if self.storage is None:
            return await self._multipart(upload)
        row = await self.storage.get_upload(upload.heap_id, upload.block_id, upload.hash)
        if row is None or row.id != upload.id:
            raise _not_found()
        if row.multipart_id not in (None, stale):
            assert row.multipart_id is not None
            self._remember(upload.id, row.multipart_id)
            return row.multipart_id
        fresh = await self.objects.start_multipart(upload_key(upload.id))
        return await self._stored(upload, fresh, expected=row.multipart_id)

    async def put_part(self, upload: UploadRecord, index: int, source: Path) -> None:
        key = upload_key(upload.id)
        used = await self._multipart(upload)
        try:
            await self.objects.put_part(key, used, index + 1, source)
            return
        except ObjectMissing:  # a stale id, or expired or completed by another process
            self._ids.pop(upload.id, None)
        try:
            await self.objects.put_part(key, await self._replace(upload, used), index + 1, source)
        except ObjectMissing:
            self._ids.pop(upload.id, None)
            raise _not_found() from None

    async def received(self, upload: UploadRecord, expected: Callable[[int], int]) -> list[int]:
        key = upload_key(upload.id)
        known = self._ids.get(upload.id) or upload.multipart_id
        if known is None:  # a row from before the column, or none started yet
            found = await self.objects.multipart_ids(key)
            if not found:
                return await self._joined(upload, key)
            known = found[0]
        try:
            parts = await self.objects.parts(key, known)
        except ObjectMissing:  # finished or aborted meanwhile, or replaced by another process
            row = (
                None
                if self.storage is None
                else await self.storage.get_upload(upload.heap_id, upload.block_id, upload.hash)
            )
            if row is None or row.id != upload.id or row.multipart_id in (None, known):
                return await self._joined(upload, key)
            assert row.multipart_id is not None
            self._remember(upload.id, row.multipart_id)
            return await self.received(row, expected)
        return sorted(
            p.number - 1
            for p in parts
            if 0 < p.number <= upload.total_chunks and p.size == expected(p.number - 1)
        )

    async def _joined(self, upload: UploadRecord, key: str) -> list[int]:
        """Every chunk, when no multipart upload is left but its joined object is: a
        ``complete`` joined the parts (and maybe published them) and failed, or died, before
        the file was recorded. The next ``complete`` hashes that object again (``assemble``
        with no parts to join), so nothing is sent twice and nothing unverified is trusted."""
        if await self.objects.size(key) == upload.size:
            return list(range(upload.total_chunks))
        return []

    async def assemble(
        self, upload: UploadRecord, out: BinaryIO | None = None, keep: int | None = None
    ) -> str:
        """The parts joined in the store (not under ``files/``), read once (one GET, in bulk
        pieces) and hashed as they come, never whole on local disk: only the first and last
        ``keep`` bytes are written to ``out`` (sparse, for the media probe); returns the
        SHA-256 of what was joined."""
        key = upload_key(upload.id)
        found = await self.objects.multipart_ids(key)
        if upload.multipart_id in found:  # the row's own first (a loser's may linger a moment)
            found.remove(upload.multipart_id)
            found.insert(0, upload.multipart_id)
        try:
            if found:
                parts = {p.number: p for p in await self.objects.parts(key, found[0])}
                wanted = [parts[i + 1] for i in range(upload.total_chunks)]
                await self.objects.finish_multipart(key, found[0], wanted)
            actual, self._read[upload.id] = await self.objects.read_into_tagged(key, out, keep=keep)
            while len(self._read) > REMEMBERED:
                self._read.popitem(last=False)
            return actual
        except (ObjectMissing, ObjectChanged, KeyError):  # changed: replaced while read
            raise Conflict(
                "another request is completing this upload; ask again for its status",
                code="upload_incomplete",
                details={"missing": []},
            ) from None

    async def publish(self, upload: UploadRecord, hash: str) -> None:
        """The verified object under ``files/<hash>`` (a server-side copy). The upload's own
        object stays until the file is recorded (``discard``): a ``complete`` failing in
        between is finished by the next one from it (``_joined``), not sent again."""
        key = upload_key(upload.id)
        read = self._read.pop(upload.id, None)
        if read is None:
            raise RuntimeError("publish without a verified assemble in this process")
        if await self.objects.size(file_key(hash)) is None:
            try:  # exactly the version that was hashed: a chunk sent again meanwhile (a new
                # multipart upload completed by another process) must not slip under the hash
                await self.objects.copy(key, file_key(hash), if_match=read)
            except ObjectChanged:
                raise Conflict(
                    "the upload changed while it was being completed; upload it again",
                    code="upload_incomplete",
                    details={"missing": []},
                ) from None

    async def sweep(self, before_ms: int) -> int:
        """Abort multipart uploads started before ``before_ms`` that no upload row keeps any
        more (a process killed between deleting a row and aborting): by then every upload
        they could belong to has expired. The bucket's lifecycle rule is the second line."""
        stale = await self.objects.stale_multiparts("uploads/", before_ms / 1000)
        for key, upload_id in stale:
            await self.objects.abort_multipart(key, upload_id)
        return len(stale)

    async def discard(self, upload: UploadRecord) -> None:
        known = {self._ids.pop(upload.id, None), upload.multipart_id}
        self._read.pop(upload.id, None)
        key = upload_key(upload.id)
        for upload_id in set(await self.objects.multipart_ids(key)) | (known - {None}):
            assert upload_id is not None
            await self.objects.abort_multipart(key, upload_id)
        await self.objects.delete(key)
