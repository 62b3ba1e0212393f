"""The media service on real files: orientation, alpha, colour modes, animation, video frames,
errors with their codes, the cache, single flight, and clean cancellation (no temporary file,
no ffmpeg left running)."""

from __future__ import annotations

import io
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
import trio
from PIL import Image

from heaper_trio.errors import BadRequest, HeaperError
from heaper_trio.services.media.service import (
    THUMB_VERSION,
    MediaService,
    Position,
    parse_position,
    parse_size,
)
from tests import media_samples as ms

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    out = {f"orient{o}": ms.oriented(d / f"o{o}.jpg", o) for o in range(1, 9)}
    for fmt in ("WEBP", "AVIF", "TIFF", "PNG"):
        out[f"orient6_{fmt}"] = ms.oriented(d / f"o6.{fmt.lower()}", 6, fmt)
    ms.red_corner().save(d / "plain.bmp")
    out["bmp"] = d / "plain.bmp"
    out.update(
        rgba=ms.rgba_png(d / "alpha.png"),
        gif=ms.palette_gif(d / "palette.gif"),
        cmyk=ms.cmyk_jpeg(d / "cmyk.jpg"),
        gray16=ms.gray16_png(d / "gray16.png"),
        anim_gif=ms.animated(d / "anim.gif", "GIF"),
        anim_webp=ms.animated(d / "anim.webp", "WEBP"),
        apng=ms.animated(d / "anim.png", "PNG"),
        cut_gif=ms.cut_animation(d / "cut.gif"),
        photo=ms.noisy_jpeg(d / "photo.jpg", (1200, 600)),
        video=ms.colour_video(d / "colours.mp4"),
        rotated=ms.rotated_video(d / "rotated.mp4"),
        wav=ms.audio_wav(d / "tone.wav"),
        truncated=ms.truncated_jpeg(d / "truncated.jpg"),
        random=ms.random_bytes(d / "random.bin"),
        bomb=ms.bomb_png(d / "bomb.png"),
    )
    cut = d / "cut.mp4"
    cut.write_bytes(out["video"].read_bytes()[:1000])  # cut before the index (moov) at the end
    out["cut_video"] = cut
    return out


@pytest.fixture
def media(tmp_path: Path) -> MediaService:
    return MediaService(tmp_path / "cache")


async def thumb(
    svc: MediaService, kind: str, src: Path, size: str = "small", position: str = "0"
) -> Image.Image:
    h = ms.sha256(src)
    if kind == "image":
        path = await svc.image_thumbnail(src, h, size)
    elif kind == "video":
        path = await svc.video_thumbnail(src, h, size, position)
    else:
        path = await svc.animated_thumbnail(src, h, size)
    im = load(path)
    assert im.format == "WEBP"
    return im


def load(path: Path) -> Image.Image:
    """Opened from memory: no file handle left for the ResourceWarning check."""
    return Image.open(io.BytesIO(path.read_bytes()))


def near(pixel: Any, want: tuple[int, ...], tol: int = 40) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, want))


def assert_error(exc: pytest.ExceptionInfo[HeaperError], status: int, code: str) -> None:
    assert (exc.value.status, exc.value.code) == (status, code), exc.value.message


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")] if root.exists() else []


def children() -> set[int]:
    me, found = str(os.getpid()), set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{me}\n" in status:
                found.add(int(entry))
    return found


def fake_ffmpeg(tmp_path: Path, *, then_real: bool = False) -> Path:
    """An 'ffmpeg' that writes a partial output, records its pid and hangs; with ``then_real``
    only its first run hangs and later runs are the real ffmpeg."""
    script = tmp_path / "slow-ffmpeg"
    real = f'[ -e "{tmp_path}/pid" ] && exec {shutil.which("ffmpeg")} "$@"\n' if then_real else ""
    script.write_text(
        "#!/bin/sh\n" + real + 'for last; do :; done\nprintf RIFF > "${last#file:}"\n'
        f'echo $$ > "{tmp_path}/pid.new" && mv "{tmp_path}/pid.new" "{tmp_path}/pid"\n'
        "exec sleep 30\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


async def wait_for(path: Path) -> int:
    with trio.fail_after(10):
        while not path.exists():
            await trio.sleep(0.01)
    return int(path.read_text())


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# -- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size,want",
    [
        ("tiny", ("tiny", 64)),
        ("large", ("large", 1024)),
        ("1", ("tiny", 64)),
        ("64", ("tiny", 64)),
        ("65", ("small", 256)),
        ("300", ("medium", 512)),
        ("1024", ("large", 1024)),
        ("5000", ("large", 1024)),
        ("9" * 30, ("large", 1024)),
    ],
)
def test_sizes_round_up(size: str, want: tuple[str, int]) -> None:
    assert parse_size(size) == want


@pytest.mark.parametrize("size", ["", "0", "-5", "1.5", "300px", "huge", "１２", "9" * 40])
def test_bad_sizes(size: str) -> None:
    with pytest.raises(BadRequest) as exc:
        parse_size(size)
    assert_error(exc, 400, "bad_thumbnail_size")


def test_positions() -> None:
    assert parse_position("12.5") == Position(12.5, False)
    assert parse_position("40%").seconds(10.0) == 4.0
    assert parse_position("100%").seconds(3.0) == pytest.approx(2.9)
    assert parse_position("99").seconds(3.0) == pytest.approx(2.9)
    assert parse_position("99").seconds(None) == 99.0
    assert parse_position("12.50").key == parse_position("12.5").key == "12.5s"
    for bad in ["", "-1", "nan", "inf", "1e3", "+5", "5_0", "%", "ten"]:
        with pytest.raises(BadRequest) as exc:
            parse_position(bad)
        assert_error(exc, 400, "bad_thumbnail_position")


# -- images ---------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
async def test_exif_orientation_applied_once(
    media: MediaService, samples: dict[str, Path], orientation: int
) -> None:
    src = samples[f"orient{orientation}"]
    info = await media.probe(src)
    assert (info.width, info.height, info.orientation) == (160, 80, orientation)
    im = (await thumb(media, "image", src)).convert("RGB")
    assert im.size == (160, 80)  # displayed landscape, never upscaled
    assert near(im.getpixel((10, 10)), ms.RED)
    for corner in [(150, 10), (10, 70), (150, 70)]:
        assert near(im.getpixel(corner), ms.BLUE), corner
    assert not load(media.path_for(ms.sha256(src), "image", "small")).getexif()


@pytest.mark.parametrize(
    "name", ["orient6_WEBP", "orient6_AVIF", "orient6_TIFF", "orient6_PNG", "bmp"]
)
async def test_other_formats(media: MediaService, samples: dict[str, Path], name: str) -> None:
    info = await media.probe(samples[name])
    assert (info.kind, info.width, info.height) == ("image", 160, 80)
    im = (await thumb(media, "image", samples[name])).convert("RGB")
    assert im.size == (160, 80)
    assert near(im.getpixel((10, 10)), ms.RED) and near(im.getpixel((150, 70)), ms.BLUE)


async def test_alpha_survives(media: MediaService, samples: dict[str, Path]) -> None:
    im = await thumb(media, "image", samples["rgba"])
    assert im.mode == "RGBA" and im.size == (200, 100)
    assert near(im.getpixel((20, 50)), (255, 0, 0, 255))
    assert im.getpixel((180, 50))[3] == 0


@pytest.mark.parametrize(
    "name,colour", [("gif", ms.RED), ("cmyk", ms.RED), ("gray16", (128, 128, 128))]
)
async def test_colour_modes(
    media: MediaService, samples: dict[str, Path], name: str, colour: tuple[int, int, int]
) -> None:
    im = (await thumb(media, "image", samples[name])).convert("RGB")
    assert near(im.getpixel((5, 5)), colour, tol=30)


async def test_sizes_fit_the_longest_side(media: MediaService, samples: dict[str, Path]) -> None:
    assert (await thumb(media, "image", samples["photo"], "tiny")).size == (64, 32)
    assert (await thumb(media, "image", samples["photo"], "300")).size == (512, 256)
    assert (await thumb(media, "image", samples["photo"], "large")).size == (1024, 512)


@pytest.mark.parametrize("name", ["anim_gif", "anim_webp", "apng"])
async def test_animations_keep_their_frames(
    media: MediaService, samples: dict[str, Path], name: str
) -> None:
    src = samples[name]
    assert (await media.probe(src)).frames == 5
    im = await thumb(media, "animated", src)
    assert im.size == (256, 128) and im.n_frames == 5
    seen = []
    for i in range(im.n_frames):
        im.seek(i)
        seen.append(im.convert("RGB").getpixel((5, 5)))
        assert im.info["duration"] == 100
    assert near(seen[0], ms.RED) and near(seen[1], ms.GREEN) and near(seen[2], ms.BLUE)
    still = await thumb(media, "image", src)
    assert getattr(still, "n_frames", 1) == 1 and near(
        still.convert("RGB").getpixel((5, 5)), ms.RED
    )


async def test_cut_off_animation_keeps_what_decodes(
    media: MediaService, samples: dict[str, Path]
) -> None:
    im = await thumb(media, "animated", samples["cut_gif"])
    assert 2 <= im.n_frames < 5


async def test_animated_of_a_still_is_the_still(
    media: MediaService, samples: dict[str, Path]
) -> None:
    im = await thumb(media, "animated", samples["orient6"])
    assert getattr(im, "n_frames", 1) == 1 and im.size == (160, 80)


# -- video ----------------------------------------------------------------------------------


async def test_video_probe(media: MediaService, samples: dict[str, Path]) -> None:
    info = await media.probe(samples["video"], "colours.mp4")
    assert (info.mime_type, info.kind, info.width, info.height) == ("video/mp4", "video", 320, 240)
    assert info.duration == pytest.approx(3.0, abs=0.05)
    rotated = await media.probe(samples["rotated"])
    assert (rotated.width, rotated.height) == (240, 320)
    audio = await media.probe(samples["wav"])
    assert (audio.kind, audio.width) == ("audio", None)
    assert audio.duration == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize(
    "exact,position,colour",
    [
        (False, "0", ms.RED),
        (False, "1", ms.GREEN),
        (False, "12%", ms.GREEN),
        (False, "1.5", ms.BLUE),  # fast seek: the first keyframe at or after 1.5 s is at 2 s
        (False, "2.5", ms.BLUE),  # no keyframe after 2.5 s: the exact seek takes over
        (False, "100%", ms.BLUE),
        (False, "99", ms.BLUE),
        (True, "1.5", ms.GREEN),
        (True, "0.5", ms.RED),
    ],
)
async def test_video_frame_at_position(
    tmp_path: Path,
    samples: dict[str, Path],
    exact: bool,
    position: str,
    colour: tuple[int, int, int],
) -> None:
    svc = MediaService(tmp_path / "cache", exact_seek=exact)
    im = await thumb(svc, "video", samples["video"], "tiny", position)
    assert im.size == (64, 48)
    assert near(im.convert("RGB").getpixel((32, 24)), colour)


async def test_video_thumbnails(media: MediaService, samples: dict[str, Path]) -> None:
    poster = await thumb(media, "image", samples["video"])  # at 10%: the 1 s keyframe
    assert poster.size == (256, 192) and near(poster.convert("RGB").getpixel((5, 5)), ms.GREEN)
    assert (await thumb(media, "video", samples["rotated"], "small", "0")).size == (192, 256)
    preview = await thumb(media, "animated", samples["video"], "tiny")
    assert preview.size == (64, 48) and preview.n_frames >= 3
    colours = set()
    for i in range(preview.n_frames):
        preview.seek(i)
        colours.add(max(range(3), key=preview.convert("RGB").getpixel((5, 5)).__getitem__))
    assert colours == {0, 1, 2}  # red, green and blue frames


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,status,code",
    [
        ("truncated", 422, "corrupt_media"),
        ("random", 415, "unsupported_media"),
        ("bomb", 422, "image_too_large"),
        ("wav", 415, "unsupported_media"),
        ("cut_video", 422, "corrupt_media"),
    ],
)
@pytest.mark.parametrize("kind", ["image", "video", "animated"])
async def test_bad_files(
    media: MediaService, samples: dict[str, Path], name: str, status: int, code: str, kind: str
) -> None:
    with pytest.raises(HeaperError) as exc:
        await thumb(media, kind, samples[name])
    assert_error(exc, status, code)
    assert str(samples[name].parent) not in exc.value.message  # no server paths to clients
    assert not temp_files(media.cache_dir)


async def test_probe_is_lenient(media: MediaService, samples: dict[str, Path]) -> None:
    assert (await media.probe(samples["random"], "notes.txt")).mime_type == "text/plain"
    assert (await media.probe(samples["random"])).mime_type == "application/octet-stream"
    named = await media.probe(samples["random"], "clip.mp4")  # content unknown: trust the name
    assert (named.mime_type, named.kind, named.duration) == ("video/mp4", "video", None)
    bomb = await media.probe(samples["bomb"])
    assert (bomb.mime_type, bomb.width) == ("image/png", None)
    # content wins over a wrong name
    assert (await media.probe(samples["gif"], "x.jpg")).mime_type == "image/gif"


async def test_failures_are_remembered(tmp_path: Path, samples: dict[str, Path]) -> None:
    svc = MediaService(tmp_path / "cache")
    src, h = samples["truncated"], ms.sha256(samples["truncated"])
    for _ in range(3):
        with pytest.raises(HeaperError):
            await svc.image_thumbnail(src, h, "small")
    assert (svc.stats.jobs, svc.stats.failed_fast) == (1, 2)
    with pytest.raises(HeaperError):  # another size, same (hash, kind): fails fast too
        await svc.image_thumbnail(src, h, "tiny")
    assert svc.stats.jobs == 1
    svc.forget(h)
    with pytest.raises(HeaperError):
        await svc.image_thumbnail(src, h, "small")
    assert svc.stats.jobs == 2
    brief = MediaService(tmp_path / "cache2", failure_ttl=0)
    for _ in range(2):
        with pytest.raises(HeaperError):
            await brief.image_thumbnail(src, h, "small")
    assert brief.stats.jobs == 2


async def test_missing_tool_is_503_and_not_remembered(
    tmp_path: Path, samples: dict[str, Path]
) -> None:
    svc = MediaService(tmp_path / "cache", ffprobe=str(tmp_path / "no-ffprobe"))
    for _ in range(2):
        with pytest.raises(HeaperError) as exc:
            await thumb(svc, "video", samples["video"])
        assert_error(exc, 503, "media_tool_missing")
    assert svc.stats.jobs == 2


async def test_bad_hash(media: MediaService, samples: dict[str, Path]) -> None:
    for bad in ["../../etc", "ABCDEF0123456789", ""]:
        with pytest.raises(BadRequest) as exc:
            await media.image_thumbnail(samples["gif"], bad, "small")
        assert_error(exc, 400, "bad_file_hash")


# -- cache, single flight, cancellation -----------------------------------------------------


async def test_cache_hit_does_no_work(media: MediaService, samples: dict[str, Path]) -> None:
    src = samples["photo"]
    h = ms.sha256(src)
    first = await media.image_thumbnail(src, h, "small")
    assert first == media.cache_dir / h[:2] / h / f"image-small-v{THUMB_VERSION}.webp"
    mtime = first.stat().st_mtime_ns
    again = await media.image_thumbnail(src, h, "200")  # rounds to small: the same file
    assert again == first and first.stat().st_mtime_ns == mtime
    assert (media.stats.jobs, media.stats.cache_hits) == (1, 1)
    position = await media.video_thumbnail(
        samples["video"], ms.sha256(samples["video"]), "tiny", "40%"
    )
    assert position.name == f"video-tiny-40p-v{THUMB_VERSION}.webp"
    media.forget(h)
    assert not first.parent.exists()
    assert await media.image_thumbnail(src, h, "small") == first
    assert media.stats.jobs == 3


async def test_single_flight(media: MediaService, samples: dict[str, Path]) -> None:
    src = samples["photo"]
    h = ms.sha256(src)
    results: list[Path] = []

    async def one() -> None:
        results.append(await media.image_thumbnail(src, h, "medium"))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(one)
    assert len(set(results)) == 1 and len(results) == 10
    assert (media.stats.jobs, media.stats.joined) == (1, 9)
    assert not media._flights


async def test_single_flight_shares_failures(media: MediaService, samples: dict[str, Path]) -> None:
    src = samples["truncated"]
    codes: list[str] = []

    async def one() -> None:
        try:
            await media.image_thumbnail(src, ms.sha256(src), "small")
        except HeaperError as exc:
            codes.append(exc.code)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(one)
    assert codes == ["corrupt_media"] * 5 and media.stats.jobs == 1


async def test_cancelled_image_job_leaves_no_temp_file(
    media: MediaService, samples: dict[str, Path]
) -> None:
    with trio.move_on_after(0.005):
        await media.image_thumbnail(samples["photo"], ms.sha256(samples["photo"]), "large")
    assert not temp_files(media.cache_dir)


async def test_cancelled_video_job_kills_ffmpeg(tmp_path: Path, samples: dict[str, Path]) -> None:
    svc = MediaService(tmp_path / "cache", ffmpeg=str(fake_ffmpeg(tmp_path)))
    src = samples["video"]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(svc.video_thumbnail, src, ms.sha256(src), "small", "1")
        pid = await wait_for(tmp_path / "pid")
        assert temp_files(svc.cache_dir)  # the partial output exists while ffmpeg runs
        nursery.cancel_scope.cancel()
    assert gone(pid) and pid not in children()
    assert not temp_files(svc.cache_dir) and not svc._flights


async def test_slow_ffmpeg_times_out(tmp_path: Path, samples: dict[str, Path]) -> None:
    svc = MediaService(tmp_path / "cache", ffmpeg=str(fake_ffmpeg(tmp_path)), job_timeout=0.5)
    with pytest.raises(HeaperError) as exc:
        await thumb(svc, "animated", samples["video"])
    assert_error(exc, 422, "corrupt_media")
    assert "longer than" in exc.value.message
    assert gone(int((tmp_path / "pid").read_text()))
    assert not temp_files(svc.cache_dir)


async def test_cancelled_leader_hands_the_job_over(
    tmp_path: Path, samples: dict[str, Path]
) -> None:
    svc = MediaService(tmp_path / "cache", ffmpeg=str(fake_ffmpeg(tmp_path, then_real=True)))
    src = samples["video"]
    got: list[Path] = []

    async def request() -> None:
        got.append(await svc.video_thumbnail(src, ms.sha256(src), "tiny", "0"))

    leader = trio.CancelScope()

    async def leading() -> None:
        with leader:
            await request()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(leading)
        await wait_for(tmp_path / "pid")  # the leader's (hanging) ffmpeg runs
        nursery.start_soon(request)
        with trio.fail_after(5):
            while svc.stats.joined == 0:
                await trio.sleep(0.01)
        leader.cancel()  # its client went away: the follower must run the job itself
    assert len(got) == 1 and near(load(got[0]).convert("RGB").getpixel((5, 5)), ms.RED)
    assert (svc.stats.jobs, svc.stats.joined) == (2, 1)
    assert not temp_files(svc.cache_dir)
