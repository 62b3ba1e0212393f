"""What an import reads from its source folder: the notes (``*.md``) and the other files,
found without leaving the folder. Symbolic links (to files or folders) are skipped, as are
hidden entries (``.obsidian``, ``.git``, ``.trash``) and anything but regular files, so a
vault cannot make an import read outside it; link targets inside notes are checked again when
they are resolved (:func:`.names.inside`)."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from heaper_trio.client.transfer.names import FILES_DIR

MAX_NOTE_BYTES = 16 << 20


class VaultError(Exception):
    pass


@dataclass
class Vault:
    root: Path
    notes: list[str] = field(default_factory=list)  # POSIX paths relative to root, sorted
    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # links, devices, oversized notes

    def by_stem(self) -> dict[str, str]:
        """Lower-cased note name (no ``.md``) and path (no ``.md``) -> note path, as Obsidian
        resolves ``[[Name]]``: the shortest path wins a clash."""
        out: dict[str, str] = {}
        for path in sorted(self.notes, key=lambda p: (p.count("/"), p)):
            stem = path[:-3]
            out.setdefault(stem.lower(), path)
            out.setdefault(PurePosixPath(stem).name.lower(), path)
        return out

    def files_by_name(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for path in sorted(self.files, key=lambda p: (p.count("/"), p)):
            out.setdefault(path.lower(), path)
            out.setdefault(PurePosixPath(path).name.lower(), path)
        return out


def scan(src: Path) -> Vault:
    if src.is_symlink() or not src.is_dir():
        raise VaultError(f"import: {src} is not a folder")
    root = src.resolve()
    vault = Vault(root)
    for here, dirs, files in os.walk(root, followlinks=False):
        rel_here = Path(here).relative_to(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _link(Path(here, d)))
        for name in sorted(files):
            rel = (rel_here / name).as_posix()
            if name.startswith("."):
                continue
            try:
                st = os.lstat(Path(here, name))
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                vault.skipped.append(rel)
            elif name.lower().endswith(".md"):
                if st.st_size > MAX_NOTE_BYTES:
                    vault.skipped.append(rel)
                else:
                    vault.notes.append(rel)
            else:
                vault.files.append(rel)
    return vault


def _link(path: Path) -> bool:
    return path.is_symlink()


@dataclass(frozen=True)
class ZipLimits:
    """How much an imported zip may unpack to (``import --zip-max-total-mib``,
    ``--zip-max-entry-mib`` and ``--zip-max-entries``): a small zip can declare, and inflate
    to, terabytes, or a million empty files (each an inode and a row in memory)."""

    total: int = 8 << 30
    entry: int = 2 << 30
    entries: int = 100_000


ZIP_LIMITS = ZipLimits()
# zipfile's reader of the end-of-central-directory record (zip64 aware): private, so looked up
# once and optional (see _check_entry_count).
_END_RECORD: Callable[[BinaryIO], list[Any] | None] | None = getattr(zipfile, "_EndRecData", None)
_ZIP: Any = zipfile  # the record's field indexes and sizes are private names too


def unzip(archive: Path, into: Path, limits: ZipLimits = ZIP_LIMITS) -> Path:
    """An exported zip, unpacked into ``into`` with every name checked: no absolute paths,
    no ``..``, no links; nothing lands outside ``into``. The sizes the zip declares are
    checked against ``limits`` and the free space before anything is written, so a zip bomb
    stops with an error and the caller, which imports only after the whole zip is unpacked,
    has imported nothing. Declared sizes can be trusted that far: ``zipfile`` inflates no
    more than an entry declares, and a lie fails its CRC check (``BadZipFile``)."""
    into.mkdir(parents=True, exist_ok=True)
    try:
        _check_entry_count(archive, limits)
        with zipfile.ZipFile(archive) as z:
            entries = _checked_entries(archive, z, limits)
            _check_room(archive, into, sum(info.file_size for info, _ in entries))
            for info, parts in entries:
                out = into.joinpath(*parts)
                try:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(info) as fin, out.open("xb") as fout:
                        shutil.copyfileobj(fin, fout, 1 << 16)
                except OSError as e:
                    raise VaultError(
                        f"import: {archive}: cannot unpack {info.filename!r}: {e.strerror}"
                    ) from None
    except zipfile.BadZipFile as e:
        raise VaultError(f"import: {archive}: not a zip file ({e})") from None
    return into


def _checked_entries(
    archive: Path, z: zipfile.ZipFile, limits: ZipLimits
) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    """The file entries with their path parts, once every name and declared size is known to
    be acceptable. A name that is both a file and a folder (``a``, then ``a/b``), or a file
    twice, is refused here, naming the entry, rather than failing half-way with a bare
    ``OSError`` from the file system."""
    if len(z.infolist()) > limits.entries:
        raise VaultError(_too_many(archive, limits))
    entries: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
    files: set[tuple[str, ...]] = set()
    folders: set[tuple[str, ...]] = set()
    total = 0
    for info in z.infolist():
        name = info.filename
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith("/") or ".." in parts or ":" in name or not parts:
            raise VaultError(f"import: {archive}: unsafe name {name!r} in the zip")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise VaultError(f"import: {archive}: {name!r} is a link")
        parents = {parts[:i] for i in range(1, len(parts))}
        clash = parents & files if not info.is_dir() else {parts} & files
        if clash or (not info.is_dir() and (parts in folders or parts in files)):
            raise VaultError(
                f"import: {archive}: entry {name!r} clashes with an earlier entry "
                "(the same name as a file and as a folder, or a file twice)"
            )
        folders |= parents
        if info.is_dir():
            folders.add(parts)
            continue
        files.add(parts)
        total += info.file_size
        if info.file_size > limits.entry or total > limits.total:
            raise VaultError(_too_big(archive, name, limits))
        entries.append((info, parts))
    return entries


def _too_big(archive: Path, name: str, limits: ZipLimits) -> str:
    return (
        f"import: {archive}: unpacking {name!r} goes past the limits of "
        f"{limits.entry >> 20} MiB per entry and {limits.total >> 20} MiB in all "
        "(--zip-max-entry-mib, --zip-max-total-mib); nothing was imported"
    )


def _check_entry_count(archive: Path, limits: ZipLimits) -> None:
    """Refuse a zip of too many entries before ``zipfile`` reads its central directory:
    opening one builds a ``ZipInfo`` per entry, and 46 bytes of directory per entry make a
    100 MB zip of two million. The count in the end record cannot be trusted (``zipfile``
    ignores it and reads the directory by its byte size: review), so the directory is walked
    here as ``zipfile`` will read it, header to header without building anything, stopping one
    past the limit. The end record is found with ``zipfile``'s own reader (zip64 included); if
    that private helper is ever gone, the limit is still checked on the parsed list."""
    if _END_RECORD is None:
        return
    try:
        with archive.open("rb") as f:
            record = _END_RECORD(f)
            if not record:
                return  # not a zip: ZipFile says so the usual way
            size, start = int(record[_ZIP._ECD_SIZE]), _directory_start(record)
            f.seek(start)
            count, walked = 0, 0
            while walked < size:
                head = f.read(_CD_HEAD)
                if len(head) < _CD_HEAD or head[:4] != b"PK\x01\x02":
                    return  # a broken directory: ZipFile refuses it
                count += 1
                if count > limits.entries:
                    raise VaultError(_too_many(archive, limits))
                skip = sum(struct.unpack_from("<3H", head, 28))  # name, extra, comment
                f.seek(skip, os.SEEK_CUR)
                walked += _CD_HEAD + skip
    except OSError:
        return  # ZipFile reports it the usual way
    except AttributeError:
        return  # zipfile's private names changed: the parsed list is still counted


_CD_HEAD = 46  # a central directory header's fixed part


def _directory_start(record: list[Any]) -> int:
    """Where ``zipfile._RealGetContents`` starts reading the directory: the end record's place
    less the directory's size (and less the zip64 records), whatever offset the record claims
    (data may precede the zip)."""
    start = int(record[_ZIP._ECD_LOCATION]) - int(record[_ZIP._ECD_SIZE])
    if record[_ZIP._ECD_SIGNATURE] == _ZIP.stringEndArchive64:
        start -= _ZIP.sizeEndCentDir64 + _ZIP.sizeEndCentDir64Locator
    return start


def _too_many(archive: Path, limits: ZipLimits) -> str:
    return (
        f"import: {archive}: the zip holds more than {limits.entries} entries "
        "(--zip-max-entries); nothing was imported"
    )


def _check_room(archive: Path, into: Path, size: int) -> None:
    free = shutil.disk_usage(into).free
    if size > free:
        raise VaultError(
            f"import: {archive}: unpacks to {size >> 20} MiB but {into} has only "
            f"{free >> 20} MiB free; nothing was imported"
        )


def open_inside(root: Path, rel: str) -> BinaryIO:
    """The regular file ``rel`` (POSIX, relative) under ``root``, opened one path component
    at a time with ``O_NOFOLLOW``: a symbolic link anywhere on the way (put there since the
    scan, or a folder swapped for one) is refused, wherever it points, so an import reads
    nothing outside its folder. Notes and attachments are opened this way alike."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    parts = PurePosixPath(rel).parts
    if not parts or any(p in ("", ".", "..") for p in parts) or rel.startswith("/"):
        raise VaultError(f"import: {rel!r} is not a path inside the folder")
    fd = os.open(root, flags | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            inner = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        file_fd = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=fd)  # a FIFO would block
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise VaultError(f"import: {rel} goes through a symbolic link; not read") from None
        raise
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(file_fd).st_mode):
        os.close(file_fd)
        raise VaultError(f"import: {rel} is not a regular file; not read")
    return os.fdopen(file_fd, "rb")


__all__ = [
    "FILES_DIR",
    "ZIP_LIMITS",
    "Vault",
    "VaultError",
    "ZipLimits",
    "open_inside",
    "scan",
    "unzip",
]
