"""Serving stored files through the real routes, on both engines: raw and stream with Range
and conditionals, the ?token= form, other users, client-made thumbnails."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient

from .conftest import assert_error
from .test_sync import new_heap


async def upload(
    client: HeaperClient, heap_id: str, block_id: str, data: bytes, name: str, mime: str
) -> dict[str, str]:
    r = await client.post(
        f"/api/upload/file/{heap_id}/{block_id}", files={"file": (name, data, mime)}
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (40, 20), (255, 0, 0, 128)).save(out, "PNG")
    return out.getvalue()


async def test_raw_and_stream(
    admin: HeaperClient, eve: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    data = bytes(range(256)) * 40
    answer = await upload(admin, heap["id"], "blk-f", data, "data.bin", "application/octet-stream")
    h, file_id = answer["file_hash"], answer["file_id"]
    for key in (h, file_id):
        r = await admin.get(f"/api/file/{key}/raw/data.bin")
        assert r.status_code == 200 and r.content == data
        assert r.headers["etag"] == f'"{h}"' and r.headers["accept-ranges"] == "bytes"
        assert r.headers["content-disposition"].startswith("attachment")
    r = await admin.get(f"/api/stream/{h}/data.bin", headers={"Range": "bytes=0-1"})
    assert r.status_code == 206 and r.content == data[:2]
    assert r.headers["content-range"] == f"bytes 0-1/{len(data)}"
    r = await admin.get(f"/api/stream/{h}/data.bin", headers={"Range": "bytes=-10"})
    assert r.status_code == 206 and r.content == data[-10:]
    r = await admin.get(f"/api/stream/{h}/data.bin", headers={"Range": f"bytes={len(data)}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(data)}"
    r = await admin.get(f"/api/file/{h}/raw/x", headers={"If-None-Match": f'"{h}"'})
    assert r.status_code == 304 and r.content == b""
    # ?token= for players; nothing without a token; nothing for another user
    token = admin.access_token
    r = await admin.http.get(f"/api/stream/{h}/data.bin", params={"token": token})
    assert r.status_code == 200 and r.content == data
    assert_error(await admin.http.get(f"/api/stream/{h}/data.bin"), 401, "token_missing")
    assert_error(await eve.get(f"/api/file/{h}/raw/data.bin"), 404, "file_not_found")
    assert_error(await admin.get(f"/api/file/{'0' * 64}/raw/x"), 404, "file_not_found")


async def test_active_content_is_never_inline(admin: HeaperClient, server: RunningServer) -> None:
    heap = await new_heap(admin)
    answer = await upload(
        admin, heap["id"], "blk-h", b"<script>alert(1)</script>", "page.html", "text/html"
    )
    r = await admin.get(f"/api/stream/{answer['file_hash']}/page.html")
    assert r.headers["content-disposition"].startswith("attachment")
    assert r.headers["x-content-type-options"] == "nosniff"


async def test_client_thumbnails(
    admin: HeaperClient, eve: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    answer = await upload(admin, heap["id"], "blk-t", b"photo bytes", "p.jpg", "image/jpeg")
    h = answer["file_hash"]
    thumb = png_bytes()
    r = await admin.post(
        f"/api/upload/thumbnail/blk-t/{h}/small",
        files={"thumbnail": ("t.png", thumb)},
        data={"type": "image", "size": "small"},
    )
    assert r.status_code == 200 and r.json()["mime_type"] == "image/png", r.text
    r = await admin.get(f"/api/download/thumbnail/blk-t/{h}/image/small")
    assert r.status_code == 200 and r.content == thumb
    assert r.headers["content-type"] == "image/png"
    assert_error(
        await admin.get(f"/api/download/thumbnail/blk-t/{h}/image/large"),
        404,
        "thumbnail_not_found",
    )
    assert_error(
        await eve.get(f"/api/download/thumbnail/blk-t/{h}/image/small"), 404, "block_not_found"
    )
    r = await admin.post(
        f"/api/upload/thumbnail/blk-t/{h}/small", files={"thumbnail": ("t.txt", b"not an image")}
    )
    assert_error(r, 422, "not_an_image")
    other = hashlib.sha256(b"x").hexdigest()
    r = await admin.post(
        f"/api/upload/thumbnail/blk-t/{other}/small", files={"thumbnail": ("t.png", thumb)}
    )
    assert_error(r, 404, "file_not_found")
    r = await admin.post(
        f"/api/upload/thumbnail/blk-t/{h}/small",
        files={"thumbnail": ("t.png", thumb)},
        data={"type": "../x"},
    )
    assert_error(r, 400, "invalid_field")


async def test_generated_thumbnails(
    admin: HeaperClient, eve: HeaperClient, server: RunningServer, tmp_path: Path
) -> None:
    from .media_samples import colour_video

    heap = await new_heap(admin)
    answer = await upload(admin, heap["id"], "blk-img", png_bytes(), "a.png", "image/png")
    h = answer["file_hash"]
    entry = (await admin.post("/api/block/blk-img")).json()["files"]
    assert entry[f"{h}:{len(png_bytes())}"]["width"] == 40  # probed at upload
    r = await admin.get(f"/api/file/{h}/thumbnail/small/a.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp", r.text
    image = Image.open(io.BytesIO(r.content))
    assert image.size == (40, 20) and image.mode == "RGBA"  # never upscaled, alpha kept
    assert "immutable" in r.headers["cache-control"]
    assert_error(await admin.get(f"/api/file/{h}/thumbnail/huge/a.png"), 400, "bad_thumbnail_size")
    assert_error(await eve.get(f"/api/file/{h}/thumbnail/small/a.png"), 404, "file_not_found")
    text = await upload(admin, heap["id"], "blk-txt", b"just text", "t.txt", "text/plain")
    assert_error(
        await admin.get(f"/api/file/{text['file_hash']}/thumbnail/small/t"),
        415,
        "unsupported_media",
    )

    video = colour_video(tmp_path / "v.mp4")
    vid = await upload(admin, heap["id"], "blk-vid", video.read_bytes(), "v.mp4", "video/mp4")
    r = await admin.get(f"/api/file/{vid['file_hash']}/video_thumbnail/small/50%")
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp", r.text
    r = await admin.http.get(
        f"/api/file/{vid['file_hash']}/video_thumbnail/tiny/1.5",
        params={"token": admin.access_token},
    )
    assert r.status_code == 200 and max(Image.open(io.BytesIO(r.content)).size) <= 64

    frames = [Image.new("RGB", (120, 60), c) for c in ("red", "green", "blue")]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    gif = await upload(admin, heap["id"], "blk-gif", out.getvalue(), "a.gif", "image/gif")
    r = await admin.get(f"/api/file/{gif['file_hash']}/animated_thumbnail/small/a.gif")
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp", r.text
    assert getattr(Image.open(io.BytesIO(r.content)), "n_frames", 1) == 3


async def test_slugs_are_names_not_paths(admin: HeaperClient, server: RunningServer) -> None:
    heap = await new_heap(admin)
    answer = await upload(admin, heap["id"], "blk-s", b"plain", "s.txt", "text/plain")
    r = await admin.get(f"/api/file/{answer['file_hash']}/raw/..%2F..%2Fetc%2Fpasswd")
    assert_error(r, 404, "not_found")  # a slash ends the slug: no route, nothing read
    for slug in ("...", "..txt", 'a"b.txt', "%0d%0aSet-Cookie:x"):
        r = await admin.get(f"/api/file/{answer['file_hash']}/raw/{slug}")
        assert r.status_code == 200 and r.content == b"plain", slug
        disposition = r.headers["content-disposition"]
        assert (
            "\r" not in disposition
            and "\n" not in disposition
            and "set-cookie" not in {k.lower() for k in r.headers}
        )


async def test_a_path_no_scan_recorded_is_never_served(
    admin: HeaperClient, server: RunningServer, tmp_path: Path
) -> None:
    """Bytes are served in place only with the scan's record of what it hashed there (see
    test_harden_scanned.py): a row pointing at a path without one serves nothing, even when
    the bytes there happen to be right."""
    heap = await new_heap(admin)
    answer = await upload(admin, heap["id"], "blk-p", b"original", "p.txt", "text/plain")
    h = answer["file_hash"]
    in_place = tmp_path / "p.txt"
    in_place.write_bytes(b"original")
    await server.services.storage.update_file(h, source_path=str(in_place))
    for route in ("raw/p.txt", "thumbnail/small/p"):
        assert_error(await admin.get(f"/api/file/{h}/{route}"), 404, "file_missing")
    assert_error(await admin.get(f"/api/stream/{h}/p.txt"), 404, "file_missing")
