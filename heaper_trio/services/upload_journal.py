"""Which chunks of an upload's ``data`` are received: one record per chunk, kept in ``data``
itself, past the file's bytes, so a chunk's bytes and its record are made durable by one
``fdatasync`` (issue 12: one durability point per chunk).

A chunk used to be marked by an empty ``<index>.done`` after its bytes were synced, and the
marker's name synced with its folder: two journal commits of the file system per chunk, 22% of
a chunk's time with one chunk in flight. Now the writer puts the chunk's bytes, then its record
(at a fixed slot: ``journal_start(size) + index * RECORD``), then syncs the file once. One sync
does not order the two, so a crash during it may leave a record whose bytes never reached the
disk; such a record therefore carries a SHA-256 that vouches for the bytes:

- ``PREFIX``: the hash of ``data[0 : end of the chunk]``, free for a chunk written while it came
  next in the upload's running hash (``upload_hash``: one chunk in flight, the usual case): one
  sync per chunk;
- ``SYNCED``: a chunk that came ahead (several in flight) is not in the running hash, and hashing
  its bytes only for its record cost 15% more CPU with 4 in flight (SHA-256, the fastest hash
  here: 5.4 ms per 8 MiB); its record is written after its bytes are synced, and synced in turn
  (two syncs, the second a page, whose latency the other chunks in flight overlap), so its CRC
  is all it needs.

A record is trusted without reading anything in the process that wrote and synced it
(``VERIFIED``); any other record (after a restart, or written by another process sharing the
data directory) counts only once checked (``verify``: a ``PREFIX`` record followed by another
is proven by it, the last one by its hash), and the file is then synced before it is
reported, so nothing is ever reported received that is not durable. A torn record
(cut off mid-write) fails its own CRC and is simply not there: that chunk is sent again.

A chunk whose sync failed gets a ``BAD`` record, not a hole: another process's status may have
vouched for it meanwhile and seeded its running hash with its bytes (several workers), so a
resend must not rewrite them in ``data`` (it goes to a file of its own: any record sends it
there) and ``complete`` hashes from byte 0 while a ``BAD`` record is there. A ``BAD`` record
is never received; a release before it reads one as a hole (unknown kind): not received, sent
again, as when it erased the record.

Records live at fixed slots, not appended, so chunks in flight at once never contend for the
end of a journal, and a slot of zeros (a hole) is "not received". ``complete`` cuts the
records off (``ftruncate`` to the file's size) before it publishes ``data``; a crash between
that cut and the rename leaves a whole file with no records (and a ``cut`` file, made before),
which ``received`` recognises by its hash (``whole_without_records``)."""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

RECORD = 64  # bytes per slot
ALIGN = 4096  # records start on a page of their own: the last chunk's page holds data only
MAGIC = b"HUJ1"
SYNCED = 1  # written once the chunk's bytes were synced: no digest needed
PREFIX = 2  # digest: SHA-256 of data[0 : end of the chunk]
BAD = 3  # the chunk's sync failed: not received, never rewritten in data, complete hashes all
_BODY = struct.Struct("<4sIQB3x32s")  # magic, index, length, kind, digest
_CRC = struct.Struct("<I")
_KIND = 16  # the kind's offset in a record (after magic, index and length)
KEEP = 1024  # uploads whose verified chunks a process remembers
READ_BLOCK = 1024 * 1024
WALK_BYTES = 1024 * 1024 * 1024  # read at most this to check the last PREFIX record (~1 s)


def journal_start(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


def slot(size: int, index: int) -> int:
    return journal_start(size) + index * RECORD


@dataclass(frozen=True)
class Record:
    index: int
    length: int
    kind: int
    digest: bytes


def pack(index: int, length: int, kind: int, digest: bytes) -> bytes:
    body = _BODY.pack(MAGIC, index, length, kind, digest)
    return (body + _CRC.pack(zlib.crc32(body))).ljust(RECORD, b"\0")


def unpack(raw: bytes, index: int, length: int) -> Record | None:
    """The record of chunk ``index`` in ``raw`` (one slot); None for a hole, a torn or a
    foreign record (wrong CRC, index or length)."""
    n = _BODY.size
    if len(raw) < n + _CRC.size or raw[:4] != MAGIC:
        return None
    (crc,) = _CRC.unpack_from(raw, n)
    if crc != zlib.crc32(raw[:n]):
        return None
    _, at, of, kind, digest = _BODY.unpack_from(raw)
    if at != index or of != length or kind not in (SYNCED, PREFIX, BAD):
        return None
    return Record(at, of, kind, digest)


def write_record(fd: int, size: int, index: int, length: int, kind: int, digest: bytes) -> None:
    """The record of a chunk whose bytes are written (not yet synced: the caller syncs both)."""
    os.pwrite(fd, pack(index, length, kind, digest), slot(size, index))


def mark_bad(fd: int, size: int, index: int, length: int) -> None:
    """After its sync failed: the record must not vouch for bytes that may never reach the
    disk (a later sync on another descriptor succeeds on Linux, the error reported once), and
    must not leave a hole either: a hole lets a resend rewrite bytes another process may
    already have vouched for and hashed (its status read them before this)."""
    os.pwrite(fd, pack(index, length, BAD, bytes(32)), slot(size, index))


def received_kinds(records: dict[int, Record]) -> dict[int, Record]:
    """``records`` without the ``BAD`` ones (never received)."""
    return {i: r for i, r in records.items() if r.kind != BAD}


def bad_chunks(fd: int, size: int, lengths: list[int]) -> set[int]:
    """The chunks whose sync failed (one read of the slots): ``complete`` then trusts no
    running hash, which a status in another process may have seeded with such a chunk."""
    raw = os.pread(fd, len(lengths) * RECORD, journal_start(size))
    kinds = raw[_KIND::RECORD]  # one byte per slot, searched in C (10,000 chunks: 640 KB)
    found: set[int] = set()
    at = kinds.find(BAD)
    while at >= 0:
        piece = raw[at * RECORD : (at + 1) * RECORD]
        if (rec := unpack(piece, at, lengths[at])) is not None and rec.kind == BAD:
            found.add(at)
        at = kinds.find(BAD, at + 1)
    return found


def last_prefix(records: dict[int, Record]) -> int:
    return max((i for i, r in records.items() if r.kind == PREFIX), default=-1)


def read_record(fd: int, size: int, index: int, length: int) -> Record | None:
    return unpack(os.pread(fd, RECORD, slot(size, index)), index, length)


def read_records(fd: int, size: int, lengths: list[int]) -> dict[int, Record]:
    """Every chunk's record (``lengths[i]`` is chunk ``i``'s length), in one read."""
    raw = os.pread(fd, len(lengths) * RECORD, journal_start(size))
    found: dict[int, Record] = {}
    for index in range(min(len(lengths), len(raw) // RECORD)):
        piece = raw[index * RECORD : (index + 1) * RECORD]
        if piece[:4] == MAGIC and (rec := unpack(piece, index, lengths[index])) is not None:
            found[index] = rec
    return found


class Verified:
    """Per process, the chunks whose records are known good: written and synced here, or
    checked against their bytes and synced. Keyed by upload and inode (another file under the
    name, e.g. after ``complete``, starts afresh), a bit per chunk (10,000 chunks: 1.25 KB);
    at most ``keep`` uploads, least recently used first out."""

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._by_key: OrderedDict[tuple[str, int], int] = OrderedDict()
        # the last PREFIX record found not to vouch, with how many records there were: each
        # status would read up to WALK_BYTES again for the same answer (a new record, a
        # resent chunk's, may make it vouch: then it is checked again)
        self._bad: OrderedDict[tuple[str, int], tuple[int, int]] = OrderedDict()
        # the hash of data[0 : end of chunk n - 1] read by ``verify``, for ``upload_hash``
        self._seeds: OrderedDict[tuple[str, int], tuple[int, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_key)

    def add(self, upload_id: str, ino: int, indexes: Iterable[int]) -> None:
        bits = 0
        for index in indexes:
            bits |= 1 << index
        with self._lock:
            key = (upload_id, ino)
            self._by_key[key] = self._by_key.get(key, 0) | bits
            self._by_key.move_to_end(key)
            while len(self._by_key) > self.keep:
                self._by_key.popitem(last=False)

    def among(self, upload_id: str, ino: int, indexes: Iterable[int]) -> set[int]:
        """Those of ``indexes`` known good."""
        with self._lock:
            bits = self._by_key.get((upload_id, ino), 0)
        return {i for i in indexes if bits >> i & 1}

    def has(self, upload_id: str, ino: int, index: int) -> bool:
        with self._lock:
            return bool(self._by_key.get((upload_id, ino), 0) >> index & 1)

    def found_bad(self, upload_id: str, ino: int, last: int, records: int) -> None:
        with self._lock:
            self._bad[(upload_id, ino)] = (last, records)
            self._bad.move_to_end((upload_id, ino))
            while len(self._bad) > self.keep:
                self._bad.popitem(last=False)

    def known_bad(self, upload_id: str, ino: int, last: int, records: int) -> bool:
        with self._lock:
            return self._bad.get((upload_id, ino)) == (last, records)

    def seed(self, upload_id: str, ino: int, chunks: int, digest: Any) -> None:
        """``digest`` is the SHA-256 of the upload's first ``chunks`` chunks, all received
        and synced: the running hash may start there instead of reading them again."""
        with self._lock:
            self._seeds[(upload_id, ino)] = (chunks, digest.copy())
            self._seeds.move_to_end((upload_id, ino))
            while len(self._seeds) > self.keep:
                self._seeds.popitem(last=False)

    def take_seed(self, upload_id: str, ino: int) -> tuple[int, Any] | None:
        with self._lock:
            return self._seeds.pop((upload_id, ino), None)

    def drop(self, upload_id: str) -> None:
        with self._lock:
            for key in [k for k in self._by_key if k[0] == upload_id]:
                del self._by_key[key]
            for key in [k for k in self._bad if k[0] == upload_id]:
                del self._bad[key]
            for key in [k for k in self._seeds if k[0] == upload_id]:
                del self._seeds[key]


VERIFIED = Verified()


def _hash_into(fd: int, digests: list[Any], start: int, length: int, view: memoryview) -> bool:
    offset, end = start, start + length
    while offset < end:
        n = os.preadv(fd, [view[: min(len(view), end - offset)]], offset)
        if n == 0:
            return False
        for digest in digests:
            digest.update(view[:n])
        offset += n
    return True


def verify(
    fd: int,
    records: dict[int, Record],
    trusted: set[int],
    marked: Callable[[int], bool],
    chunk_size: int,
    check_last: bool = True,
    seed: Callable[[int, Any], None] | None = None,
) -> set[int]:
    """The records among ``records`` not in ``trusted`` that vouch for their bytes (read from
    ``fd``). A ``SYNCED`` one does by being there. A ``PREFIX`` one does when a later
    ``PREFIX`` record is there: that chunk was hashed as written only because every chunk
    before it was marked, so synced, before its record was written. The last ``PREFIX`` one
    needs the hash from byte 0 to its end to be its digest (every chunk before it received: a
    record, or ``marked``, an old layout's marker), read only up to ``WALK_BYTES``: past that
    it is not received and its chunk is sent again (a restart costs one chunk, never a read
    of 20 GiB in a status request). The hash so read is handed to ``seed`` (the chunks it
    covers, the digest) once synced: the running hash need not read them again."""
    prefixes = sorted(i for i, r in records.items() if r.kind == PREFIX)
    good = {
        i
        for i, r in records.items()
        if i not in trusted and (r.kind == SYNCED or (prefixes and i < prefixes[-1]))
    }
    last = prefixes[-1] if prefixes else -1
    seeded: Any = None
    if check_last and last >= 0 and last not in trusted and (last + 1) * chunk_size <= WALK_BYTES:
        prefix = hashlib.sha256()
        view = memoryview(bytearray(READ_BLOCK))
        for index in range(last + 1):
            rec = records.get(index)
            if rec is None and not marked(index):
                break  # a gap: the last PREFIX cannot be vouched for
            length = rec.length if rec is not None else chunk_size
            if not _hash_into(fd, [prefix], index * chunk_size, length, view):
                break
        else:
            if prefix.digest() == records[last].digest:
                good.add(last)
                seeded = prefix
    if good:
        os.fdatasync(fd)  # reported received only once durable, whoever wrote it
    if seeded is not None and seed is not None:
        seed(last + 1, seeded)
    return good


def whole_without_records(fd: int, size: int, expected_hash: str) -> bool:
    """``data`` cut to its size by a ``complete`` that then died before its rename: every byte
    is there, vouched for by the upload's own hash."""
    if os.fstat(fd).st_size != size or not size:
        return False
    digest = hashlib.sha256()
    view = memoryview(bytearray(READ_BLOCK))
    if not _hash_into(fd, [digest], 0, size, view):
        return False
    if digest.hexdigest() != expected_hash:
        return False
    os.fdatasync(fd)
    return True
