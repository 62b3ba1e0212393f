"""Where a scan may go and what it sees there: allowed paths, ``.heaperignore`` rules, and a
walker that hands out the tree in small batches.

Everything here is synchronous file-system work, run in worker threads one short step at a
time (so a cancel waits at most one step). Safety rules (shared/notes/files-findings.md §7.15):

- A scan path is resolved with ``realpath`` and must lie under an allowed base
  (``commonpath``): a configured scan root for admins, ``<root>/<user id>`` for other users.
  A path with a ``..`` component is refused outright, before anything is resolved.
- Symbolic links are never followed. A link to a file or folder inside the tree points at
  something the walk reaches under its own path anyway; one pointing outside must not be
  reached at all; a link to a parent folder would loop. So links are skipped and counted, and
  every folder is opened without following a link anywhere on its path
  (``scans/source.open_dir_nofollow``) and listed from that descriptor: a folder swapped for a
  link after its parent was listed is refused, not entered.
- Only regular files are indexed (no FIFOs, sockets or devices); names that are not UTF-8 are
  skipped (neither engine can store them as text), and so are paths longer than
  ``MAX_INDEXED_PATH_BYTES`` (PostgreSQL cannot index them); the server's own data directory is
  never entered, even when it lies under a scan root, and a hard link to one of its files
  (the server key, the database) is skipped (``scans/source.ServerFiles``).
- ``.heaperignore`` files use gitignore syntax and apply to their folder and below; a deeper
  file's rules win over a shallower one's, as in git. An ignored folder is not entered.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pathspec

from heaper_trio.errors import BadRequest, Forbidden
from heaper_trio.records.scans import FileIdentity
from heaper_trio.services.scans.source import OPEN_FILE, SERVER_FILES, open_dir_nofollow

IGNORE_FILE = ".heaperignore"
# Always left out (a .heaperignore may re-include them with "!pattern").
BUILTIN_IGNORE = ("*.part", "*.crdownload", ".DS_Store", "Thumbs.db", "desktop.ini")
MAX_PATH = 4096
# The longest real path a scan indexes, in bytes. The scan index is keyed on (heap, path) and a
# PostgreSQL btree entry holds at most 2,704 bytes: a longer path that does not compress (80
# folders with 32-character hex names make 2,709 bytes, well under Linux's 4,096) failed the
# whole scan there. Both engines skip such entries alike (counted in ``skipped``), and a scan
# path this long is refused.
MAX_INDEXED_PATH_BYTES = 2000
BATCH_ITEMS = 500
BATCH_SECONDS = 0.05


def allowed_bases(
    roots: Sequence[os.PathLike[str] | str], user_id: str, is_admin: bool
) -> list[str]:
    """Folders this user may scan under: the roots themselves for admins, ``<root>/<id>``
    for everyone else."""
    return [os.path.realpath(root if is_admin else os.path.join(root, user_id)) for root in roots]


def _inside(path: str, base: str) -> bool:
    return os.path.commonpath([path, base]) == base


def resolve_scan_path(path: str, bases: list[str], data_dir: str) -> str:
    """The real path of the folder to scan, or an error: 403 ``scanning_disabled`` with no
    roots, 403 ``scan_path_forbidden`` outside the bases (or through ``..``), 400
    ``not_a_directory``. A relative path is taken from the first base where it exists."""
    if not bases:
        raise Forbidden(
            "folder scanning is off on this server (no scan_roots configured)",
            code="scanning_disabled",
        )
    if not path or len(path) > MAX_PATH or "\x00" in path:
        raise BadRequest(
            f"path must be 1-{MAX_PATH} characters without NUL",
            code="invalid_field",
            details={"field": "path"},
        )
    if ".." in path.replace("\\", "/").split("/"):
        raise Forbidden("a scan path may not contain '..'", code="scan_path_forbidden")
    if os.path.isabs(path):
        candidate = path
    else:
        tries = [os.path.join(base, path) for base in bases]
        candidate = next((t for t in tries if os.path.lexists(t)), tries[0])
    real = os.path.realpath(candidate)
    if len(os.fsencode(real)) > MAX_INDEXED_PATH_BYTES:
        raise BadRequest(
            f"the scan path is longer than {MAX_INDEXED_PATH_BYTES} bytes once resolved",
            code="invalid_field",
            details={"field": "path"},
        )
    if not any(_inside(real, base) for base in bases):
        raise Forbidden("this path is outside the folders you may scan", code="scan_path_forbidden")
    data = os.path.realpath(data_dir)
    if _inside(real, data):
        raise Forbidden("the server's data directory cannot be scanned", code="scan_path_forbidden")
    if not os.path.isdir(real):
        raise BadRequest("the scan path is not a directory on the server", code="not_a_directory")
    return real


@dataclass(frozen=True)
class FolderSeen:
    path: str
    parent: str | None  # None: the scanned folder itself
    name: str


@dataclass(frozen=True)
class FileSeen:
    path: str
    folder: str
    name: str
    size: int
    mtime_ns: int
    identity: FileIdentity | None = None  # as listed (lstat); what is hashed is checked again


Seen = FolderSeen | FileSeen


@dataclass
class _Folder:
    path: str
    parent: str | None
    rules: list[tuple[str, pathspec.GitIgnoreSpec]]  # (base folder, spec), shallow first


def _read_rules(dir_fd: int) -> pathspec.GitIgnoreSpec | None:
    try:
        fd = os.open(IGNORE_FILE, OPEN_FILE, dir_fd=dir_fd)
    except OSError:
        return None  # none (or a link, or unreadable): index everything rather than guess
    try:
        with open(fd, encoding="utf-8", errors="replace") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            return pathspec.GitIgnoreSpec.from_lines(f.read(1024 * 1024).splitlines())
    except (OSError, ValueError):
        return None


def ignored(rules: list[tuple[str, pathspec.GitIgnoreSpec]], path: str, is_dir: bool) -> bool:
    """gitignore semantics over nested rule files: the deepest file with a matching pattern
    decides (its last matching pattern, ``!`` negations included)."""
    for base, spec in reversed(rules):
        rel = path[len(base) + 1 :] + ("/" if is_dir else "")
        include = spec.check_file(rel).include
        if include is not None:
            return include
    return False


@dataclass
class FolderWalker:
    """Depth-first walk of ``root`` (a real path), resumable: :meth:`next_batch` returns the
    next few hundred entries (folders before their files), ``[]`` once done. Not thread-safe:
    one step at a time."""

    root: str
    exclude: frozenset[str] = frozenset()
    skipped: int = 0  # links, special files, ignored entries, undecodable names
    errors: int = 0
    error_folders: list[str] = field(default_factory=list)  # not listed: keep their entries
    _stack: list[_Folder] = field(default_factory=list)
    _current: _Folder | None = None
    _entries: Iterator[os.DirEntry[str]] | None = None
    _fd: int | None = None  # the open folder's descriptor, opened without following links
    _started: bool = False

    def next_batch(
        self, max_items: int = BATCH_ITEMS, max_seconds: float = BATCH_SECONDS
    ) -> list[Seen]:
        if not self._started:
            self._started = True
            builtin = pathspec.GitIgnoreSpec.from_lines(BUILTIN_IGNORE)
            self._stack.append(_Folder(self.root, None, [(self.root, builtin)]))
        out: list[Seen] = []
        until = time.monotonic() + max_seconds
        while len(out) < max_items and time.monotonic() < until:
            if self._entries is None and not self._open_next(out):
                break
            if not self._step(out):
                self.close()
        return out

    def close(self) -> None:
        if self._entries is not None:
            self._entries.close()  # type: ignore[attr-defined]  # a ScandirIterator
            self._entries = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open_next(self, out: list[Seen]) -> bool:
        while self._stack:
            folder = self._stack.pop()
            try:
                fd = open_dir_nofollow(folder.path)
            except OSError:  # gone, unreadable, or a link now
                self.errors += 1
                self.error_folders.append(folder.path)
                continue
            try:
                entries = os.scandir(fd)
            except OSError:
                os.close(fd)
                self.errors += 1
                self.error_folders.append(folder.path)
                continue
            spec = _read_rules(fd)
            if spec is not None:
                folder.rules = [*folder.rules, (folder.path, spec)]
            # The entries stat themselves relative to fd: it stays open while they are read.
            self._current, self._entries, self._fd = folder, entries, fd
            name = os.path.basename(folder.path) or folder.path
            out.append(FolderSeen(folder.path, folder.parent, name))
            return True
        return False

    def _step(self, out: list[Seen]) -> bool:
        """Look at the next entry of the open folder; False when it has no more."""
        assert self._entries is not None and self._current is not None
        try:
            entry = next(self._entries)
        except StopIteration:
            return False
        except OSError:
            self.errors += 1
            self.error_folders.append(self._current.path)
            return False
        folder = self._current
        path = os.path.join(folder.path, entry.name)  # listed from a descriptor: name only
        if entry.name == IGNORE_FILE:
            return True
        try:
            entry.name.encode("utf-8")
        except UnicodeEncodeError:
            self.skipped += 1
            return True
        if len(os.fsencode(path)) > MAX_INDEXED_PATH_BYTES:
            self.skipped += 1  # not entered either, if it is a folder
            return True
        try:
            if entry.is_symlink():
                self.skipped += 1
            elif entry.is_dir(follow_symlinks=False):
                if path in self.exclude or ignored(folder.rules, path, True):
                    self.skipped += 1
                else:
                    self._stack.append(_Folder(path, folder.path, folder.rules))
            elif not entry.is_file(follow_symlinks=False) or ignored(folder.rules, path, False):
                self.skipped += 1
            else:
                st = entry.stat(follow_symlinks=False)
                if SERVER_FILES.includes(st):
                    self.skipped += 1
                    return True
                out.append(
                    FileSeen(
                        path,
                        folder.path,
                        entry.name,
                        st.st_size,
                        st.st_mtime_ns,
                        FileIdentity.of(st),
                    )
                )
        except FileNotFoundError:
            pass  # gone between listing and looking: the next scan sees it missing
        except OSError:
            self.errors += 1
        return True
