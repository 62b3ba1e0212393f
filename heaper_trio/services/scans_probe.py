"""Reading a scanned file: its SHA-256 and what it is (MIME type, width, height, duration).

Hashing runs in worker threads, many small files per thread hop (a hop costs more than
hashing a small file) and a large file in 1 MiB reads that stop as soon as the scan is
aborted. Files are opened without following links and without blocking (a FIFO swapped in
after the walk is refused, not waited on), and the size and mtime recorded are those of the
bytes read: a file that changes while being read is left for the next scan.

Probing goes through :func:`probe_facts`, the one place that knows how: the media service's
probe when there is one (the content looks like an image, video or audio), otherwise a Pillow
header read and the name's extension.
"""

from __future__ import annotations

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

from heaper_trio.services.media_sniff import guess_from_name, kind_of, sniff_bytes

if TYPE_CHECKING:
    from heaper_trio.services.media import MediaService

log = logging.getLogger(__name__)
READ_BLOCK = 1024 * 1024
HEAD_BYTES = 512
GROUP_FILES = 64  # small files hashed per thread hop
GROUP_BYTES = 8 * 1024 * 1024
SMALL_FILE = READ_BLOCK


class Stopped(Exception):
    """The scan was aborted while a file was being read."""


@dataclass(frozen=True)
class Hashed:
    path: str
    hash: str
    size: int
    mtime_ns: int
    head: bytes  # the first bytes, for sniffing the type
    error: str | None = None


def hash_file(path: str, stop: threading.Event) -> Hashed:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        return Hashed(path, "", 0, 0, b"", f"cannot open: {e.strerror or e}")
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            return Hashed(path, "", 0, 0, b"", "not a regular file")
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
        return Hashed(path, "", 0, 0, b"", f"cannot read: {e.strerror or e}")
    finally:
        os.close(fd)
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        return Hashed(path, "", 0, 0, b"", "changed while being read")
    return Hashed(path, digest.hexdigest(), after.st_size, after.st_mtime_ns, head)


def hash_files(paths: list[str], stop: threading.Event) -> list[Hashed]:
    """Several files in one thread hop (each on its own: one failing does not stop the rest)."""
    return [hash_file(p, stop) for p in paths]


@dataclass(frozen=True)
class FileFacts:
    mime_type: str
    width: int | None = None
    height: int | None = None
    duration: float | None = None

    def fields(self) -> dict[str, Any]:
        """For a files_v0 entry: None fields are dropped from it (or not written)."""
        return {"mime_type": self.mime_type, "width": self.width, "height": self.height,
                "duration": self.duration}


def _pillow_size(path: str) -> tuple[int, int] | None:
    """Header only; EXIF orientations 5-8 swap the displayed sides."""
    try:
        with Image.open(path, formats=("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")) as im:
            w, h = im.size
            if im.format == "JPEG" and im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                w, h = h, w
            return int(w), int(h)
    except Exception:  # noqa: BLE001 - a damaged image still gets its type, not a size
        return None


async def probe_facts(media: MediaService | None, path: str, name: str, head: bytes
                      ) -> FileFacts:
    """What the file is: the media service decides for images, video and audio; anything
    else (or every file without a media service) gets the sniffed or guessed type."""
    sniffed = sniff_bytes(head)
    mime = sniffed or guess_from_name(name) or mimetypes.guess_type(name)[0] \
        or "application/octet-stream"
    kind = kind_of(mime)
    if media is not None and kind in ("image", "video", "audio"):
        try:
            info = await media.probe(Path(path), name)
            return FileFacts(info.mime_type, info.width, info.height, info.duration)
        except Exception as e:  # noqa: BLE001 - the file vanished, a tool is missing, ...
            log.info("scan: probing %s failed: %r", path, e)
            return FileFacts(mime)
    if kind == "image" and sniffed:
        size = await trio.to_thread.run_sync(_pillow_size, path)
        if size is not None:
            return FileFacts(mime, size[0], size[1])
    return FileFacts(mime)
