"""The disk side of uploads: temporary files that are locked while written, committed by a
synced rename, removed on failure, and swept once their writer is gone.

Nothing half-written ever carries a final name: a writer holds an ``flock`` on its temporary
file for as long as it lives, so a sweeper (in this or another process sharing the data
directory) removes only the temp files of writers that died. A full disk (ENOSPC/EDQUOT) is
the server's condition, a 507, not a bug (``errors.disk_full_is_507`` around the writes in
``files``). ``UploadSlots`` caps how many uploads one user has in progress, so slow ones
cannot take every socket and file descriptor of the process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

import trio

from heaper_trio.errors import BadRequest, RateLimited

FRESH_EMPTY_S = 10.0  # an empty, unlocked temp file this young may be about to be locked
# A request body is gathered into one reused buffer of this size and written once it is full,
# one thread job per block (a hop per ~64 KiB network read cost more than the write). 4 MiB
# measured slower (interleaved runs of scripts/bench_files_uploads.py): the write no longer
# finds the block in the CPU cache.
WRITE_BLOCK = 1024 * 1024
# Chunks are read back for the hash into one reused buffer of this size (4 MiB was slower).
READ_BLOCK = 1024 * 1024
NO_COPY_RANGE = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}


@dataclass(frozen=True)
class CopyRange:
    """``length`` bytes of the open file ``fd`` from ``offset``: copied by the kernel
    (``os.copy_file_range``), never through Python."""

    fd: int
    offset: int
    length: int

    def __len__(self) -> int:
        return self.length


Data = bytes | bytearray | memoryview | CopyRange
Write = Callable[[BinaryIO, Data], None]


def _write(out: BinaryIO, data: Data) -> None:
    """Every upload byte that reaches the disk passes here: the one place a full disk shows
    (and the one place tests make the disk full)."""
    if isinstance(data, CopyRange):
        out.flush()
        _copy_range(data, out)
    else:
        out.write(data)


def _copy_range(src: CopyRange, out: BinaryIO) -> None:
    """At ``out``'s position, in the kernel where the file system allows (else read and
    written in ``READ_BLOCK`` pieces). A source shorter than said is an error."""
    offset, end = src.offset, src.offset + src.length
    kernel = True
    while offset < end:
        if kernel:
            try:
                n = os.copy_file_range(src.fd, out.fileno(), end - offset, offset)
            except OSError as e:
                if e.errno not in NO_COPY_RANGE:
                    raise
                kernel = False
                continue
        else:
            n = out.write(os.pread(src.fd, min(READ_BLOCK, end - offset), offset)) or 0
        if n == 0:
            raise OSError(errno.EIO, "a chunk file ended before its length")
        offset += n
    out.flush()


async def receive_body(
    body: AsyncIterable[bytes],
    expected: int,
    what: str,
    write: Callable[[memoryview], Awaitable[None]],
    last: Callable[[memoryview], Awaitable[None]] | None = None,
) -> int:
    """Exactly ``expected`` bytes of ``body`` handed to ``write`` in blocks of ``WRITE_BLOCK``
    (the last may be shorter), in order, one at a time; a body that is longer fails as soon
    as it is, a shorter one at its end, both before the last block is written (400
    chunk_size_mismatch). The last block goes to ``last`` instead when given, once the body
    has ended and every other block is written: the caller's final step (the chunk's sync
    and marker) can then share its thread job, one hop less per chunk, and the hops are what
    a loaded machine makes wait (a runnable thread waits its turn for a core).

    Two buffers take turns: while one block is written (and hashed) in a thread, the next is
    gathered from the network, so the disk and the hash overlap the receive instead of
    stopping it. One copy of each byte, no allocation per piece or block, one ``write``
    syscall per block (handing the thread the pieces instead, a ``writelines`` of ~64 KiB
    pieces, made it take the GIL back once per piece and cost more than the copy)."""
    size = min(int(WRITE_BLOCK), expected) or 1
    spare: memoryview | None = memoryview(bytearray(size)) if expected > size else None
    buffer = memoryview(bytearray(size))
    written = filled = 0
    writing = _BlockWriter(write)
    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        try:
            async for data in body:
                written += len(data)
                if written > expected:
                    raise BadRequest(f"{what} must be {expected} bytes", code="chunk_size_mismatch")
                piece, taken = memoryview(data), 0
                while taken < len(piece):
                    n = min(len(piece) - taken, len(buffer) - filled)
                    buffer[filled : filled + n] = piece[taken : taken + n]
                    filled += n
                    taken += n
                    final = last is not None and written == expected and taken == len(piece)
                    if filled == len(buffer) and not final:  # the last waits for the end
                        full, filled = buffer, 0
                        await writing.wait()  # the other buffer is free again
                        writing.start(nursery, full)
                        if spare is not None:
                            buffer, spare = spare, full
                        else:  # one block in all: nothing more to gather
                            await writing.wait()
            if written != expected:
                raise BadRequest(
                    f"{what} must be {expected} bytes, got {written}", code="chunk_size_mismatch"
                )
            await writing.wait()
            if filled and last is not None:
                await last(buffer[:filled])
            elif filled:
                writing.start(nursery, buffer[:filled])
                await writing.wait()
        except Exception as e:  # raised as itself below, not in the nursery's group
            failure = e
    if failure is not None:
        raise failure
    return written


class _BlockWriter:
    """At most one block write in flight; its failure is raised at the next ``wait``."""

    def __init__(self, write: Callable[[memoryview], Awaitable[None]]) -> None:
        self.write = write
        self.idle = trio.Event()
        self.idle.set()
        self.failure: Exception | None = None

    def start(self, nursery: trio.Nursery, block: memoryview) -> None:
        self.idle = trio.Event()  # before the task runs: a wait now waits for this write
        nursery.start_soon(self._run, block, self.idle)

    async def _run(self, block: memoryview, idle: trio.Event) -> None:
        try:
            await self.write(block)
        except Exception as e:
            self.failure = e
        finally:
            idle.set()

    async def wait(self) -> None:
        await self.idle.wait()
        if self.failure is not None:
            raise self.failure


def copy_hashing(sources: Sequence[Path | IO[bytes]], out: BinaryIO | None, write: Write) -> str:
    """The SHA-256 of the sources in order, copied to ``out`` by ``write`` unless it is None
    (the bytes are in the store already: only checked, not written twice).

    Read in blocks of ``READ_BLOCK`` into one buffer (files unbuffered: no second copy in
    Python's buffer, no new ``bytes`` per block) for the hash; a file source is then copied
    whole by the kernel (``CopyRange``, through ``write`` all the same), a stream source
    block by block. 128 MiB of 8 MiB chunks on the shared 2-core box, median of 5-6: 1 MiB
    ``read()`` of new bytes hashed and written (as before) 0.50 s; into one buffer 0.33 s
    (4 MiB blocks 0.39 s); in another run that way 0.57 s against 0.42 s with the copy
    done by ``os.copy_file_range``."""
    digest = hashlib.sha256()
    buffer = bytearray(READ_BLOCK)
    view = memoryview(buffer)
    for source in sources:
        with (
            open(source, "rb", buffering=0)
            if isinstance(source, Path)
            else contextlib.nullcontext(source)
        ) as f:
            whole = isinstance(source, Path)
            size = 0
            while n := f.readinto(view):  # type: ignore[attr-defined]
                digest.update(view[:n])
                size += n
                if out is not None and not whole:
                    write(out, view[:n])
            if out is not None and whole and size:
                write(out, CopyRange(f.fileno(), 0, size))
    return digest.hexdigest()


def _open_temp(path: Path) -> BinaryIO:
    """A new temporary file, locked (``flock``) for as long as its writer lives.

    The sweeper removes only temp files it can lock itself: those of a process that died (the
    kernel drops a dead process's locks), never a live request's, in this or any other process
    sharing the data directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "xb")  # noqa: SIM115 (returned open: its writer closes it)
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    except BaseException:
        f.close()
        raise
    return f


def _commit(f: BinaryIO, temp: Path, final: Path) -> None:
    """Synced, then renamed (still locked, so no sweeper sees it unlocked under its temp
    name), then the rename synced: the final name only ever holds whole content."""
    f.flush()
    os.fsync(f.fileno())
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(temp, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a crash
    finally:
        os.close(fd)


def _close_and_remove(f: BinaryIO | None, temp: Path) -> None:
    """After success the temp name is gone already; after a failure nothing half-written
    stays. Closing can itself fail on a full disk (buffered bytes): the file goes anyway."""
    try:
        if f is not None:
            f.close()
    except OSError:
        pass
    finally:
        temp.unlink(missing_ok=True)


def _abandoned(path: Path, now: float) -> bool:
    """A temp file whose writer is gone: nobody holds its lock. An empty one a moment old is
    spared (its writer may be between creating and locking it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if st.st_size == 0 and now - st.st_mtime < FRESH_EMPTY_S:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live writer, maybe in another process
        return True
    finally:
        os.close(fd)


def sweep_temp_files(uploads: Path) -> int:
    """Temporary files of requests a crash cut off, whatever their age: a live writer holds
    its file's lock (see ``_open_temp``), a dead one's lock died with it."""
    if not uploads.exists():
        return 0
    removed = 0
    now = time.time()
    for path in uploads.glob("**/*.part"):
        if _abandoned(path, now):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


class UploadSlots:
    """How many upload requests each user has in progress in this process.

    Every slow upload holds a socket and a temporary file until its body is in; without a cap,
    one user opening thousands of them ran the process out of file descriptors and other
    users' requests failed. A slot is taken before any temporary file is opened and given back
    in ``finally`` (a cancelled request gives it back too); over the cap is a 429."""

    RETRY_AFTER_S = 5  # long enough for a chunk at the minimum body rate to finish or be cut

    def __init__(self, per_user: int) -> None:
        self.per_user = per_user
        self._held: dict[str, int] = {}

    def held(self, user_id: str) -> int:
        return self._held.get(user_id, 0)

    @contextlib.contextmanager
    def hold(self, user_id: str) -> Iterator[None]:
        held = self._held.get(user_id, 0)
        if held >= self.per_user:
            raise RateLimited(
                f"at most {self.per_user} uploads of yours may be in progress at "
                "once; retry when one has finished",
                retry_after=self.RETRY_AFTER_S,
                details={"max_uploads_per_user": self.per_user},
            )
        self._held[user_id] = held + 1
        try:
            yield
        finally:
            left = self._held[user_id] - 1
            if left:
                self._held[user_id] = left
            else:
                del self._held[user_id]
