"""Pillow work for media: header probes, still and animated WebP thumbnails.

Everything here is synchronous and runs in a worker thread (Pillow releases the GIL while it
decodes, resizes and encodes). Each function either returns, or raises one of the errors of
``heaper_trio.errors``: a damaged file must never escape as a Pillow exception (a 500).

Choices, with the figures they rest on (shared/notes/files-findings.md section 5a):
- JPEG is decoded with ``draft()`` (DCT scaling) to about twice the target size: 24 MP to
  256 px in ~200 ms instead of ~1100 ms for a full decode.
- EXIF orientation is applied once, here, and the output carries no EXIF, so no viewer can
  rotate it a second time.
- Alpha is kept (RGBA WebP); palette, CMYK, 16-bit and float images are converted first. The
  ICC profile is kept on RGB output; CMYK with a profile is converted to sRGB.
- ``MAX_PIXELS`` caps what we decode at all; decompression bombs are refused before decoding.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from PIL import Image, ImageCms

from heaper_trio.errors import CorruptMedia, ImageTooLarge, UnsupportedMedia

log = logging.getLogger(__name__)

MAX_PIXELS = 200_000_000  # per frame; a 200 MP panorama is the largest we decode
# Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that; we refuse above it ourselves.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

# Decoders we let untrusted bytes reach. Notably not EPS (runs Ghostscript), PSD or the many
# rarely fuzzed plugins Image.open would otherwise try. (MPO comes in through the JPEG opener.)
PILLOW_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "ICO", "AVIF")

WEBP_QUALITY = 80
ANIM_MAX_FRAMES = 300
ANIM_MAX_MS = 60_000  # of playing time kept from the source
ANIM_PIXEL_BUDGET = 600_000_000  # source pixels decoded for one animated thumbnail
ANIM_OUTPUT_PIXELS = 32_000_000  # frames held before encoding: 128 MB of RGBA at most
ANIM_MIN_DELAY_MS = 20  # browsers play shorter GIF delays as 100 ms; so do we

_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SRGB = ImageCms.createProfile("sRGB")


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int  # as displayed, orientation applied
    height: int
    orientation: int  # EXIF 1..8
    frames: int


@contextmanager
def _decoding(what: str, source: Path) -> Iterator[None]:
    """Turn whatever Pillow raises on bad input into our errors (without our paths: the
    message goes to the client)."""
    try:
        yield
    except (UnsupportedMedia, CorruptMedia, ImageTooLarge):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"image is larger than {MAX_PIXELS // 1_000_000} megapixels") from exc
    except MemoryError as exc:
        raise ImageTooLarge("image needs more memory than is available") from exc
    except Image.UnidentifiedImageError as exc:
        raise CorruptMedia(f"{what}: not a readable image") from exc
    except Exception as exc:  # Pillow's decoders raise OSError, ValueError, struct.error, ...
        log.info("media: %s of %s failed: %r", what, source, exc)
        detail = str(exc).replace(str(source), "image")
        raise CorruptMedia(f"{what}: the image is damaged or truncated ({detail})") from exc


def _open(source: Path) -> Image.Image:
    im = Image.open(source, formats=PILLOW_FORMATS)
    w, h = im.size
    if w <= 0 or h <= 0:
        im.close()
        raise CorruptMedia("image has no pixels")
    if w * h > MAX_PIXELS:
        im.close()
        raise ImageTooLarge(f"image is {w}x{h}, larger than {MAX_PIXELS // 1_000_000} megapixels")
    return im


def _exif_orientation(im: Image.Image, *, decoded: bool) -> int:
    if not decoded and im.format == "PNG" and "exif" not in im.info:
        return 1  # an eXIf chunk after the pixels: getexif() would decode them all to find it
    value = im.getexif().get(_ORIENTATION, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _orientation(im: Image.Image, *, decoded: bool) -> int:
    """The EXIF orientation still to apply. Pillow's TIFF reader applies it itself while
    decoding (and already reports the displayed size), so for TIFF there is none."""
    return 1 if im.format == "TIFF" else _exif_orientation(im, decoded=decoded)


def _is_animation(im: Image.Image) -> bool:
    """Several frames meant to play. MPO (a second, depth or stereo picture) and multi-page
    TIFF also have frames, but their first one is the picture."""
    return bool(getattr(im, "is_animated", False)) and im.format in ("GIF", "WEBP", "PNG", "AVIF")


def _rgb_icc(im: Image.Image) -> bytes | None:
    """The embedded ICC profile if it describes RGB (a grey or CMYK profile would be wrong on
    the RGB output)."""
    icc = im.info.get("icc_profile")
    return icc if isinstance(icc, bytes) and icc[16:20] == b"RGB " else None


def probe_image(source: Path) -> ImageHeader:
    """Header only: format, displayed size, orientation and frame count, no pixel decode."""
    with _decoding("probe", source), _open(source) as im:
        w, h = im.size
        if _orientation(im, decoded=False) >= 5:
            w, h = h, w
        frames = getattr(im, "n_frames", 1) if _is_animation(im) else 1
        orientation = _exif_orientation(im, decoded=False)
        return ImageHeader(im.format or "", w, h, orientation, int(frames))


def fit(width: int, height: int, box: int) -> tuple[int, int]:
    """The size with the longest side at most ``box``, keeping the aspect; never larger."""
    if max(width, height) <= box:
        return width, height
    scale = box / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_rgb_or_rgba(im: Image.Image) -> Image.Image:
    """A copy in RGB or RGBA, the two modes WebP stores, with colour handled properly."""
    mode = im.mode
    if mode == "RGBA":
        return im
    if mode in _ALPHA_MODES or "transparency" in im.info:
        return im.convert("RGBA")
    if mode == "RGB":
        return im
    if mode == "CMYK":
        icc = im.info.get("icc_profile")
        if icc:
            try:
                out = ImageCms.profileToProfile(
                    im, ImageCms.ImageCmsProfile(io.BytesIO(icc)), _SRGB, outputMode="RGB"
                )
                if out is not None:
                    return out
            except (ImageCms.PyCMSError, OSError, ValueError):
                pass  # a broken profile: fall back to the naive conversion
        return im.convert("RGB")
    if mode.startswith("I;16"):
        # 16-bit grey: scale 0..65535 to 0..255 (a plain convert would clip at 255)
        return im.convert("I").point(lambda v: v * (1 / 256)).convert("L").convert("RGB")
    if mode in ("I", "F"):
        # one band, so one (min, max) pair; Pillow's type also covers multi-band tuples
        low, high = cast(tuple[float, float], im.getextrema())
        k = 255 / ((high - low) or 1)
        scaled = im.convert("F").point(lambda v: v * k - low * k)
        return scaled.convert("L").convert("RGB")
    return im.convert("RGB")


def _encode_still(im: Image.Image, box: int) -> bytes:
    width, height = im.size
    target = fit(width, height, box)
    if im.format in ("JPEG", "MPO"):
        # DCT scaling to at least 1.5x the target, then a good resample the rest of the way
        # (2x would decode a 12 MP photo in full for the 1024 px size: 390 ms instead of ~150)
        im.draft(None, (target[0] * 3 // 2, target[1] * 3 // 2))
    icc = _rgb_icc(im) if im.mode != "CMYK" else None
    frame = _to_rgb_or_rgba(im)
    frame = frame.resize(target, Image.Resampling.LANCZOS, reducing_gap=2.0)
    orientation = _orientation(im, decoded=True)
    if orientation in _TRANSPOSE:
        frame = frame.transpose(_TRANSPOSE[orientation])
    buf = io.BytesIO()
    frame.save(buf, "WEBP", quality=WEBP_QUALITY, method=_webp_method(box), icc_profile=icc)
    return buf.getvalue()


def _webp_method(box: int) -> int:
    """libwebp effort: 4 (the default) costs ~4 ms at 256 px but ~85 ms at 1024 px, where 2
    takes ~25 ms for much the same size."""
    return 4 if box <= 512 else 2


def _frame_delay(info: Mapping[Any, object]) -> int:
    value = info.get("duration")
    delay = int(value) if isinstance(value, (int, float)) else 0
    return delay if delay >= ANIM_MIN_DELAY_MS else 100


def _encode_animated(im: Image.Image, box: int) -> bytes:
    target = fit(im.size[0], im.size[1], box)
    orientation = _orientation(im, decoded=False)
    source_px, target_px = im.size[0] * im.size[1], target[0] * target[1]
    frames: list[Image.Image] = []
    delays: list[int] = []
    played = 0
    while (
        len(frames) < ANIM_MAX_FRAMES
        and played < ANIM_MAX_MS
        and (len(frames) + 1) * source_px <= ANIM_PIXEL_BUDGET
        and (len(frames) + 1) * target_px <= ANIM_OUTPUT_PIXELS
    ):
        try:
            im.seek(len(frames))
            small = im.convert("RGBA").resize(target, Image.Resampling.LANCZOS, reducing_gap=2.0)
        except EOFError:
            break
        except Exception:
            if not frames:
                raise
            break  # a cut-off animation: keep the frames that decoded, as browsers do
        if orientation in _TRANSPOSE:
            small = small.transpose(_TRANSPOSE[orientation])
        delay = _frame_delay(im.info)
        frames.append(small)
        delays.append(delay)
        played += delay
    if not frames:
        raise CorruptMedia("animation has no frames")
    buf = io.BytesIO()
    frames[0].save(
        buf,
        "WEBP",
        save_all=True,
        append_images=frames[1:],
        duration=delays,
        loop=int(im.info.get("loop", 0) or 0),
        quality=WEBP_QUALITY,
        method=_webp_method(box),
    )
    return buf.getvalue()


def render_image(source: Path, box: int, *, animated: bool = False) -> bytes:
    """WebP bytes of ``source`` fitted into ``box`` pixels; animated if asked and it moves."""
    with _decoding("thumbnail", source), _open(source) as im:
        if animated and _is_animation(im):
            return _encode_animated(im, box)
        return _encode_still(im, box)
