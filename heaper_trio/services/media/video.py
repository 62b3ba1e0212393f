"""ffprobe and ffmpeg as subprocesses: probing, poster frames, animated previews.

Each tool runs through ``trio.run_process`` under a deadline; a cancelled or timed-out run is
killed (SIGKILL, not the default SIGTERM-then-wait-5-s) and reaped before the call returns, so
no child outlives its request. Paths are passed as ``file:`` URLs so that a name can never be
read as an option or as another ffmpeg protocol (``concat:``, ``http:``...). A source named
``/proc/self/fd/<n>`` is a file the server holds open (a scanned file checked to be the one
hashed, ``scans/source``): the child inherits that descriptor, so the name means the very same
open file in it and nothing can swap the path in between.

Seeking (shared/notes/files-findings.md 5a, and measured again here on a 1080p H.264 file with
a keyframe every 2 s): ``-ss`` before ``-i`` (input seek) ~300 ms; with ``-skip_frame nointra``
~170 ms. The fast form returns the first keyframe at or after the position, and nothing at all
past the last keyframe; when it yields no frame we fall back to the exact input seek.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from heaper_trio.errors import CorruptMedia, Unavailable

PROBE_TIMEOUT_S = 20.0
WEBP_QUALITY = 80
PREVIEW_SECONDS = 3.0
PREVIEW_FPS = 10
STDERR_TAIL = 400

_COMMON = ("-nostdin", "-hide_banner", "-loglevel", "error", "-y")
_OPEN_FILE = re.compile(r"/proc/self/fd/([0-9]{1,9})")


@dataclass(frozen=True)
class VideoProbe:
    has_video: bool
    has_audio: bool
    width: int | None  # as displayed: sample aspect ratio and rotation applied
    height: int | None
    duration: float | None
    format_name: str


async def _kill(process: trio.Process) -> None:
    process.kill()


def inherited(*paths: Path) -> tuple[int, ...]:
    """The descriptors a child must inherit for these paths to name the same files in it."""
    return tuple(int(m[1]) for p in paths if (m := _OPEN_FILE.fullmatch(str(p))))


async def run_tool(
    argv: list[str],
    *,
    timeout: float,  # noqa: ASYNC109 (a deadline per tool run, chosen by the caller)
    what: str,
    hide: tuple[Path, ...] = (),
) -> tuple[int, bytes, str]:
    """Run one tool to completion: (return code, stdout, the tail of stderr). The paths in
    ``hide`` are blanked out of stderr, which ends up in a message to the client; those that
    are open files of ours (``/proc/self/fd/<n>``) are inherited by the child."""
    try:
        with trio.fail_after(timeout):
            done = await trio.run_process(
                argv,
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                deliver_cancel=_kill,
                pass_fds=inherited(*hide),
            )
    except trio.TooSlowError:
        raise CorruptMedia(
            f"{what} took longer than {timeout:g} s; the file may be damaged"
        ) from None
    except (FileNotFoundError, PermissionError) as exc:
        raise Unavailable(
            f"{argv[0]} cannot be run: {exc.strerror}", code="media_tool_missing"
        ) from None
    err = done.stderr.decode("utf-8", "replace")
    for path in hide:
        err = err.replace(f"file:{path}", "file").replace(str(path), "file")
    err = err.strip()[-STDERR_TAIL:]
    return done.returncode, done.stdout, err


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) and out >= 0 else None


def _rotation(stream: dict[str, Any]) -> int:
    """Degrees the display matrix (or an old ``rotate`` tag) turns the picture, 0..359."""
    value: Any = (stream.get("tags") or {}).get("rotate")
    for side in stream.get("side_data_list") or ():
        if isinstance(side, dict) and "rotation" in side:
            value = side["rotation"]
    try:
        return round(abs(float(value))) % 360
    except (TypeError, ValueError, OverflowError):
        return 0


def parse_ffprobe(data: dict[str, Any]) -> VideoProbe:
    streams = [s for s in data.get("streams") or () if isinstance(s, dict)]
    fmt = data.get("format") or {}
    video = next(
        (
            s
            for s in streams
            if s.get("codec_type") == "video"
            and not (s.get("disposition") or {}).get("attached_pic")
        ),
        None,
    )
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    width = height = None
    if video is not None and video.get("width") and video.get("height"):
        width, height = int(video["width"]), int(video["height"])
        num, _, den = str(video.get("sample_aspect_ratio") or "1:1").partition(":")
        if num.isdigit() and den.isdigit() and int(num) > 0 and int(den) > 0:
            width = max(1, round(width * int(num) / int(den)))
        if _rotation(video) in (90, 270):
            width, height = height, width
    duration = _number(fmt.get("duration"))
    if duration is None:
        duration = max(
            (d for s in streams if (d := _number(s.get("duration"))) is not None), default=None
        )
    return VideoProbe(
        video is not None,
        audio is not None,
        width,
        height,
        duration,
        str(fmt.get("format_name") or ""),
    )


async def ffprobe(tool: str, source: Path) -> VideoProbe:
    argv = [
        tool,
        "-v",
        "error",
        "-print_format",
        "json",
        "-show_format",
        "-show_streams",
        f"file:{source}",
    ]
    code, out, err = await run_tool(argv, timeout=PROBE_TIMEOUT_S, what="ffprobe", hide=(source,))
    if code != 0:
        raise CorruptMedia(f"ffprobe could not read the file: {err or f'exit {code}'}")
    try:
        data = json.loads(out)
    except ValueError as exc:
        raise CorruptMedia("ffprobe gave no readable answer") from exc
    return parse_ffprobe(data if isinstance(data, dict) else {})


def is_webp(path: Path) -> bool:
    """ffmpeg exits 0 and leaves an 8-byte stub when it found no frame; a real one has chunks."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        return False
    return len(head) == 16 and head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def frame_argv(
    tool: str, source: Path, dest: Path, seconds: float, size: tuple[int, int], *, fast: bool
) -> list[str]:
    argv = [tool, *_COMMON]
    if fast:
        argv += ["-skip_frame", "nointra"]
    return [
        *argv,
        "-ss",
        f"{seconds:.3f}",
        "-i",
        f"file:{source}",
        "-map",
        "0:v:0",
        "-an",
        "-sn",
        "-dn",
        "-frames:v",
        "1",
        "-vf",
        f"scale={size[0]}:{size[1]}:flags=lanczos,setsar=1",
        "-c:v",
        "libwebp",
        "-quality",
        str(WEBP_QUALITY),
        "-compression_level",
        "4",
        "-f",
        "webp",
        f"file:{dest}",
    ]


def preview_argv(tool: str, source: Path, dest: Path, size: tuple[int, int]) -> list[str]:
    """The first PREVIEW_SECONDS at PREVIEW_FPS as an animated WebP (libwebp_anim)."""
    return [
        tool,
        *_COMMON,
        "-t",
        f"{PREVIEW_SECONDS:g}",
        "-i",
        f"file:{source}",
        "-map",
        "0:v:0",
        "-an",
        "-sn",
        "-dn",
        "-vf",
        f"fps={PREVIEW_FPS},scale={size[0]}:{size[1]}:flags=bicubic,setsar=1",
        "-c:v",
        "libwebp_anim",
        "-loop",
        "0",
        "-quality",
        "70",
        "-compression_level",
        "3",
        "-f",
        "webp",
        f"file:{dest}",
    ]
