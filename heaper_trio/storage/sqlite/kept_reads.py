"""Answers of small reads kept while the SQLite database has not changed (issue 12, item 3).

Every authenticated request reads its user row, and ``POST /api/me`` its usage counters too:
each a query of 20-30 µs on the event loop. Kept here, they are still exact: an answer is
used only while no transaction has committed since it was read, by anyone (this process's
writer, another process, the command line's ``users revoke-tokens``), so a revoked or
rejected account is refused by the very next request, as when every request read its row.

How a commit is noticed: in WAL mode every commit rewrites the WAL-index header at the start
of the ``-shm`` file (its ``iChange`` counter, ``mxFrame``, salts and checksums; see
https://www.sqlite.org/walformat.html, "The WAL-Index Header"); SQLite's own readers decide
what is visible from these bytes. Reading them is one ``pread`` (about 1 µs, against ~12 µs
for ``PRAGMA data_version``). The header is read before the query whose answer is kept, so a
commit landing in between makes the next look a miss, never a stale hit; a torn read of the
header only looks changed. ``pread`` (not ``mmap``) so that a file cut short can never fault.

Belt and braces: an answer is never kept longer than ``max_age_s``, and without a readable
``-shm`` (another journal mode, a file system without shared memory) nothing is kept.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

HEADER_BYTES = 96  # both copies of the 48-byte WAL-index header
MAX_AGE_S = 1.0
MAX_ENTRIES = 4096
MISS = object()


def _changes(mark: bytes) -> int:
    """The header's ``iChange``, "incremented with each transaction" (bytes 8-12, in the
    host's byte order, like the whole WAL-index)."""
    return int.from_bytes(mark[8:12], sys.byteorder)


class KeptReads:
    def __init__(
        self,
        db_path: Path,
        *,
        max_age_s: float = MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shm_path = Path(f"{db_path}-shm")
        self.max_age_s = max_age_s
        self.clock = clock
        self._fd: int | None = None
        self._mark = b""  # the header all entries were read under
        self._entries: dict[Hashable, tuple[float, Any]] = {}
        self.hits = 0  # tests and benchmarks read these
        self.misses = 0

    def open(self) -> None:
        """Once the database is open in WAL mode (the ``-shm`` file exists)."""
        try:
            self._fd = os.open(self.shm_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._fd = None  # nothing is kept

    def close(self) -> None:
        fd, self._fd = self._fd, None
        self._entries.clear()
        if fd is not None:
            os.close(fd)

    def mark(self) -> bytes:
        """The WAL-index header now; empty when it cannot be read (then nothing is kept)."""
        if self._fd is None:
            return b""
        try:
            header = os.pread(self._fd, HEADER_BYTES, 0)
        except OSError:
            return b""
        return header if len(header) == HEADER_BYTES else b""

    def get(self, key: Hashable, mark: bytes) -> Any:
        """The kept answer, or ``MISS``; ``mark`` is :meth:`mark`'s, read just before."""
        if not mark or mark != self._mark:
            self._entries.clear()
            self._mark = mark
            self.misses += 1
            return MISS
        kept = self._entries.get(key)
        if kept is None or self.clock() - kept[0] > self.max_age_s:
            self.misses += 1
            return MISS
        self.hits += 1
        return kept[1]

    def put(self, key: Hashable, mark: bytes, value: Any) -> None:
        """Keep ``value``, read after ``mark`` was taken (``get`` made it the current one)."""
        if not mark or mark != self._mark:
            return
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[key] = (self.clock(), value)

    def carry(self, before: bytes, after: bytes, kinds: frozenset[str]) -> None:
        """This server's writer committed between the marks ``before`` (taken once its write
        lock was held, so no other commit came in between) and ``after``, changing no answer
        of ``kinds`` (the first item of a tuple key): those stay kept under ``after``, the
        others go. Only while nothing else was marked since ``before``, and only when the
        header's change counter moved by exactly one (this commit alone); otherwise the next
        ``get`` sees the change as usual. Under a stream of pushes every commit would
        otherwise end the kept user rows, and each request read its row again."""
        if not before or not after or self._mark != before:
            return
        if _changes(after) != (_changes(before) + 1) % 2**32:
            # Not exactly this writer's one commit: another connection committed between
            # the COMMIT and the reading of ``after`` (COMMIT releases the write lock, and
            # the writer thread may wait for the GIL before it reads), e.g. a revoke by the
            # command line. Carrying would keep the revoked row; the next ``get`` misses.
            return
        self._entries = {
            k: v for k, v in self._entries.items() if isinstance(k, tuple) and k[0] in kinds
        }
        self._mark = after
