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
- The multipart upload is started by the ``init`` that created the row. Should it be missing
  (a crash between the two), the first chunk starts one; two processes racing there both keep
  the oldest (ties by id) and the loser aborts its own.
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


class ObjectUploads:
    def __init__(self, objects: S3Objects) -> None:
        self.objects = objects
        # upload id -> its multipart upload id, as this process last found it: a chunk then
        # costs one request (the part), not two; a stale entry fails and is looked up again
        self._ids: OrderedDict[str, str] = OrderedDict()
        # upload id -> ETag of the object its ``assemble`` hashed, until ``publish`` copies it
        self._read: OrderedDict[str, str] = OrderedDict()  # bounded: a cancelled complete

    async def start(self, upload: UploadRecord, *, created: bool) -> None:
        """After ``init``: the row's multipart upload exists (started here by the request
        that created the row)."""
        if created:
            self._remember(upload.id, await self.objects.start_multipart(upload_key(upload.id)))
        else:
            await self._multipart(upload)

    def _remember(self, upload_id: str, multipart_id: str) -> None:
        self._ids[upload_id] = multipart_id
        while len(self._ids) > REMEMBERED:
            self._ids.popitem(last=False)

    async def _multipart(self, upload: UploadRecord) -> str:
        if (known := self._ids.get(upload.id)) is not None:
            return known
        key = upload_key(upload.id)
        found = await self.objects.multipart_ids(key)
        if found:
            kept = found[0]
        else:
            mine = await self.objects.start_multipart(key)
            kept = (await self.objects.multipart_ids(key) or [mine])[0]
            if kept != mine:  # another process started one at the same moment: the oldest
                await self.objects.abort_multipart(key, mine)
        self._remember(upload.id, kept)
        return kept

    async def put_part(self, upload: UploadRecord, index: int, source: Path) -> None:
        key = upload_key(upload.id)
        try:
            await self.objects.put_part(key, await self._multipart(upload), index + 1, source)
            return
        except ObjectMissing:  # a stale id, or expired or completed by another process
            self._ids.pop(upload.id, None)
        try:
            await self.objects.put_part(key, await self._multipart(upload), index + 1, source)
        except ObjectMissing:
            self._ids.pop(upload.id, None)
            raise NotFound(
                "no upload of this file to this block; call init first", code="upload_not_found"
            ) from None

    async def received(self, upload: UploadRecord, expected: Callable[[int], int]) -> list[int]:
        key = upload_key(upload.id)
        found = await self.objects.multipart_ids(key)
        if not found:
            return []
        try:
            parts = await self.objects.parts(key, found[0])
        except ObjectMissing:  # finished or aborted meanwhile
            return []
        return sorted(
            p.number - 1
            for p in parts
            if 0 < p.number <= upload.total_chunks and p.size == expected(p.number - 1)
        )

    async def assemble(
        self, upload: UploadRecord, out: BinaryIO | None = None, keep: int | None = None
    ) -> str:
        """The parts joined in the store (not under ``files/``), read once (one GET, in bulk
        pieces) and hashed as they come, never whole on local disk: only the first and last
        ``keep`` bytes are written to ``out`` (sparse, for the media probe); returns the
        SHA-256 of what was joined."""
        key = upload_key(upload.id)
        found = await self.objects.multipart_ids(key)
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
        """The verified object under ``files/<hash>`` (a server-side copy); the upload's own
        object goes either way."""
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
        await self.objects.delete(key)

    async def sweep(self, before_ms: int) -> int:
        """Abort multipart uploads started before ``before_ms`` that no upload row keeps any
        more (a process killed between deleting a row and aborting): by then every upload
        they could belong to has expired. The bucket's lifecycle rule is the second line."""
        stale = await self.objects.stale_multiparts("uploads/", before_ms / 1000)
        for key, upload_id in stale:
            await self.objects.abort_multipart(key, upload_id)
        return len(stale)

    async def discard(self, upload: UploadRecord) -> None:
        self._ids.pop(upload.id, None)
        self._read.pop(upload.id, None)
        key = upload_key(upload.id)
        for upload_id in await self.objects.multipart_ids(key):
            await self.objects.abort_multipart(key, upload_id)
        await self.objects.delete(key)
