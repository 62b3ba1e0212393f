"""One server per SQLite data directory.

Two servers on one embedded database would both start and then fight over it (one writer
each, two caches of the same rows, two housekeeping tasks). ``hold_data_dir`` takes an
exclusive ``flock`` on ``<data_dir>/server.lock`` for the server's whole life and refuses a
second server with one line. The kernel drops the lock when the process ends, however it ends
(a kill -9 or a power cut leaves no stale lock behind); the descriptor is not inherited by
child processes (ffmpeg), so none of them can keep it alive.

Only ``serve`` on SQLite takes it. Admin commands (``users``) and backups open the database
beside a running server on purpose, and PostgreSQL servers share one data directory by design.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from heaper_trio.errors import StartupError

LOCK_FILE = "server.lock"


@contextmanager
def hold_data_dir(data_dir: Path) -> Iterator[None]:
    """Hold the data directory's server lock until the block ends, or raise StartupError
    naming the server (its pid) that holds it."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise StartupError(f"data_dir: cannot use {data_dir}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise StartupError(f"data_dir: cannot lock {data_dir}: {e.strerror}") from None
            holder = _read_pid(fd)
            who = f"another server (pid {holder})" if holder else "another server"
            raise StartupError(
                f"data_dir: {data_dir} is in use by {who}; stop it first, or give this one "
                "its own --data-dir (SQLite allows one server per data directory)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race a newcomer)


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None
