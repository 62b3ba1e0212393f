"""Reading a scanned file: its SHA-256 and what it is (MIME type, width, height, duration).

Hashing runs in worker threads, many small files per thread hop (a hop costs more than
hashing a small file) and a large file in 1 MiB reads that stop as soon as the scan is
aborted. Files are opened without following a link anywhere on their path
(``scans/source.open_nofollow``; a group's folder is opened once) and without blocking (a FIFO
swapped in after the walk is refused, not waited on); what is recorded (size, mtime, device,
inode, ctime) is the ``fstat`` of the descriptor that was read: a file that changes while
being read is left for the next scan.

Probing goes through :func:`probe_facts`, the one place that knows how: the media service's
probe when there is one (the content looks like an image, video or audio), otherwise a Pillow
header read and the name's extension. Either reads the file hashed, opened again and checked
against its identity, never whatever the path leads to by then.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import mimetypes
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from PIL import Image

from heaper_trio.records.scans import FileIdentity
from heaper_trio.services.media.sniff import guess_from_name, kind_of, sniff_bytes
from heaper_trio.services.scans.source import (
    SERVER_FILES,
    NotTheScannedFile,
    open_dir_nofollow,
    open_nofollow,
    open_scanned,
)

if TYPE_CHECKING:
    from heaper_trio.services.media.service import MediaService

log = logging.getLogger(__name__)
READ_BLOCK = 1024 * 1024
HEAD_BYTES = 512
GROUP_FILES = 64  # small files hashed per thread hop
GROUP_BYTES = 8 * 1024 * 1024
SMALL_FILE = READ_BLOCK


class Stopped(Exception):
    """The scan was aborted while a file was being read."""


# Why a file could not be hashed: it is not there; something else is there now (a link, a
# folder, a FIFO, a path through a link): what a scan would not index; or reading failed.
GONE, NOT_A_FILE, UNREADABLE = "gone", "not_a_file", "unreadable"


@dataclass(frozen=True)
class Hashed:
    path: str
    hash: str
    size: int
    mtime_ns: int
    head: bytes  # the first bytes, for sniffing the type
    error: str | None = None
    identity: FileIdentity | None = None  # of the descriptor that was read
    failure: str = ""  # GONE, NOT_A_FILE or UNREADABLE when error is set


def _failed(path: str, what: str, e: OSError | None = None, failure: str = UNREADABLE) -> Hashed:
    if e is not None:
        what = f"{what}: {e.strerror or e}"
        if isinstance(e, FileNotFoundError):
            failure = GONE
        elif e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENXIO):
            failure = NOT_A_FILE
    return Hashed(path, "", 0, 0, b"", what, failure=failure)


def hash_file(path: str, stop: threading.Event, dir_fd: int | None = None) -> Hashed:
    """``dir_fd``: the file's folder, already opened without following links."""
    try:
        fd = open_nofollow(path, dir_fd)
    except OSError as e:
        return _failed(path, "cannot open", e)
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            return _failed(path, "not a regular file", failure=NOT_A_FILE)
        if SERVER_FILES.includes(before):  # a hard link to the server's key or database
            return _failed(path, "one of the server's own files", failure=NOT_A_FILE)
        digest = hashlib.sha256()
        head = b""
        while True:
            if stop.is_set():
                raise Stopped
            block = os.read(fd, READ_BLOCK)
            if not block:
                break
            if not head:
                head = block[:HEAD_BYTES]
            digest.update(block)
        after = os.fstat(fd)
    except OSError as e:
        return _failed(path, "cannot read", e)
    finally:
        os.close(fd)
    identity = FileIdentity.of(after)
    if FileIdentity.of(before) != identity:
        return _failed(path, "changed while being read")
    return Hashed(
        path, digest.hexdigest(), after.st_size, after.st_mtime_ns, head, identity=identity
    )


def hash_files(paths: list[str], stop: threading.Event) -> list[Hashed]:
    """Several files in one thread hop (each on its own: one failing does not stop the rest);
    each folder is opened once for the files of it that follow each other."""
    out: list[Hashed] = []
    folder: str | None = None
    dir_fd: int | None = None
    dir_error: OSError | None = None
    try:
        for path in paths:
            if os.path.dirname(path) != folder:
                if dir_fd is not None:
                    os.close(dir_fd)
                folder, dir_fd, dir_error = os.path.dirname(path), None, None
                try:
                    dir_fd = open_dir_nofollow(folder)
                except OSError as e:
                    dir_error = e
            if dir_error is not None:
                out.append(_failed(path, "cannot open its folder", dir_error))
            else:
                out.append(hash_file(path, stop, dir_fd))
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    return out


@dataclass(frozen=True)
class FileFacts:
    mime_type: str
    width: int | None = None
    height: int | None = None
    duration: float | None = None

    def fields(self) -> dict[str, Any]:
        """For a files_v0 entry: None fields are dropped from it (or not written)."""
        return {
            "mime_type": self.mime_type,
            "width": self.width,
            "height": self.height,
            "duration": self.duration,
        }


def _pillow_size(path: Path) -> tuple[int, int] | None:
    """Header only; EXIF orientations 5-8 swap the displayed sides."""
    try:
        with Image.open(path, formats=("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")) as im:
            w, h = im.size
            if im.format == "JPEG" and im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                w, h = h, w
            return int(w), int(h)
    except Exception:
        return None


async def probe_facts(
    media: MediaService | None,
    path: str | Path,
    name: str,
    head: bytes,
    identity: FileIdentity | None = None,
) -> FileFacts:
    """What the file is: the media service decides for images, video and audio; anything
    else (or every file without a media service) gets the sniffed or guessed type.

    With ``identity`` (a scanned file) the file is opened again without following links and
    probed only if it is still the one hashed; without, ``path`` names a file already checked
    (``/proc/self/fd/<n>``) or one of the store's."""
    sniffed = sniff_bytes(head)
    mime = (
        sniffed
        or guess_from_name(name)
        or mimetypes.guess_type(name)[0]
        or "application/octet-stream"
    )
    kind = kind_of(mime)
    wanted = (media is not None and kind in ("image", "video", "audio")) or (
        kind == "image" and sniffed
    )
    if not wanted:
        return FileFacts(mime)
    if identity is None:
        return await _probe(media, Path(path), name, mime, kind, sniffed)
    try:
        opened = await trio.to_thread.run_sync(open_scanned, str(path), [identity])
    except (OSError, NotTheScannedFile) as e:
        log.info("scan: %s changed before it was probed: %s", path, e)
        return FileFacts(mime)
    with opened:
        return await _probe(media, opened.path, name, mime, kind, sniffed)


async def _probe(
    media: MediaService | None, source: Path, name: str, mime: str, kind: str, sniffed: str | None
) -> FileFacts:
    if media is not None and kind in ("image", "video", "audio"):
        try:
            info = await media.probe(source, name)
            return FileFacts(info.mime_type, info.width, info.height, info.duration)
        except Exception as e:
            log.info("scan: probing %s failed: %r", name, e)
            return FileFacts(mime)
    if kind == "image" and sniffed:
        size = await trio.to_thread.run_sync(_pillow_size, source)
        if size is not None:
            return FileFacts(mime, size[0], size[1])
    return FileFacts(mime)
