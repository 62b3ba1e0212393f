"""The SHA-256 of a resumable upload, taken as its chunks arrive, so ``complete`` hashes only
what is not hashed yet (issue 12 item 5: the hash pass was most of ``complete``).

Each process keeps, per upload it is receiving, a running hash over the upload's first
``chunks`` chunks, advanced only over chunks marked received: the chunk written by a request
that holds the next place is hashed from its own body as it is written (in the same thread job
as the write, so it overlaps the network read on the other core) and taken in only once its
marker is synced; chunks that arrived ahead (several in flight) are read back from ``data``
(the page cache, in the marking request's thread) when the gap before them fills.

It is an optimisation only, never trusted beyond what it can vouch for:

- a chunk's bytes in ``data`` never change once it is marked (``upload_journal``): a writer holds an
  exclusive lock on its chunk's byte range (``upload_layout.open_chunk``) for the write and the
  mark and checks the marker under it, so a resend, or the same chunk sent twice at once (also
  from another process), goes to a file of its own, which ``complete`` copies in: then the
  running hash is used only if that copy lies past it, else ``complete`` hashes from zero;
- it is kept in memory only: after a restart, or when chunks landed in another process (several
  workers), a process's hash covers what it saw or could read back, and ``complete`` hashes the
  rest; a hash of another file (``data``'s inode changed) is not used; after a restart, the
  hash a status request read to check the records (``upload_journal.verify``) is its start;
- a write cut off, failed or cancelled never reaches it: the digest of a chunk being written is
  a copy, taken in only after its record is synced, in the same thread job.

Memory: one small digest per upload in progress, dropped when the upload completes or is
discarded, and at most ``KEEP`` kept (the least recently used goes first).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from heaper_trio.services.upload_journal import VERIFIED

KEEP = 1024  # uploads hashed at once per process; a digest is a few hundred bytes
READ_BLOCK = 1024 * 1024  # read back in blocks of this size into one buffer (as upload_disk)


@dataclass(eq=False)
class RunningHash:
    """The hash of one upload's ``data`` (inode ``ino``) over its first ``chunks`` chunks;
    ``busy`` while a thread hashes chunk ``chunks`` (inline or read back)."""

    ino: int
    digest: Any = field(default_factory=hashlib.sha256)
    chunks: int = 0
    busy: bool = False


@dataclass(eq=False)
class Claim:
    """The right to hash chunk ``index`` as it is written, into a copy of the running hash."""

    entry: RunningHash
    index: int
    digest: Any
    settled: bool = False

    def update(self, data: Any) -> None:
        self.digest.update(data)


def chunk_span(index: int, chunk_size: int, size: int) -> tuple[int, int]:
    start = index * chunk_size
    return start, max(0, min(chunk_size, size - start))


def hash_range(fd: int, digest: Any, start: int, end: int) -> int:
    """``[start, end)`` of the open file ``fd`` into ``digest``; the bytes read (short: the
    file ended)."""
    view = memoryview(bytearray(min(READ_BLOCK, max(end - start, 1))))
    offset = start
    while offset < end:
        n = os.preadv(fd, [view[: min(len(view), end - offset)]], offset)
        if n == 0:
            break
        digest.update(view[:n])
        offset += n
    return offset - start


class UploadHashes:
    """The running hashes of this process, by upload id. Every method is quick and may be
    called from any thread; hashing itself is done outside the lock, on a copy."""

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._by_id: OrderedDict[str, RunningHash] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_id)

    def _entry(self, upload_id: str, ino: int) -> RunningHash:
        entry = self._by_id.get(upload_id)
        if entry is None or entry.ino != ino:
            entry = self._by_id[upload_id] = RunningHash(ino)
            while len(self._by_id) > self.keep:
                self._by_id.popitem(last=False)
        self._by_id.move_to_end(upload_id)
        if (
            not entry.busy
            and (seed := VERIFIED.take_seed(upload_id, ino)) is not None
            and seed[0] > entry.chunks  # a status after a restart read them: not read again
        ):
            entry.chunks, entry.digest = seed
        return entry

    def claim(self, upload_id: str, ino: int, index: int) -> Claim | None:
        """Chunk ``index`` may be hashed as it is written: it comes next and nobody hashes
        it. The caller holds the chunk's range lock, so no other writer changes it."""
        with self._lock:
            entry = self._entry(upload_id, ino)
            if entry.chunks != index or entry.busy:
                return None
            entry.busy = True
            return Claim(entry, index, entry.digest.copy())

    def settle(self, claim: Claim | None, marked: bool) -> None:
        """The claimed chunk is marked received (its hash taken in) or not (dropped)."""
        if claim is None or claim.settled:
            return
        with self._lock:
            claim.settled = True
            entry = claim.entry
            entry.busy = False
            if marked and entry.chunks == claim.index:
                entry.digest, entry.chunks = claim.digest, claim.index + 1

    def catch_up(
        self,
        upload_id: str,
        f: BinaryIO,
        marked: Callable[[int], bool],
        chunk_size: int,
        size: int,
        budget: int,
    ) -> int:
        """Advance over chunks ``marked`` received, read back from ``data`` (open as ``f``), up
        to about ``budget`` bytes (a request's answer waits for it); the bytes hashed."""
        done = 0
        total = -(-size // chunk_size) if size else 1
        ino = os.fstat(f.fileno()).st_ino
        while done < budget:
            with self._lock:
                entry = self._by_id.get(upload_id)
                if entry is None or entry.ino != ino or entry.busy or entry.chunks >= total:
                    return done
                index = entry.chunks
                if not marked(index):
                    return done
                entry.busy = True
                digest = entry.digest.copy()
            start, length = chunk_span(index, chunk_size, size)
            ok = False
            try:
                ok = hash_range(f.fileno(), digest, start, start + length) == length
            finally:
                with self._lock:
                    entry.busy = False
                    if ok and entry.chunks == index:
                        entry.digest, entry.chunks = digest, index + 1
            if not ok:
                return done
            done += length
        return done

    def start(self, upload_id: str, ino: int) -> tuple[Any, int]:
        """For ``complete`` (no writer left, ``LOCK_EX``): a copy of the hash of ``data``
        (inode ``ino``) and the chunks it covers; a new hash and 0 if there is none."""
        with self._lock:
            entry = self._by_id.get(upload_id)
            if entry is not None and entry.ino == ino:
                entry = self._entry(upload_id, ino)  # with a seed that covers more
                if entry.busy:
                    return hashlib.sha256(), 0
                return entry.digest.copy(), entry.chunks
        seed = VERIFIED.take_seed(upload_id, ino)
        return (seed[1], seed[0]) if seed is not None else (hashlib.sha256(), 0)

    def drop(self, upload_id: str) -> None:
        """The upload is gone (completed or discarded): its hash, and its chunks known good."""
        with self._lock:
            self._by_id.pop(upload_id, None)
        VERIFIED.drop(upload_id)
