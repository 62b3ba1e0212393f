"""Opening a scanned file so that what is read is exactly what a scan hashed.

A scanned file is served in place from a folder its owner controls, so between the scan and a
request the path may have become a symbolic link (to the server's key, to /etc/passwd), a
folder on it may have, or the file may have been rewritten or replaced. Hence:

- **No link is ever followed.** :func:`open_nofollow` walks the path from ``/`` one component
  at a time, each opened relative to the folder before it with ``O_NOFOLLOW`` (``O_DIRECTORY``
  for folders), so a link anywhere along it fails the open (``ELOOP``) instead of leading
  elsewhere. The file itself is opened ``O_NONBLOCK``: a FIFO swapped in cannot hang a thread.
- **The opened file must be the hashed one.** Its ``fstat`` (device, inode, size, mtime and
  ctime, :class:`FileIdentity`) must equal what the scan recorded from the descriptor it hashed.
  ctime cannot be set from user space, so a same-size rewrite with mtime put back is caught.
- **Never one of the server's own files.** A hard link is not a link to refuse: it *is* the
  file. A hard link in a user's folder to the server's key or database would be indexed and
  served like any file (Linux's ``protected_hardlinks`` keeps other users from making one, but
  the server does not rely on it), so a file whose inode is one of the server's is refused by
  the walker, the hasher and here (:data:`SERVER_FILES`).
- **What was checked is what is read.** The open descriptor itself is served, and tools that
  want a path (Pillow, ffmpeg) get ``/proc/self/fd/<n>``, a name for that very open file: no
  second look-up of the path can be raced.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

import trio

from heaper_trio.errors import NotFound
from heaper_trio.records.scans import FileIdentity

OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
PROC_FD = "/proc/self/fd/"


class ServerFiles:
    """The data directories whose top-level files (the server key, the SQLite database with
    its ``-wal`` and ``-shm``, anything else put there) no scanned path may turn out to be.

    Process-wide (:data:`SERVER_FILES`, filled by the scan service) so every opener of a
    scanned path checks without having to be handed the data directory: a new caller cannot
    forget it. Subfolders are not protected: the file store holds content-addressed copies of
    uploads (no secrets), thumbnails are derived from them.

    Cheap and sound: a hard link to one of those files gives that inode at least two names,
    so only files with ``st_nlink > 1`` are compared, against the top level listed at that
    moment (a few entries; the database's ``-wal`` comes and goes)."""

    def __init__(self) -> None:
        self.data_dirs: set[str] = set()

    def register(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dirs.add(os.path.realpath(data_dir))

    def ids(self) -> set[tuple[int, int]]:
        """(device, inode) of every regular file at the top of each data directory now."""
        found: set[tuple[int, int]] = set()
        for folder in list(self.data_dirs):
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        if stat.S_ISREG(st.st_mode):
                            found.add((st.st_dev, st.st_ino))
            except OSError:
                continue
        return found

    def includes(self, info: os.stat_result) -> bool:
        return info.st_nlink > 1 and (info.st_dev, info.st_ino) in self.ids()


SERVER_FILES = ServerFiles()


class NotTheScannedFile(Exception):
    """What the path leads to now is not the file that was hashed (a link, another file, the
    same file rewritten, or no identity on record)."""


def _parts(path: str) -> list[str]:
    if not os.path.isabs(path) or "\x00" in path:
        raise OSError(errno.EINVAL, "not an absolute path", path)
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise OSError(errno.EINVAL, "a scanned path has no . or .. in it", path)
    return parts


def open_dir_nofollow(path: str) -> int:
    """A descriptor of the folder at ``path``, no link followed on the way (``ELOOP`` if one
    is there, ``ENOTDIR`` if a component is not a folder)."""
    fd = os.open("/", OPEN_DIR)
    try:
        for name in _parts(path):
            inner = os.open(name, OPEN_DIR, dir_fd=fd)
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_nofollow(path: str, dir_fd: int | None = None) -> int:
    """A read-only, non-blocking descriptor of the file at ``path``, no link followed anywhere
    along it. With ``dir_fd`` (the folder of ``path``, opened the same way) only the last
    component is opened."""
    if dir_fd is not None:
        return os.open(os.path.basename(path), OPEN_FILE, dir_fd=dir_fd)
    folder, name = os.path.split(path)
    if not name:
        raise OSError(errno.EISDIR, "not a file", path)
    parent = open_dir_nofollow(folder)
    try:
        return os.open(name, OPEN_FILE, dir_fd=parent)
    finally:
        os.close(parent)


def fd_path(fd: int) -> Path:
    """A path naming exactly this open file, for code that opens paths (Pillow, ffmpeg: the
    media service hands a child process the descriptor itself, see ``media/video``)."""
    return Path(f"{PROC_FD}{fd}")


class OpenFile:
    """An open, read-only regular file and what ``fstat`` said of it when it was checked.

    Owns its descriptor: ``close`` (or leaving a ``with``) closes it, ``detach`` hands it over
    (``file_response`` closes it when the body is sent), and dropping the object closes it too,
    so an error path cannot leak it."""

    def __init__(self, fd: int, info: os.stat_result) -> None:
        self._fd: int | None = fd
        self.stat = info

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise ValueError("the file is closed")
        return self._fd

    @property
    def path(self) -> Path:
        """``/proc/self/fd/<n>``: this open file, for tools that take a path."""
        return fd_path(self.fd)

    def detach(self) -> int:
        fd, self._fd = self.fd, None
        return fd

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> OpenFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            self.close()


def open_regular(path: Path) -> OpenFile:
    """One of our own files (the upload store): links may be followed, it must be a regular
    file. FileNotFoundError if it is not there (or not a file)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    opened = OpenFile(fd, os.fstat(fd))
    if not stat.S_ISREG(opened.stat.st_mode):
        opened.close()
        raise FileNotFoundError(errno.ENOENT, "not a regular file", str(path))
    return opened


async def open_own(
    path: Path, *, gone: str = "the file is no longer on the server's disk"
) -> OpenFile:
    """One of the server's own files (a stored upload, a thumbnail), open off the event loop:
    the one opener the file routes and the scan service share, so "missing" is decided once.
    NotFound ``file_missing`` (with ``gone`` as its message) if it is not a regular file."""
    try:
        return await trio.to_thread.run_sync(open_regular, path)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise NotFound(gone, code="file_missing") from None


def open_scanned(path: str, known: Iterable[FileIdentity]) -> OpenFile:
    """The file at ``path`` if it is one of the ``known`` hashed files.

    FileNotFoundError when nothing is there; NotTheScannedFile when something else is (a link
    on the way, not a regular file, another identity, none known)."""
    known = list(known)
    try:
        fd = open_nofollow(path)
    except FileNotFoundError:
        raise
    except OSError as e:  # ELOOP (a link), ENOTDIR, ENXIO (a socket), EACCES, ...
        raise NotTheScannedFile(f"cannot open without following links: {e.strerror}") from None
    opened = OpenFile(fd, os.fstat(fd))
    if not stat.S_ISREG(opened.stat.st_mode):
        opened.close()
        raise NotTheScannedFile("not a regular file")
    if SERVER_FILES.includes(opened.stat):  # even one a scan recorded before this check
        opened.close()
        raise NotTheScannedFile("one of the server's own files")
    if FileIdentity.of(opened.stat) not in known:
        opened.close()
        raise NotTheScannedFile(
            "not the file that was hashed"
            if known
            else "no identity on record (scanned by an older server)"
        )
    return opened
