"""Thumbnails that clients make themselves (a phone has the photo decoded already) and upload
for a file of a block; served back as they came, after a check that they are images.

Kept per block (``<data_dir>/thumbnails/client/<block_id>/<file_hash>/<type>-<size>.<ext>``):
a thumbnail is the uploader's rendering, so one user's cannot replace another's for the same
content. They go when the block goes (see ``forget_block``). With ``files_backend = "s3"``
the bucket holds them (``client-thumbnails/<block_id>/<file_hash>/<type>-<size>.<ext>``) so
every process serves the same one; the local directory is then each process's cache.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import trio

from heaper_trio.errors import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    Unprocessable,
    disk_full_is_507,
)
from heaper_trio.records import User
from heaper_trio.storage.base import Storage

if TYPE_CHECKING:
    from heaper_trio.storage.blobs.s3 import S3Objects

MAX_BYTES = 10 * 1024 * 1024
NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
MAGIC = (
    (b"\xff\xd8\xff", "jpg", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png", "image/png"),
    (b"GIF87a", "gif", "image/gif"),
    (b"GIF89a", "gif", "image/gif"),
)
MIME = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "webp": "image/webp",
    "avif": "image/avif",
}


@dataclass(frozen=True, slots=True)
class ClientThumbnail:
    """A thumbnail that was kept: the names it is downloaded by and what it is."""

    block_id: str
    file_hash: str
    thumbnail_key: str
    kind: str  # the ``type`` it was uploaded with (image, video, ...: the client's words)
    size: str
    mime_type: str
    length: int  # bytes


def sniff(head: bytes) -> str | None:
    """The image format of these first bytes, or None: only images are kept."""
    for magic, ext, _ in MAGIC:
        if head.startswith(magic):
            return ext
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:12] in (b"ftypavif", b"ftypavis"):
        return "avif"
    return None


def _name(value: str, what: str) -> str:
    if not NAME.fullmatch(value):
        raise BadRequest(
            f"{what} must be 1-32 chars of [A-Za-z0-9_-]",
            code="invalid_field",
            details={"field": what},
        )
    return value


class ClientThumbnails:
    def __init__(self, storage: Storage, data_dir: Path, objects: S3Objects | None = None) -> None:
        self.storage = storage
        self.root = data_dir / "thumbnails" / "client"
        self.objects = objects

    def _key(self, folder: Path, name: str) -> str:
        return f"client-thumbnails/{folder.relative_to(self.root).as_posix()}/{name}"

    async def _check(self, user: User, block_id: str, file_hash: str) -> Path:
        """The caller's own block must hold the file and the caller must have proved its
        bytes (``file_readable_by``): a thumbnail never attaches to, or reveals anything about,
        a hash the caller only claims in a pushed ``files_v0``."""
        record = (await self.storage.get_blocks([block_id])).get(block_id)
        heap = await self.storage.get_heap(record.heap_id) if record else None
        if record is None or heap is None or heap.owner_id != user.id:
            raise NotFound("no such block in your heaps", code="block_not_found")
        if file_hash not in await self.storage.file_hashes_of_heap(
            heap.id, [block_id]
        ) or not await self.storage.file_readable_by(file_hash, user.id):
            raise NotFound("this block holds no such file", code="file_not_found")
        return self.root / block_id / file_hash

    async def save(
        self,
        user: User,
        block_id: str,
        file_hash: str,
        key: str,
        kind: str,
        size: str,
        source: IO[bytes],
        length: int,
    ) -> ClientThumbnail:
        folder = await self._check(user, block_id, file_hash)
        kind, size, key = _name(kind, "type"), _name(size, "size"), _name(key, "thumbnail_key")
        if length > MAX_BYTES:
            raise PayloadTooLarge(f"a thumbnail is at most {MAX_BYTES} bytes")
        ext = sniff(source.read(16))
        source.seek(0)
        if ext is None:
            raise Unprocessable(
                "a thumbnail must be a JPEG, PNG, GIF, WebP or AVIF image", code="not_an_image"
            )

        def write() -> None:
            folder.mkdir(parents=True, exist_ok=True)
            temp = folder / f".{uuid.uuid4().hex}.part"
            try:
                with open(temp, "wb") as out:
                    shutil.copyfileobj(source, out, 1024 * 1024)
                for old in folder.glob(f"{kind}-{size}.*"):
                    old.unlink(missing_ok=True)
                os.replace(temp, folder / f"{kind}-{size}.{ext}")
            finally:
                temp.unlink(missing_ok=True)

        with disk_full_is_507():  # written to a temp name: nothing is kept
            await trio.to_thread.run_sync(write)
        if self.objects is not None:  # the one every process serves
            await self.objects.delete_prefix(self._key(folder, f"{kind}-{size}."))
            name = f"{kind}-{size}.{ext}"
            await self.objects.put_file(self._key(folder, name), folder / name)
        return ClientThumbnail(block_id, file_hash, key, kind, size, MIME[ext], length)

    async def find(
        self, user: User, block_id: str, file_hash: str, kind: str, size: str
    ) -> tuple[Path, str]:
        folder = await self._check(user, block_id, file_hash)
        kind, size = _name(kind, "thumbnail_type"), _name(size, "thumbnail_size")
        if self.objects is not None:
            await self._fetch(folder, f"{kind}-{size}.")
        found = await trio.to_thread.run_sync(lambda: sorted(folder.glob(f"{kind}-{size}.*")))
        if not found:
            raise NotFound("no such thumbnail for this file", code="thumbnail_not_found")
        return found[0], MIME.get(found[0].suffix[1:], "application/octet-stream")

    async def _fetch(self, folder: Path, stem: str) -> None:
        """The local cache made to hold what the bucket holds (another process may have
        replaced or removed it); a copy of the same size is taken as current."""
        assert self.objects is not None
        found = await self.objects.listing(self._key(folder, stem))
        wanted = {key.rsplit("/", 1)[1]: size for key, size in found}

        def stale() -> list[str]:
            have = {p.name: p.stat().st_size for p in folder.glob(f"{stem}*")}
            for name in have.keys() - wanted.keys():
                (folder / name).unlink(missing_ok=True)
            return [n for n, size in wanted.items() if have.get(n) != size]

        for name in await trio.to_thread.run_sync(stale):
            temp = folder / f".{uuid.uuid4().hex}.part"
            await trio.to_thread.run_sync(lambda: folder.mkdir(parents=True, exist_ok=True))
            try:
                with open(temp, "wb") as out:  # noqa: ASYNC230 (opening only; reads in a thread)
                    await self.objects.read_into(self._key(folder, name), out)
                await trio.to_thread.run_sync(os.replace, temp, folder / name)
            finally:
                temp.unlink(missing_ok=True)

    async def forget_block(self, block_id: str) -> None:
        folder = self.root / block_id
        await trio.to_thread.run_sync(lambda: shutil.rmtree(folder, ignore_errors=True))
        if self.objects is not None:
            await self.objects.delete_prefix(f"client-thumbnails/{block_id}/")
