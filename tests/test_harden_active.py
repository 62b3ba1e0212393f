"""Active content is never served inline, and every file answer is sandboxed (issue 9, item 5).

Over real servers on both engines: files uploaded with any type a browser could run (HTML,
XHTML, SVG, XML, XSL/XSLT, MathML and every other ``+xml``, JavaScript and its aliases) come as
attachments from ``/api/stream`` too; every file answer (raw, stream, generated and client-made
thumbnails; 200, 206, 304, 416 and HEAD) carries ``Content-Security-Policy: sandbox`` and
``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.services.media.sniff import runs_in_browser

from .test_file_serving import png_bytes, upload
from .test_sync import new_heap

ACTIVE = [
    "text/html",
    "text/html; charset=utf-8",
    "application/xhtml+xml",
    "image/svg+xml",
    "text/xml",
    "application/xml",
    "text/xsl",
    "application/xslt+xml",
    "application/mathml+xml",
    "application/rss+xml",
    "application/atom+xml",
    "application/vnd.custom+xml",
    "text/javascript",
    "application/javascript",
    "application/ecmascript",
    "text/ecmascript",
    "application/x-javascript",
    "text/x-javascript",
    "text/jscript",
    "TEXT/HTML",
    "application/x-shockwave-flash",
    "message/rfc822",
    "multipart/x-mixed-replace",
]
PASSIVE = [
    "text/plain",
    "image/png",
    "video/mp4",
    "audio/mpeg",
    "application/pdf",
    "application/json",
    "text/csv",
    "text/vtt",
    "application/octet-stream",
]


def safe(r: httpx.Response) -> bool:
    return (
        r.headers.get("content-security-policy") == "sandbox"
        and r.headers.get("x-content-type-options") == "nosniff"
    )


def test_which_types_run_in_a_browser() -> None:
    assert all(runs_in_browser(t) for t in ACTIVE)
    assert not any(runs_in_browser(t) for t in PASSIVE)


async def _serve_as(admin: HeaperClient, heap_id: str, mime: str, n: int) -> dict[str, Any]:
    # no extension: the server keeps the client's type when the content does not say otherwise
    answer = await upload(admin, heap_id, f"blk-{n}", f"<x n='{n}'/>".encode(), "file", mime)
    record = await admin.get(f"/api/file/{answer['file_hash']}/raw/file")
    assert record.headers["content-type"].lower().startswith(mime.split(";")[0].lower())
    return answer


async def test_active_types_are_attachments_everywhere(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    for n, mime in enumerate(ACTIVE):
        h = (await _serve_as(admin, heap["id"], mime, n))["file_hash"]
        for url in (f"/api/stream/{h}/page.html", f"/api/file/{h}/raw/page.html"):
            for headers in ({}, {"Range": "bytes=0-3"}):
                r = await admin.get(url, headers=headers)
                assert r.status_code in (200, 206), (mime, r.text)
                assert r.headers["content-disposition"].startswith("attachment"), mime
                assert safe(r), (mime, dict(r.headers))
            head = await admin.request("HEAD", url)
            assert head.headers["content-disposition"].startswith("attachment") and safe(head)


async def test_passive_types_stream_inline_but_sandboxed(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = await new_heap(admin)
    for n, mime in enumerate(["text/plain", "text/csv", "application/json"]):
        h = (await _serve_as(admin, heap["id"], mime, n))["file_hash"]
        r = await admin.get(f"/api/stream/{h}/f")
        assert r.headers["content-disposition"].startswith("inline") and safe(r), mime
        r = await admin.get(f"/api/file/{h}/raw/f")
        assert r.headers["content-disposition"].startswith("attachment") and safe(r), mime


async def test_every_file_answer_is_sandboxed(admin: HeaperClient, server: RunningServer) -> None:
    heap = await new_heap(admin)
    image = png_bytes()
    h = (await upload(admin, heap["id"], "blk-img", image, "p.png", "image/png"))["file_hash"]
    answers = {
        "200": await admin.get(f"/api/file/{h}/raw/p.png"),
        "206": await admin.get(f"/api/stream/{h}/p.png", headers={"Range": "bytes=0-1"}),
        "304": await admin.get(f"/api/stream/{h}/p.png", headers={"If-None-Match": f'"{h}"'}),
        "416": await admin.get(f"/api/stream/{h}/p.png", headers={"Range": f"bytes={len(image)}-"}),
        "HEAD": await admin.request("HEAD", f"/api/file/{h}/raw/p.png"),
        "thumbnail": await admin.get(f"/api/file/{h}/thumbnail/small/p.png"),
        "thumbnail 304": None,
        "animated": await admin.get(f"/api/file/{h}/animated_thumbnail/small/p.png"),
        "video": await admin.get(f"/api/file/{h}/video_thumbnail/small/1"),
    }
    thumb_etag = answers["thumbnail"].headers["etag"]  # type: ignore[union-attr]
    answers["thumbnail 304"] = await admin.get(
        f"/api/file/{h}/thumbnail/small/p.png", headers={"If-None-Match": thumb_etag}
    )
    r = await admin.post(
        f"/api/upload/thumbnail/blk-img/{h}/small",
        files={"thumbnail": ("t.png", png_bytes())},
        data={"type": "image", "size": "small"},
    )
    assert r.status_code == 200, r.text
    answers["client thumbnail"] = await admin.get(
        f"/api/download/thumbnail/blk-img/{h}/image/small"
    )
    answers["client thumbnail 206"] = await admin.get(
        f"/api/download/thumbnail/blk-img/{h}/image/small", headers={"Range": "bytes=0-3"}
    )
    expected = {
        "200": 200,
        "206": 206,
        "304": 304,
        "416": 416,
        "HEAD": 200,
        "thumbnail": 200,
        "thumbnail 304": 304,
        "animated": 200,
        "video": 200,
        "client thumbnail": 200,
        "client thumbnail 206": 206,
    }
    for name, response in answers.items():
        assert response is not None
        assert response.status_code == expected[name], (name, response.text)
        assert safe(response), (name, dict(response.headers))


@pytest.mark.parametrize("mime", ["image/svg+xml", "application/mathml+xml"])
async def test_an_active_client_thumbnail_type_cannot_be_stored(
    admin: HeaperClient, server: RunningServer, mime: str
) -> None:
    """Client-made thumbnails are checked to be raster images; an SVG never gets there."""
    heap = await new_heap(admin)
    h = (await upload(admin, heap["id"], "blk-c", b"photo", "p.jpg", "image/jpeg"))["file_hash"]
    r = await admin.post(
        f"/api/upload/thumbnail/blk-c/{h}/small",
        files={"thumbnail": ("t.svg", b"<svg onload='alert(1)'/>", mime)},
        data={"type": "image", "size": "small"},
    )
    assert r.status_code == 422
    r = await admin.get(f"/api/download/thumbnail/blk-c/{h}/image/small")
    assert r.status_code == 404
