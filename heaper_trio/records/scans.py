"""Records of the folder-scan index, as services and both engines see them (declared apart
from ``base`` to keep it small; ``base`` re-exports them)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from heaper_trio.records import BlockChange, FileRecord


def _i64(value: int) -> int:
    """An unsigned 64-bit number (st_dev, st_ino) as the signed one both engines store."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass(frozen=True)
class FileIdentity:
    """Which bytes a scan hashed: the file's device and inode, size, and modification and
    change times (ns). A rewrite that restores mtime with utime still moves ctime, which only
    the kernel sets; a file replaced by another (rename, symlink) has another inode."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(_i64(st.st_dev), _i64(st.st_ino), st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class ScanEntry:
    """What a scanned path of a heap became, and what it was when a scan last saw it."""

    heap_id: str
    path: str  # absolute real path on the server
    kind: str  # "file" or "folder"
    block_id: str
    folder_id: str | None  # the folder block it is tagged with
    size: int
    mtime_ns: int
    hash: str  # lowercase hex SHA-256 ("" for a folder)
    missing: bool  # gone from disk at the last complete scan
    scan_id: str  # the last scan that saw it
    updated_at: int
    # The identity of the hashed bytes (with size and mtime_ns above); None for folders and
    # for entries written before migration 0006 (their files are hashed again).
    dev: int | None = None
    ino: int | None = None
    ctime_ns: int | None = None

    @property
    def identity(self) -> FileIdentity | None:
        if self.dev is None or self.ino is None or self.ctime_ns is None:
            return None
        return FileIdentity(self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns)


@dataclass(frozen=True)
class ScanBatch:
    """One transaction of a folder scan: block changes and the index rows that point at them.

    An entry is written unless the change of its block in ``changes`` was refused (a
    conflict), so a block and its entry always agree. ``files`` are inserted unless their hash
    is known; ``seen`` paths are marked as seen by ``scan_id`` (unchanged files). For every
    hash in ``hashes``, a file row whose ``source_path`` no longer has a present entry with
    that hash is pointed at one that has, if any (the bytes went missing or moved).
    ``replaced`` lists (hash, path) whose bytes at path are no longer that hash: a file row
    pointing there is pointed at a present copy, or at none (NULL: served as missing)."""

    heap_id: str
    scan_id: str
    changes: tuple[BlockChange, ...] = ()
    files: tuple[FileRecord, ...] = ()
    entries: tuple[ScanEntry, ...] = ()
    seen: tuple[str, ...] = ()
    hashes: tuple[str, ...] = ()
    replaced: tuple[tuple[str, str], ...] = ()
