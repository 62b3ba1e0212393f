"""What the file service answers about an upload or a block's file, as values.

One frozen type per outcome, each carrying its ``status`` as a class constant from the closed
set :class:`UploadStatus`: a caller tells outcomes apart by type (``isinstance``, ``match``),
never by comparing strings, and the fields an outcome has are exactly those it can have (an
``exists`` answer has a file id, a ``ready`` one an expiry). The contract's JSON is written from
these in ``web/json_files.py``; nothing here knows the wire's key names.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from heaper_trio.records import FileRecord


class UploadStatus(StrEnum):
    complete = "complete"  # stored, and recorded in the block's files_v0
    exists = "exists"  # init: the caller proved these bytes before; nothing to send
    ready = "ready"  # init: send the chunks not received yet, then complete
    uploading = "uploading"  # status: a resumable upload of the caller's is under way
    missing = "missing"  # status: the block names the file, nothing proves its bytes
    ok = "ok"  # a chunk was stored


@dataclass(frozen=True, slots=True)
class StoredFile:
    """The file is stored and this block holds it (direct, complete, status)."""

    status: ClassVar[UploadStatus] = UploadStatus.complete
    block_id: str
    file_hash: str
    file_id: str
    size: int

    @classmethod
    def of(cls, record: FileRecord, block_id: str) -> StoredFile:
        return cls(block_id, record.hash, record.id, record.size)


@dataclass(frozen=True, slots=True)
class AlreadyStored:
    """init: deduplicated, every chunk counts as received."""

    status: ClassVar[UploadStatus] = UploadStatus.exists
    chunk_size: int
    total_chunks: int
    file_hash: str
    file_id: str

    @property
    def received(self) -> tuple[int, ...]:
        return tuple(range(self.total_chunks))


@dataclass(frozen=True, slots=True)
class UploadReady:
    """init: the upload exists (new or resumed) with the chunks it has so far."""

    status: ClassVar[UploadStatus] = UploadStatus.ready
    chunk_size: int
    total_chunks: int
    received: tuple[int, ...]
    expires_at: int  # Unix ms


@dataclass(frozen=True, slots=True)
class UploadProgress:
    """status: the caller's resumable upload of this file to this block."""

    status: ClassVar[UploadStatus] = UploadStatus.uploading
    size: int
    chunk_size: int
    total_chunks: int
    received: tuple[int, ...]
    expires_at: int  # Unix ms
    bytes_received: int


@dataclass(frozen=True, slots=True)
class FileMissing:
    """status: no proof of these bytes for this block (never a file id or size: a bare hash
    tells nothing about another user's file)."""

    status: ClassVar[UploadStatus] = UploadStatus.missing
    block_id: str
    file_hash: str


@dataclass(frozen=True, slots=True)
class ChunkStored:
    status: ClassVar[UploadStatus] = UploadStatus.ok
    index: int
    size: int


UploadStart = AlreadyStored | UploadReady  # what init answers
FileState = UploadProgress | StoredFile | FileMissing  # what status answers
UploadOutcome = UploadStart | FileState | ChunkStored
