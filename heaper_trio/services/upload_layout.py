"""A resumable upload on the local disk: one file per upload, chunks written at their offset.

``complete`` used to copy every chunk file into a new file, so a 256 MiB upload wrote its bytes
twice. Now the upload's folder holds ``data``, sized to the file when the first chunk comes
(holes until received); a chunk's body is written straight to its offset, then its record past
the file's bytes (``upload_journal``), and one ``fdatasync`` makes both durable: a restart knows
what arrived (records whose bytes hash to them) and a chunk cut off mid-way is simply not
received. An upload begun when chunks were marked by an empty ``<index>.done`` (synced with its
folder: a second journal commit per chunk) still counts those markers. ``complete`` hashes
``data`` where it lies and renames it into the store: a hash and a rename, no copy. Chunks
that arrive in order are hashed as they come (``upload_hash``), so ``complete`` mostly reads
nothing at all.

Three more kinds of chunk still arrive as files of their own (``<index>.chunk``, written under
a temporary name and renamed, as before): every chunk of an upload begun before this layout
(its folder has no ``data``; it must still complete after an upgrade), a chunk sent again once
received (a resend cut off must leave the received bytes whole), and a chunk sent while
another request writes the same chunk (each writer of ``data`` holds a lock on its chunk's
byte range, so no two write one chunk at once and a marked chunk never changes in ``data``).
``complete`` first copies those into ``data`` at their offsets; the hash it then takes covers
every byte either way.

Writers and ``complete`` exclude each other with ``flock`` on ``data`` (processes sharing the
data directory included): a chunk writes under a shared lock, ``complete`` hashes and renames
under an exclusive one, and a writer that gets its lock once ``data`` has moved to the store
finds its name gone (or another file under it) and writes nothing: no byte reaches a published
file after its hash was verified. A kill -9 at any point leaves either the upload (chunks not
yet marked are sent again) or a store file whose hash was checked before its rename.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import trio

from heaper_trio.errors import Conflict, NotFound
from heaper_trio.records import UploadRecord
from heaper_trio.services import upload_journal as journal
from heaper_trio.services.upload_disk import CopyRange, Data, Write, _commit, receive_body
from heaper_trio.services.upload_hash import Claim, UploadHashes, hash_range
from heaper_trio.services.writeback import start_writeback, wait_written

log = logging.getLogger(__name__)
DATA = "data"
CUT = "cut"  # complete cut the records off ``data`` (and may have died before its rename)
PIECE = re.compile(r"([0-9]{1,9})\.(chunk|done)")
Io = Callable[..., Awaitable[Any]]
T = TypeVar("T")
LOCK_RETRY_S = 0.05
# Chunks read back for the running hash by one request, at most (besides its own): after a
# restart the hash starts again from chunk 0, and one answer must not wait for gigabytes.
CATCH_UP_BYTES = 64 * 1024 * 1024
BUSY = {errno.EAGAIN, errno.EACCES}


def chunk_length(upload: UploadRecord, index: int) -> int:
    if index == upload.total_chunks - 1:
        return upload.size - index * upload.chunk_size
    return upload.chunk_size


def received(folder: Path, upload: UploadRecord) -> list[int]:
    """Chunks recorded in ``data`` (``upload_journal``; records this process did not write
    are checked against their bytes first), marked by an old layout's ``<index>.done`` (only
    while ``data`` exists) and whole chunk files. One directory listing and one read of the
    records: the cost follows the chunks present, not the chunk count."""
    found: set[int] = set()
    try:
        entries = os.scandir(folder)
    except FileNotFoundError:
        return []
    with entries:
        listed = list(entries)
    has_data = any(e.name == DATA for e in listed)
    cut = any(e.name == CUT for e in listed)
    done: set[int] = set()
    for entry in listed:
        match = PIECE.fullmatch(entry.name)
        if match is None or (index := int(match[1])) >= upload.total_chunks:
            continue
        if match[2] == "done":
            if has_data:
                done.add(index)
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat(
                follow_symlinks=False
            ).st_size == chunk_length(upload, index):
                found.add(index)
        except FileNotFoundError:
            pass
    if has_data:
        found |= done | _recorded(folder, upload, done, cut)
    return sorted(found)


def _recorded(folder: Path, upload: UploadRecord, done: set[int], cut: bool) -> set[int]:
    try:
        fd = os.open(folder / DATA, os.O_RDONLY)
    except FileNotFoundError:
        return set()
    try:
        ino = os.fstat(fd).st_ino
        lengths = [chunk_length(upload, i) for i in range(upload.total_chunks)]
        records = journal.read_records(fd, upload.size, lengths)
        every = range(upload.total_chunks)
        if cut and not records:  # a complete died between its cut and rename: hashed once
            if len(journal.VERIFIED.among(upload.id, ino, every)) == upload.total_chunks or (
                journal.whole_without_records(fd, upload.size, upload.hash)
            ):
                journal.VERIFIED.add(upload.id, ino, every)
                return set(every)
            return set()
        records = journal.received_kinds(records)
        trusted = journal.VERIFIED.among(upload.id, ino, records)
        last = journal.last_prefix(records)
        bad = journal.VERIFIED.known_bad(upload.id, ino, last, len(records))
        good = journal.verify(
            fd,
            records,
            trusted,
            done.__contains__,
            upload.chunk_size,
            check_last=not bad,
            seed=lambda chunks, digest: journal.VERIFIED.seed(upload.id, ino, chunks, digest),
        )
        journal.VERIFIED.add(upload.id, ino, good)
        checked = last >= 0 and (last + 1) * upload.chunk_size <= journal.WALK_BYTES
        if checked and not bad and last not in trusted | good:
            journal.VERIFIED.found_bad(upload.id, ino, last, len(records))
        return trusted | good
    finally:
        os.close(fd)


def published(folder: Path) -> bool:
    """``complete`` renamed ``data`` into the store (its hash checked first: ``cut`` is made
    only then) and failed, or died, before the file was recorded: the chunks are gone from
    here, but their verified bytes are in the store."""
    return (folder / CUT).exists() and not (folder / DATA).exists()


def _nothing_to_hash(folder: Path) -> bool:
    """Neither ``data`` nor a chunk file in the upload's folder (or no folder)."""
    try:
        with os.scandir(folder) as entries:
            return not any(
                e.name == DATA or ((m := PIECE.fullmatch(e.name)) is not None and m[2] == "chunk")
                for e in entries
            )
    except FileNotFoundError:
        return True


def goes_to_its_own_file(folder: Path, index: int) -> bool:
    """A chunk received already (a resend) or of an upload begun before ``data``."""
    if (folder / f"{index}.done").exists() or (folder / f"{index}.chunk").exists():
        return True
    return not (folder / DATA).exists() and any(folder.glob("*.chunk"))


def _still_named(f: BinaryIO, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
    except FileNotFoundError:
        return False


def open_data(folder: Path, size: int, lock: int, end: int = 0) -> BinaryIO:
    """``data`` open for reading and writing, ``size`` long, locked (``LOCK_SH`` for a chunk,
    ``LOCK_EX`` for complete) without waiting: ``BlockingIOError`` if the other side holds it
    (the caller waits in trio, never in one of the few upload threads, which the holder may
    need to finish). Gone from its name once locked: completed meanwhile (404). ``end``: the
    records' end (a record written past the file's end would change its size, metadata a sync
    must then commit too)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / DATA
    f = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+b")
    try:
        lock_named(f, path, lock)
        if os.fstat(f.fileno()).st_size < max(size, end):
            os.ftruncate(f.fileno(), max(size, end))  # holes until the chunks arrive
    except BaseException:
        f.close()
        raise
    return f


def lock_named(f: BinaryIO, path: Path, lock: int) -> None:
    """Lock ``f``, then make sure it is still the file at ``path``: one opened before
    ``complete`` renamed it into the store is a published file, never written again."""
    fcntl.flock(f.fileno(), lock | fcntl.LOCK_NB)
    if not _still_named(f, path):
        raise NotFound("this upload was completed meanwhile", code="upload_not_found")


async def locked(io: Io, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in an upload thread, again after a pause while the lock is held."""
    while True:
        try:
            return await io(fn, *args)  # type: ignore[no-any-return]
        except BlockingIOError:
            await trio.sleep(LOCK_RETRY_S)


def lock_range(f: BinaryIO, start: int, length: int) -> bool:
    """An exclusive lock on ``[start, start + length)`` of ``f`` (an open file description
    lock: per open file, across processes and threads, gone when ``f`` closes); False when
    another writer holds it, or the file system cannot lock ranges."""
    flock = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, start, max(length, 1), 0)
    try:
        fcntl.fcntl(f.fileno(), fcntl.F_OFD_SETLK, flock)
    except OSError as e:
        if e.errno not in BUSY:
            log.warning("no range lock on %s (%s): chunks go to files of their own", f.name, e)
        return False
    return True


def open_chunk(folder: Path, upload: UploadRecord, index: int) -> BinaryIO | None:
    """``data`` for writing chunk ``index`` (``LOCK_SH``, and the chunk's byte range locked:
    this writer alone writes it); None when the chunk goes to a file of its own instead:
    received already (a resend, also one that waited for the range while the first writer
    marked it), being written by another request (or where ranges cannot be locked), or of
    an upload begun before ``data``. So no byte of a chunk in ``data`` changes once it is
    marked (what the running hash relies on)."""
    if goes_to_its_own_file(folder, index):
        return None
    end = journal.slot(upload.size, upload.total_chunks)
    f = open_data(folder, upload.size, fcntl.LOCK_SH, end)
    length = chunk_length(upload, index)
    try:
        if (
            not lock_range(f, index * upload.chunk_size, length)
            or journal.read_record(f.fileno(), upload.size, index, length) is not None
            or (folder / f"{index}.done").exists()
            # any record, a BAD one too (its writer's sync failed while a status, maybe in
            # another process, vouched for it): those bytes may seed a running hash; and
            # vouched for here (a record that was erased: a journal of an older release)
            or journal.VERIFIED.has(upload.id, os.fstat(f.fileno()).st_ino, index)
        ):
            f.close()
            return None
    except BaseException:
        f.close()
        raise
    return f


def mark_received(f: BinaryIO, upload: UploadRecord, index: int, kind: int, digest: bytes) -> None:
    """The chunk's record after its bytes, then one sync for both (``upload_journal``); a
    ``SYNCED`` record (no digest vouches for the bytes) only once the bytes are synced."""
    f.flush()
    fd = f.fileno()
    if kind == journal.SYNCED:
        os.fdatasync(fd)
    journal.write_record(fd, upload.size, index, chunk_length(upload, index), kind, digest)
    try:
        os.fdatasync(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            journal.mark_bad(fd, upload.size, index, chunk_length(upload, index))
        raise


@dataclass(eq=False)
class ChunkHashing:
    """One writer's part in the running hash: its claim once its chunk comes next, which may
    happen while it is written (the chunk before it marked meanwhile, several in flight)."""

    hashes: UploadHashes
    upload_id: str
    ino: int
    index: int
    start: int
    claim: Claim | None = None
    given_up: bool = False

    def record(self) -> tuple[int, bytes]:
        """What vouches for the chunk's bytes in its record: the running hash up to its end
        if it was taken in as written, else nothing (it is recorded once they are synced)."""
        if self.claim is not None:
            return journal.PREFIX, self.claim.digest.copy().digest()
        return journal.SYNCED, bytes(32)

    def write(self, write: Write, f: BinaryIO, data: Data) -> None:
        """One block to the disk and, once this chunk comes next, into its running hash (the
        same thread job: the hash overlaps the next network read, on the other core). A chunk
        that comes next mid-way first reads back what it wrote so far (its own bytes: it
        holds the chunk's range); if that fails, the chunk is not hashed here, that is all."""
        if self.claim is None and not self.given_up:
            self.claim = self.hashes.claim(self.upload_id, self.ino, self.index)
            if self.claim is not None and (so_far := f.tell() - self.start):
                f.flush()
                try:
                    ok = hash_range(f.fileno(), self.claim.digest, self.start, f.tell()) == so_far
                except OSError:
                    ok = False
                if not ok:
                    self.hashes.settle(self.claim, marked=False)
                    self.claim, self.given_up = None, True
        write(f, data)
        at = f.tell() - len(data)
        start_writeback(f.fileno(), at, len(data))  # the sync waits less
        wait_written(f.fileno(), self.start, at - self.start)  # and less: only for this block
        if self.claim is not None:
            self.claim.update(data)


def _mark_and_hash(
    f: BinaryIO,
    folder: Path,
    upload: UploadRecord,
    index: int,
    hashes: UploadHashes,
    hashing: ChunkHashing,
) -> None:
    """Marked received, then its hash taken in (one thread job: a cancel cannot come
    between), then the chunks that came ahead read back into the hash, then closed (its
    locks go). The chunk is received once marked: reading back is only an optimisation,
    and its failure fails nothing (``complete`` reads what the hash lacks)."""
    kind, digest = hashing.record()
    mark_received(f, upload, index, kind, digest)
    journal.VERIFIED.add(upload.id, hashing.ino, (index,))
    hashes.settle(hashing.claim, marked=True)
    try:
        hashes.catch_up(
            upload.id,
            f,
            lambda i: (
                journal.VERIFIED.has(upload.id, hashing.ino, i) or (folder / f"{i}.done").exists()
            ),
            upload.chunk_size,
            upload.size,
            CATCH_UP_BYTES + chunk_length(upload, index),
        )
    except OSError as e:
        log.warning("reading upload %s back for its hash failed: %s", upload.id, e)
    f.close()


async def write_chunk(
    io: Io,
    write: Write,
    folder: Path,
    upload: UploadRecord,
    index: int,
    body: AsyncIterator[bytes],
    hashes: UploadHashes,
) -> int | None:
    """The body straight into ``data`` at the chunk's offset, then marked received and
    hashed; None (nothing read): the chunk goes to a file of its own (``open_chunk``)."""
    expected = chunk_length(upload, index)
    f = await locked(io, open_chunk, folder, upload, index)
    if f is None:
        return None
    start = index * upload.chunk_size
    hashing = ChunkHashing(hashes, upload.id, os.fstat(f.fileno()).st_ino, index, start)

    def write_mark_and_hash(block: memoryview) -> None:
        hashing.write(write, f, block)
        _mark_and_hash(f, folder, upload, index, hashes, hashing)

    try:
        f.seek(start)
        written = await receive_body(
            body,
            expected,
            f"chunk {index}",
            lambda b: io(hashing.write, write, f, b),
            lambda b: io(write_mark_and_hash, b),  # the last block and the mark: one job
        )
        if not f.closed:  # an empty chunk: no last block
            await io(_mark_and_hash, f, folder, upload, index, hashes, hashing)
    finally:
        hashes.settle(hashing.claim, marked=False)  # a write cut off: its hash is dropped
        if not f.closed:
            with trio.CancelScope(shield=True):  # a client gone mid-body: closed all the same
                await io(f.close)
    return written


def complete_in_place(
    folder: Path, upload: UploadRecord, write: Write, final: Path | None, hashes: UploadHashes
) -> str:
    """The SHA-256 of ``data`` under ``LOCK_EX``, every chunk file copied in at its offset
    first; when it is ``upload.hash`` and ``final`` is given, ``data`` is synced and renamed
    there before the lock goes (one thread call: no lock held across calls).

    Only the part the running hash (``upload_hash``) does not cover is read; all of it when
    a chunk file was copied in under that part (a resend: the received bytes count), or a
    chunk's record is ``BAD`` (its sync failed: a status in another process may have seeded
    the running hash with bytes that never reached the disk). A ``BAD`` chunk not resent
    (a status said it was received before its sync failed) is ``upload_incomplete``: its bytes
    are only in the page cache, maybe never on the disk.

    Never makes ``data`` itself: with neither ``data`` nor a chunk file there is nothing to
    hash (a ``data`` made now would be all holes, and on a reused inode the running hash
    might still vouch for it), so every chunk is missing (``upload_incomplete``)."""
    if _nothing_to_hash(folder):
        hashes.drop(upload.id)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(folder / CUT)  # published once and removed since: nothing is here
        raise Conflict(
            f"{upload.total_chunks} chunks are missing",
            code="upload_incomplete",
            details={"missing": list(range(upload.total_chunks))[:1000]},
        )
    with open_data(folder, upload.size, fcntl.LOCK_EX) as f:
        copied: list[int] = []
        for entry in sorted(folder.iterdir()):
            found = PIECE.fullmatch(entry.name)
            if found is None or found[2] != "chunk":
                continue
            index = int(found[1])
            with open(entry, "rb", buffering=0) as chunk:
                f.seek(index * upload.chunk_size)
                write(f, CopyRange(chunk.fileno(), 0, chunk_length(upload, index)))
            copied.append(index)
        f.flush()
        digest, chunks = hashes.start(upload.id, os.fstat(f.fileno()).st_ino)
        lengths = [chunk_length(upload, i) for i in range(upload.total_chunks)]
        bad = journal.bad_chunks(f.fileno(), upload.size, lengths)
        if bad - set(copied):  # its sync failed after a status said received: not resent yet
            missing = sorted(bad - set(copied))
            raise Conflict(
                f"{len(missing)} chunks are missing",
                code="upload_incomplete",
                details={"missing": missing[:1000]},
            )
        if (copied and min(copied) < chunks) or bad:
            digest, chunks = hashlib.sha256(), 0
        hash_range(f.fileno(), digest, min(chunks * upload.chunk_size, upload.size), upload.size)
        actual: str = digest.hexdigest()
        if actual == upload.hash and final is not None:
            os.close(os.open(folder / CUT, os.O_WRONLY | os.O_CREAT, 0o644))
            os.ftruncate(f.fileno(), upload.size)  # the records go (upload_journal)
            _commit(f, folder / DATA, final)  # verified: a rename, no copy
            # no longer the upload's: its running hash and vouched chunks must not outlive
            # the file (a later ``data`` on the same inode would inherit them)
            hashes.drop(upload.id)
    return actual
