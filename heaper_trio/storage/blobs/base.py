"""What the file service asks of the place verified bytes live: an object store by key.

Keys are ``files/<sha256>`` for stored files, ``thumbnails/<path>`` for generated thumbnails
and ``uploads/<upload id>`` for resumable uploads in progress (their multipart parts, then the
assembled object until its hash is checked). Nothing is ever written under ``files/`` before
its hash is verified, and a write there is one atomic PUT, CompleteMultipartUpload or copy:
readers see the whole object or none.

The local disk keeps its own layout (``services/file_store``: the rename-based store that
needs no multipart parts); ``local.LocalObjects`` gives the same interface over a directory
for the tools that copy between the two (``ops/migrate_files``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


class ObjectMissing(Exception):
    """No object (or no multipart upload) under that key."""


class ObjectChanged(Exception):
    """The object under that key is no longer the version a conditional call named."""


def file_key(hash: str) -> str:
    return f"files/{hash}"


def upload_key(upload_id: str) -> str:
    return f"uploads/{upload_id}"


@dataclass(frozen=True)
class Part:
    """A multipart part the store holds: its number (1-based), size and ETag."""

    number: int
    size: int
    etag: str


class ObjectStore(ABC):
    """Async methods, each one store request or a streamed transfer (run in worker threads
    by the implementations, never on the event loop)."""

    name: str  # "local" or "s3", for logs and the migrate command

    @abstractmethod
    async def size(self, key: str) -> int | None:
        """The object's size, or None if there is none."""

    @abstractmethod
    async def put_file(self, key: str, path: Path) -> None:
        """The file's bytes under ``key`` (replacing any), visible once whole."""

    @abstractmethod
    async def read_range(self, key: str, first: int, length: int) -> AsyncIterator[bytes]:
        """``length`` bytes from ``first``: the request is made before this returns (a missing
        object raises ``ObjectMissing`` here, before any header is sent), the body streams."""

    @abstractmethod
    async def read_into(self, key: str, out: BinaryIO, *, bulk: bool = False) -> str:
        """The whole object written to ``out``; returns its SHA-256 (hex), read once.
        ``bulk``: a large transfer, kept off the capacity interactive requests use."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Gone (no error if it was not there)."""

    async def aclose(self) -> None:
        return None
