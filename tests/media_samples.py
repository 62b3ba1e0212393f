"""Real media files for the media tests, generated in a temporary directory.

Images come from Pillow, videos and audio from the Debian ffmpeg (lavfi sources). Pictures are
made of large flat blocks so that JPEG noise cannot blur where a colour landed.
"""

from __future__ import annotations

import hashlib
import io
import random
import struct
import subprocess
import zlib
from pathlib import Path

from PIL import Image

RED = (255, 0, 0)
BLUE = (0, 0, 255)
GREEN = (0, 255, 0)

# What the viewer must apply for each EXIF orientation, and its inverse (to build the file).
_DISPLAY = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_INVERSE = {**_DISPLAY, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def red_corner(size: tuple[int, int] = (160, 80)) -> Image.Image:
    """Blue, with the top-left quarter red: shows any rotation or flip."""
    im = Image.new("RGB", size, BLUE)
    im.paste(RED, (0, 0, size[0] // 2, size[1] // 2))
    return im


def oriented(
    path: Path, orientation: int, fmt: str = "JPEG", display: tuple[int, int] = (160, 80)
) -> Path:
    """An image that *looks* like ``red_corner(display)`` once its EXIF orientation is
    applied (JPEG, WEBP, AVIF, TIFF or PNG)."""
    stored = red_corner(display)
    if orientation in _INVERSE:
        stored = stored.transpose(_INVERSE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    extra = {"quality": 95} if fmt in ("JPEG", "WEBP", "AVIF") else {}
    stored.save(path, fmt, exif=exif, **extra)
    return path


def rgba_png(path: Path) -> Path:
    """Left half opaque red, right half fully transparent."""
    im = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    im.paste((255, 0, 0, 255), (0, 0, 100, 100))
    im.save(path, "PNG")
    return path


def palette_gif(path: Path) -> Path:
    im = red_corner((120, 60)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    im.save(path, "GIF")
    return path


def cmyk_jpeg(path: Path) -> Path:
    Image.new("CMYK", (120, 80), (0, 255, 255, 0)).save(path, "JPEG", quality=95)  # red ink
    return path


def gray16_png(path: Path) -> Path:
    """16-bit grey at 32768 (mid grey), which a clipping conversion would turn white."""
    Image.new("I;16", (64, 64), 32768).save(path, "PNG")
    return path


def _frames(n: int, size: tuple[int, int]) -> list[Image.Image]:
    colours = [RED, GREEN, BLUE, (255, 255, 0), (255, 0, 255), (0, 255, 255)]
    return [Image.new("RGB", size, colours[i % len(colours)]) for i in range(n)]


def animated(path: Path, fmt: str, n: int = 5, size: tuple[int, int] = (300, 150)) -> Path:
    """``n`` flat frames of different colours, 100 ms each, in GIF, WEBP or PNG (APNG)."""
    first, *rest = _frames(n, size)
    extra = {"lossless": True} if fmt == "WEBP" else {}
    first.save(path, fmt, save_all=True, append_images=rest, duration=100, loop=0, **extra)
    return path


def cut_animation(path: Path, n: int = 5, keep: float = 0.7) -> Path:
    """An animated GIF of ``n`` noisy frames (each about the same size), cut off at ``keep``."""
    first, *rest = [Image.effect_noise((200, 100), 50 + 10 * i).convert("RGB") for i in range(n)]
    buf = io.BytesIO()
    first.save(buf, "GIF", save_all=True, append_images=rest, duration=100, loop=0)
    path.write_bytes(buf.getvalue()[: int(len(buf.getvalue()) * keep)])
    return path


def noisy_jpeg(path: Path, size: tuple[int, int], quality: int = 90, seed: int = 1) -> Path:
    """A photo-like JPEG (gradients plus noise) so the encoder and decoder do real work."""
    w, h = size
    base = Image.linear_gradient("L").resize((w, h)).convert("RGB")
    noise = Image.effect_noise((w // 4, h // 4), 60).resize((w, h)).convert("RGB")
    tint = Image.new("RGB", (w, h), (random.Random(seed).randrange(256), 90, 160))
    Image.blend(Image.blend(base, noise, 0.5), tint, 0.3).save(path, "JPEG", quality=quality)
    return path


def truncated_jpeg(path: Path) -> Path:
    whole = path.with_suffix(".whole.jpg")
    noisy_jpeg(whole, (400, 300))
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    whole.unlink()
    return path


def random_bytes(path: Path, n: int = 4096) -> Path:
    path.write_bytes(b"\x00\x01" + random.Random(7).randbytes(n))
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(path: Path, side: int = 30000) -> Path:
    """A tiny file whose header claims ``side`` x ``side`` pixels."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )
    return path


def _ffmpeg(*args: str) -> None:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
        check=True,
        timeout=60,
    )


def colour_video(path: Path) -> Path:
    """3 s at 10 fps, 320x240: red, then green, then blue, one second each; a keyframe every
    second (exactly at each colour change)."""
    graph = ";".join(
        f"color={c}:s=320x240:r=10:d=1[{i}]" for i, c in enumerate(("red", "lime", "blue"))
    )
    _ffmpeg(
        "-filter_complex",
        f"{graph};[0][1][2]concat=n=3:v=1:a=0",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-g",
        "10",
        str(path),
    )
    return path


def rotated_video(path: Path) -> Path:
    """A 320x240 test pattern tagged to display rotated by 90 degrees (portrait)."""
    plain = path.with_suffix(".plain.mp4")
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc=duration=1:size=320x240:rate=10",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        str(plain),
    )
    _ffmpeg("-i", str(plain), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(path))
    plain.unlink()
    return path


def audio_wav(path: Path) -> Path:
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", str(path))
    return path
