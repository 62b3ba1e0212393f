"""Thumbnails, previews and probes for stored files, cached by content hash.

The file routes hand us a source path and its content hash; we answer with a path to a cached
WebP (or a ``MediaInfo``). A scanned file's source is ``/proc/self/fd/<n>``, the descriptor the
route opened and checked to be the file that was hashed (``scans/source``): Pillow opens that
very file, and ffmpeg and ffprobe inherit the descriptor (``video.run_tool``), so what is
decoded is what was verified. The source must stay open until the call returns.

How the work is done lives in two siblings: ``images`` (Pillow, in worker threads) and
``video`` (ffmpeg/ffprobe subprocesses); ``sniff`` decides which, from the content's first bytes.

- **Cache.** ``cache_dir/<hash[:2]>/<hash>/<kind>-<size>[-<position>]-v<THUMB_VERSION>.webp``.
  Content never changes under a hash, so a file there is final; it is written under a temporary
  name in the same directory and renamed into place. Bumping ``THUMB_VERSION`` regenerates
  everything lazily; ``forget(hash)`` drops one file's derivatives.
- **Single flight.** Concurrent requests for the same derivative wait for one job. A failure
  reaches every waiter; a leader that is cancelled (its client went away) hands the job to the
  next waiter instead.
- **Failures remembered.** A file that is corrupt, too large or unsupported fails again at
  once for ``failure_ttl`` seconds, per (hash, kind), instead of costing a decode per request
  (Immich and PhotoPrism issues in shared/notes/files-findings.md section 6).
- **Bounded CPU.** Pillow jobs (threads) and ffmpeg runs (subprocesses) share one
  ``CapacityLimiter(max_jobs)``; time spent queueing does not count against ``job_timeout``.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import secrets
import shutil
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from heaper_trio.errors import (
    BadRequest,
    CorruptMedia,
    HeaperError,
    ImageTooLarge,
    UnsupportedMedia,
)
from heaper_trio.services import metrics
from heaper_trio.services.media import video
from heaper_trio.services.media.images import fit, probe_image, render_image
from heaper_trio.services.media.sniff import (
    guess_from_name,
    kind_of,
    pillow_decodes,
    read_head,
    sniff_bytes,
)

log = logging.getLogger(__name__)

THUMB_VERSION = 1
SIZES = {"tiny": 64, "small": 256, "medium": 512, "large": 1024}  # longest side, pixels
DEFAULT_POSTER = "10%"  # where a video's plain thumbnail is taken
FAILURES_KEPT = 1024
PROBES_KEPT = 1024
REMEMBERED = (UnsupportedMedia, CorruptMedia, ImageTooLarge)  # facts about the file itself
_HASH = re.compile(r"[0-9a-f]{16,128}")
_PIXELS = re.compile(r"[0-9]{1,32}")
_POSITION = re.compile(r"([0-9]{1,9}(?:\.[0-9]{1,6})?)(%?)")


def parse_size(size: str) -> tuple[str, int]:
    """A size name, or a pixel count rounded up to the next name (above 1024: ``large``)."""
    if size in SIZES:
        return size, SIZES[size]
    if _PIXELS.fullmatch(size) and int(size) > 0:
        want = int(size)
        return next(
            ((name, px) for name, px in SIZES.items() if want <= px), ("large", SIZES["large"])
        )
    raise BadRequest(
        f"thumbnail size must be one of {', '.join(SIZES)} or a number of pixels",
        code="bad_thumbnail_size",
    )


@dataclass(frozen=True)
class Position:
    """Where in a video: seconds, or a percentage of its duration."""

    value: float
    percent: bool

    @property
    def key(self) -> str:
        text = f"{self.value:.3f}".rstrip("0").rstrip(".")
        return f"{text}p" if self.percent else f"{text}s"

    def seconds(self, duration: float | None) -> float:
        """Clamped to [0, duration - 0.1] when the duration is known."""
        if self.percent:
            at = (duration or 0.0) * min(self.value, 100.0) / 100.0
        else:
            at = self.value
        if duration is not None:
            at = min(at, duration - 0.1)
        return max(0.0, at)


def parse_position(position: str) -> Position:
    match = _POSITION.fullmatch(position.strip())
    if match is None:
        raise BadRequest(
            "position must be seconds (12.5) or a percentage (40%)", code="bad_thumbnail_position"
        )
    return Position(float(match[1]), bool(match[2]))


@dataclass(frozen=True)
class MediaInfo:
    """What a file is. ``width``/``height`` are as displayed (EXIF orientation or the video's
    rotation and pixel aspect applied); ``frames`` counts an animation's frames (1 for a still
    image); ``orientation`` is the EXIF value (images only)."""

    mime_type: str
    kind: str  # image | video | audio | other
    width: int | None = None
    height: int | None = None
    duration: float | None = None  # seconds, video and audio
    frames: int | None = None
    orientation: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MediaStats:
    jobs: int = 0  # derivatives actually computed (or attempted)
    cache_hits: int = 0
    joined: int = 0  # requests that waited for someone else's job
    failed_fast: int = 0  # requests answered from the remembered failures


@dataclass
class _Flight:
    done: trio.Event = field(default_factory=trio.Event)
    error: HeaperError | None = None


def _check_hash(file_hash: str) -> str:
    if not _HASH.fullmatch(file_hash):
        raise BadRequest("not a file hash", code="bad_file_hash")
    return file_hash


def _write_atomic(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")


def _render_to(source: Path, target: Path, box: int, animated: bool) -> None:
    _write_atomic(target, render_image(source, box, animated=animated))


class MediaService:
    def __init__(
        self,
        cache_dir: Path,
        *,
        max_jobs: int = 2,
        ffmpeg: str = "ffmpeg",
        ffprobe: str = "ffprobe",
        job_timeout: float = 60.0,
        failure_ttl: float = 300.0,
        exact_seek: bool = False,
    ) -> None:
        """``exact_seek``: take the frame exactly at the position (~300 ms for 1080p H.264)
        instead of the first keyframe at or after it (~170 ms; up to one GOP late)."""
        self.cache_dir = Path(cache_dir)
        self.exact_seek = exact_seek
        self.ffmpeg = ffmpeg
        self.ffprobe = ffprobe
        self.job_timeout = job_timeout
        self.failure_ttl = failure_ttl
        self.stats = MediaStats()
        self._limiter = trio.CapacityLimiter(max_jobs)
        self._probe_limiter = trio.CapacityLimiter(max(4, 2 * max_jobs))
        self._flights: dict[Path, _Flight] = {}
        self._failures: OrderedDict[tuple[str, str], tuple[float, HeaperError]] = OrderedDict()
        self._video_probes: OrderedDict[str, video.VideoProbe] = OrderedDict()

    # -- public API ---------------------------------------------------------------------------

    async def probe(self, source: Path, name: str = "") -> MediaInfo:
        """Type and dimensions, cheaply: a header read for images, ffprobe for video and audio.
        A damaged file still gets its type; the numbers are then None."""
        sniffed = sniff_bytes(await trio.to_thread.run_sync(read_head, source))
        mime = sniffed or guess_from_name(name) or "application/octet-stream"
        kind = kind_of(mime)
        try:
            if sniffed and pillow_decodes(mime):
                head = await trio.to_thread.run_sync(
                    probe_image, source, limiter=self._probe_limiter
                )
                return MediaInfo(
                    mime, kind, head.width, head.height, None, head.frames, head.orientation
                )
            if kind in ("video", "audio"):
                found = await self._probe_video(source)
                if kind == "video" and not found.has_video and found.has_audio:
                    mime, kind = mime.replace("video/", "audio/", 1), "audio"
                return MediaInfo(
                    mime,
                    kind,
                    found.width if kind == "video" else None,
                    found.height if kind == "video" else None,
                    found.duration,
                )
        except HeaperError as exc:
            log.info("media: probe of %s (%s) failed: %s", source, mime, exc.message)
        return MediaInfo(mime, kind)

    async def image_thumbnail(self, source: Path, file_hash: str, size: str) -> Path:
        """A still WebP; for a video, its frame at DEFAULT_POSTER."""
        return await self._derive("image", source, file_hash, size, None)

    async def video_thumbnail(self, source: Path, file_hash: str, size: str, position: str) -> Path:
        """The frame at ``position`` (seconds or percent); an image gives its still."""
        return await self._derive("video", source, file_hash, size, parse_position(position))

    async def animated_thumbnail(self, source: Path, file_hash: str, size: str) -> Path:
        """An animated WebP of an animation, or of a video's first seconds; a still otherwise."""
        return await self._derive("animated", source, file_hash, size, None)

    def path_for(
        self, file_hash: str, kind: str, size: str, position: Position | None = None
    ) -> Path:
        name, _ = parse_size(size)
        suffix = f"-{position.key}" if position is not None else ""
        h = _check_hash(file_hash)
        return self.cache_dir / h[:2] / h / f"{kind}-{name}{suffix}-v{THUMB_VERSION}.webp"

    def forget(self, file_hash: str) -> None:
        """Drop every cached derivative of this hash (and what we remember about it)."""
        h = _check_hash(file_hash)
        shutil.rmtree(self.cache_dir / h[:2] / h, ignore_errors=True)
        for key in [k for k in self._failures if k[0] == h]:
            del self._failures[key]
        self._video_probes.pop(h, None)

    async def aclose(self) -> None:
        """Nothing runs outside a caller's task, so there is nothing to stop; kept for symmetry
        with services that own a pool."""
        self._failures.clear()
        self._video_probes.clear()

    # -- cache, single flight, remembered failures --------------------------------------------

    async def _derive(
        self, kind: str, source: Path, file_hash: str, size: str, position: Position | None
    ) -> Path:
        _, box = parse_size(size)
        target = self.path_for(file_hash, kind, size, position)
        while True:
            if _cached(target):
                self.stats.cache_hits += 1
                metrics.thumbnail_cache_hit()
                return target
            self._raise_remembered(file_hash, kind)
            flight = self._flights.get(target)
            if flight is None:
                break
            self.stats.joined += 1
            await flight.done.wait()
            if flight.error is not None:
                raise copy.copy(flight.error)
            # success: the loop finds the file; a cancelled leader: we lead the next attempt
        flight = self._flights[target] = _Flight()
        try:
            self.stats.jobs += 1
            with metrics.job("thumbnail"):
                await self._make(kind, source, file_hash, box, position, target)
            return target
        except HeaperError as exc:
            flight.error = exc
            if isinstance(exc, REMEMBERED):
                self._remember(file_hash, kind, exc)
            raise
        finally:
            del self._flights[target]
            flight.done.set()

    def _raise_remembered(self, file_hash: str, kind: str) -> None:
        entry = self._failures.get((file_hash, kind))
        if entry is None:
            return
        at, error = entry
        if time.monotonic() - at > self.failure_ttl:
            del self._failures[(file_hash, kind)]
            return
        self.stats.failed_fast += 1
        raise copy.copy(error)

    def _remember(self, file_hash: str, kind: str, error: HeaperError) -> None:
        self._failures[(file_hash, kind)] = (time.monotonic(), error)
        self._failures.move_to_end((file_hash, kind))
        while len(self._failures) > FAILURES_KEPT:
            self._failures.popitem(last=False)

    # -- the jobs -----------------------------------------------------------------------------

    async def _make(
        self,
        kind: str,
        source: Path,
        file_hash: str,
        box: int,
        position: Position | None,
        target: Path,
    ) -> None:
        mime = sniff_bytes(await trio.to_thread.run_sync(read_head, source))
        if pillow_decodes(mime):
            # Runs to the end even if we are cancelled meanwhile (a thread cannot be stopped);
            # it then leaves a finished thumbnail in the cache and no temporary file.
            await trio.to_thread.run_sync(
                _render_to, source, target, box, kind == "animated", limiter=self._limiter
            )
            return
        if kind_of(mime) != "video":
            raise UnsupportedMedia(f"no thumbnail for {mime or 'files of an unknown type'}")
        found = await self._probe_video(source, file_hash)
        if not found.has_video or not found.width or not found.height:
            raise UnsupportedMedia("the file has no video stream")
        size = fit(found.width, found.height, box)
        if kind == "animated":
            await self._run_ffmpeg(
                source, target, [partial(video.preview_argv, self.ffmpeg, source, size=size)]
            )
            return
        at = (position or parse_position(DEFAULT_POSTER)).seconds(found.duration)
        attempts = [
            partial(video.frame_argv, self.ffmpeg, source, seconds=at, size=size, fast=fast)
            for fast in ((False,) if self.exact_seek else (True, False))
        ]
        if at > 0:  # the duration may be wrong (a cut-off upload): the first frame will do
            attempts.append(
                partial(video.frame_argv, self.ffmpeg, source, seconds=0.0, size=size, fast=False)
            )
        await self._run_ffmpeg(source, target, attempts)

    async def _run_ffmpeg(
        self, source: Path, target: Path, attempts: list[partial[list[str]]]
    ) -> None:
        """Try each command until one writes a WebP; rename it into place."""
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_name(target)
        problem = "ffmpeg produced no frame"
        try:
            async with self._limiter:
                with trio.move_on_after(self.job_timeout) as scope:
                    for argv in attempts:
                        code, _, err = await video.run_tool(
                            argv(dest=tmp),
                            timeout=self.job_timeout,
                            what="ffmpeg",
                            hide=(source, tmp),
                        )
                        if code == 0 and video.is_webp(tmp):
                            os.replace(tmp, target)
                            return
                        if code != 0:
                            problem = f"ffmpeg failed: {err or f'exit {code}'}"
                if scope.cancelled_caught:
                    problem = f"ffmpeg took longer than {self.job_timeout:g} s"
        finally:
            tmp.unlink(missing_ok=True)  # a cancelled or failed run leaves no partial file
        raise CorruptMedia(problem)

    async def _probe_video(self, source: Path, file_hash: str | None = None) -> video.VideoProbe:
        if file_hash is not None and file_hash in self._video_probes:
            self._video_probes.move_to_end(file_hash)
            return self._video_probes[file_hash]
        async with self._probe_limiter:
            found = await video.ffprobe(self.ffprobe, source)
        if file_hash is not None:
            self._video_probes[file_hash] = found
            while len(self._video_probes) > PROBES_KEPT:
                self._video_probes.popitem(last=False)
        return found


def _cached(target: Path) -> bool:
    try:
        return target.stat().st_size > 0  # an empty file is what a crash before writeback leaves
    except FileNotFoundError:
        return False
