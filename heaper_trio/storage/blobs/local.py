"""The data directory seen as an object store: ``files/<hash>`` is the content-addressed
file ``files/sha256/ab/cd/<hash>``, ``thumbnails/<path>`` a generated thumbnail,
``client-thumbnails/<path>`` one a client uploaded. The server's
own upload path writes the disk directly (synced renames, ``services/upload_disk``); this view
is what tools that move bytes between backends read and write (``ops/migrate_files``)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import trio

from heaper_trio.storage.blobs.base import ObjectMissing, ObjectStore

READ_SIZE = 1 << 20
STORE = Path("files", "sha256")
THUMBNAILS = Path("thumbnails", "generated")
CLIENT_THUMBNAILS = Path("thumbnails", "client")


class LocalObjects(ObjectStore):
    name = "local"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def path(self, key: str) -> Path:
        kind, _, rest = key.partition("/")
        if kind == "files" and len(rest) == 64 and "/" not in rest:
            return self.data_dir / STORE / rest[:2] / rest[2:4] / rest
        if kind in ("thumbnails", "client-thumbnails") and rest and ".." not in rest.split("/"):
            return (
                self.data_dir / (THUMBNAILS if kind == "thumbnails" else CLIENT_THUMBNAILS) / rest
            )
        raise ValueError(f"not a key of the local store: {key!r}")

    def keys(self) -> list[tuple[str, Path]]:
        """Every stored file and generated thumbnail, as (key, path)."""
        out = [(f"files/{p.name}", p) for p in sorted((self.data_dir / STORE).glob("*/*/*"))]
        for kind, folder in (("thumbnails", THUMBNAILS), ("client-thumbnails", CLIENT_THUMBNAILS)):
            root = self.data_dir / folder
            out += [
                (f"{kind}/{p.relative_to(root).as_posix()}", p)
                for p in sorted(root.glob("*/*/*"))
                if p.is_file() and not p.name.startswith(".")
            ]
        return out

    async def size(self, key: str) -> int | None:
        try:
            return (await trio.to_thread.run_sync(os.stat, self.path(key))).st_size
        except FileNotFoundError:
            return None

    async def put_file(self, key: str, path: Path) -> None:
        target = self.path(key)

        def put() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            temp = target.with_name(target.name + ".part")
            with open(path, "rb") as src, open(temp, "wb") as out:
                while data := src.read(READ_SIZE):
                    out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, target)

        await trio.to_thread.run_sync(put)

    async def read_range(self, key: str, first: int, length: int) -> AsyncIterator[bytes]:
        try:
            fd = await trio.to_thread.run_sync(os.open, self.path(key), os.O_RDONLY)
        except FileNotFoundError:
            raise ObjectMissing(key) from None
        return self._stream(fd, first, length)

    async def _stream(self, fd: int, first: int, length: int) -> AsyncIterator[bytes]:
        try:
            sent = 0
            while sent < length:
                data = await trio.to_thread.run_sync(
                    os.pread, fd, min(READ_SIZE, length - sent), first + sent
                )
                if not data:
                    return
                sent += len(data)
                yield data
        finally:
            os.close(fd)

    async def read_into(self, key: str, out: BinaryIO, *, bulk: bool = False) -> str:
        def copy() -> str:
            digest = hashlib.sha256()
            try:
                with open(self.path(key), "rb") as src:
                    while data := src.read(READ_SIZE):
                        digest.update(data)
                        out.write(data)
            except FileNotFoundError:
                raise ObjectMissing(key) from None
            out.flush()
            return digest.hexdigest()

        return await trio.to_thread.run_sync(copy)

    async def delete(self, key: str) -> None:
        await trio.to_thread.run_sync(lambda: self.path(key).unlink(missing_ok=True))
