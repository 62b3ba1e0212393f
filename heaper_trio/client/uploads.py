"""Resumable uploads: ``init``, the chunks the server lacks, ``complete``; with progress.

An upload that stops half way (a lost connection, a killed client, a server restart) is
resumed by calling :meth:`Uploads.upload` again with the same file: ``init`` answers which
chunks the server already has, and only the others travel. Runs under trio.
"""

from __future__ import annotations

import hashlib
import math
import mimetypes
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import httpx
import trio

from heaper_trio.client.errors import HeaperError

if TYPE_CHECKING:
    from heaper_trio.client.session import HeaperClient

MIN_CHUNK_SIZE = 65_536  # the server's lower bound (a smaller file is one chunk)
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
_HASH_BLOCK = 1024 * 1024
RETRY_BASE_S = 0.5  # a transient failure is retried after 0.5, 1, 2 ... s (or Retry-After)


@dataclass(frozen=True, slots=True)
class UploadProgress:
    """``bytes_done`` of ``bytes_total`` are on the server (chunks from an earlier attempt
    included); ``chunks_sent`` travelled in this attempt."""

    file_hash: str
    bytes_done: int
    bytes_total: int
    chunks_done: int
    chunks_total: int
    chunks_sent: int

    @property
    def fraction(self) -> float:
        return self.bytes_done / self.bytes_total if self.bytes_total else 1.0


@dataclass(frozen=True, slots=True)
class UploadResult:
    """``status`` is ``complete`` (the bytes travelled, now or in an earlier attempt) or
    ``exists`` (a block of yours already held them: nothing travelled)."""

    status: str
    block_id: str
    file_hash: str
    file_id: str | None
    size: int
    chunks_sent: int
    chunks_resumed: int  # chunks the server already had when this attempt began


ProgressCallback = Callable[[UploadProgress], None]


def file_hash(path: str | Path) -> str:
    """The lowercase hex SHA-256 of a file: how the server names it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


class _Source:
    """Bytes, a file by path, or an open binary file (read with ``pread``, never moved: the
    caller may have opened it in a way a path cannot say, such as without following links);
    read a chunk at a time, files off the event loop."""

    def __init__(self, source: bytes | str | Path | BinaryIO) -> None:
        self.data: bytes | None = None
        self.path: Path | None = None
        self.fd: int | None = None
        if isinstance(source, bytes):
            self.data, self.size = source, len(source)
        elif isinstance(source, (str, Path)):
            self.path = Path(source)
            self.size = self.path.stat().st_size
        else:
            self.fd = source.fileno()
            self.size = os.fstat(self.fd).st_size

    async def sha256(self) -> str:
        if self.fd is not None:
            return await trio.to_thread.run_sync(_fd_hash, self.fd, self.size)
        if self.path is None:
            return hashlib.sha256(self.data or b"").hexdigest()
        return await trio.to_thread.run_sync(file_hash, self.path)

    async def read(self, offset: int, length: int) -> bytes:
        if self.data is not None:
            return self.data[offset : offset + length]
        if self.fd is not None:
            return await trio.to_thread.run_sync(os.pread, self.fd, length, offset)
        assert self.path is not None
        path = self.path

        def read() -> bytes:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(length)

        return await trio.to_thread.run_sync(read)


def _fd_hash(fd: int, size: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while offset < size and (block := os.pread(fd, _HASH_BLOCK, offset)):
        digest.update(block)
        offset += len(block)
    return digest.hexdigest()


class Uploads:
    """``client.uploads``: resumable uploads and their status."""

    def __init__(self, client: HeaperClient) -> None:
        self._client = client

    async def upload(
        self,
        heap_id: str,
        block_id: str,
        source: bytes | str | Path | BinaryIO,
        *,
        name: str | None = None,
        mime_type: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        parallel: int = 1,
        progress: ProgressCallback | None = None,
        retries: int = 3,
    ) -> UploadResult:
        """Upload ``source`` (bytes, a path or an open binary file) to a block's ``files_v0``
        (the block is created as a ``file`` block if it does not exist). ``progress`` is called
        after ``init`` and after every chunk; an exception it raises stops the upload (resume
        it by calling ``upload`` again). ``parallel`` chunks travel at once. A chunk that meets
        a transient failure (a network error, ``429`` with ``Retry-After``, ``503``) is sent
        again up to ``retries`` times before the upload stops."""
        src = _Source(source)
        if name is None:
            name = src.path.name if src.path is not None else "file"
        if mime_type is None:
            mime_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        digest = await src.sha256()
        chunk_size = max(MIN_CHUNK_SIZE, chunk_size)
        init = await self._client.call(
            "POST",
            f"/api/upload/init/{heap_id}/{block_id}",
            json={
                "hash": digest,
                "size": src.size,
                "chunk_size": chunk_size,
                "name": name,
                "mime_type": mime_type,
            },
        )
        total = max(1, math.ceil(src.size / chunk_size))
        if init["status"] == "exists":
            if progress is not None:
                progress(UploadProgress(digest, src.size, src.size, total, total, 0))
            return UploadResult("exists", block_id, digest, init.get("file_id"), src.size, 0, total)
        chunk_size = int(init["chunk_size"])
        total = int(init["total_chunks"])
        have = {int(i) for i in init.get("received", [])}
        state = _Counter(have, chunk_size, src.size)
        report = _reporter(progress, digest, state, total)
        report()
        missing = [i for i in range(total) if i not in have]
        limiter = trio.Semaphore(max(1, parallel))
        base = f"/api/upload/chunk/{heap_id}/{block_id}/{digest}"

        async def send(index: int) -> None:
            async with limiter:
                body = await src.read(index * chunk_size, chunk_size)
                await self._put_chunk(f"{base}/{index}", body, retries)
                state.done(index)
                report()

        if parallel <= 1:  # in order: progress grows chunk by chunk
            for index in missing:
                await send(index)
        else:
            async with trio.open_nursery() as nursery:
                for index in missing:
                    nursery.start_soon(send, index)
        done = await self._client.call(
            "POST", f"/api/upload/complete/{heap_id}/{block_id}/{digest}", json={}
        )
        return UploadResult(
            str(done["status"]),
            str(done.get("block_id") or block_id),
            digest,
            done.get("file_id"),
            src.size,
            state.sent,
            len(have),
        )

    async def _put_chunk(self, path: str, body: bytes, retries: int) -> None:
        for attempt in range(retries + 1):
            last = attempt == retries
            try:
                r = await self._client.put(path, content=body)
            except httpx.TransportError:
                if last:
                    raise
                await trio.sleep(RETRY_BASE_S * 2**attempt)
                continue
            if r.status_code < 400:
                return
            if last or r.status_code not in (429, 503):
                raise HeaperError(r)
            await trio.sleep(_retry_after(r) or RETRY_BASE_S * 2**attempt)

    async def status(self, heap_id: str, block_id: str, file_hash: str) -> dict[str, Any]:
        """``uploading`` (with ``received``, ``bytes_received``, ``expires_at``), ``complete``
        or ``missing``."""
        return await self._client.call(
            "GET", f"/api/upload/status/{heap_id}/{block_id}/{file_hash}"
        )


def _retry_after(r: httpx.Response) -> float | None:
    value = r.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None


class _Counter:
    def __init__(self, have: set[int], chunk_size: int, size: int) -> None:
        self.indexes, self.chunk_size, self.size, self.sent = set(have), chunk_size, size, 0

    def done(self, index: int) -> None:
        self.indexes.add(index)
        self.sent += 1

    def bytes_done(self) -> int:
        return sum(min(self.chunk_size, self.size - i * self.chunk_size) for i in self.indexes)


def _reporter(
    progress: ProgressCallback | None, digest: str, state: _Counter, total: int
) -> Callable[[], None]:
    def report() -> None:
        if progress is not None:
            progress(
                UploadProgress(
                    digest, state.bytes_done(), state.size, len(state.indexes), total, state.sent
                )
            )

    return report
