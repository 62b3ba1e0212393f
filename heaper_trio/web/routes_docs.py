"""Pages for people: the browsable API docs at ``GET /api/docs`` and a landing page at ``GET /``.

The docs page is static HTML, CSS and one JavaScript module from ``web/static/`` (package
data, shipped in the wheel; no build step, no CDN). In the browser the module fetches
``/api/openapi.json`` and renders it: tags, routes, parameters, bodies, responses, a search
box and ``#operationId`` deep links. The pages reference their own origin only, by relative
URLs (so they also work under a path prefix), and say so in their Content-Security-Policy.

``GET /`` answers HTML whatever the Accept header: it is the address a person opens in a
browser. Programs discover the instance at ``GET /api/``; the landing page's ``Link`` header
(RFC 8631) points them at the OpenAPI document, the docs and the health route.

Every answer carries a strong ETag of its bytes and ``Cache-Control: no-cache`` (the URLs are
not versioned, so a browser revalidates: a 304 when nothing changed), and honours Range like
the file routes (their documented 200/206/304/416, ``web/ranges.py``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from html import escape
from importlib import resources
from string import Template

from quart import Blueprint, Response, request

from heaper_trio.errors import RangeNotSatisfiable
from heaper_trio.web.ranges import plan_response, quote_etag
from heaper_trio.web.routing import route, services

bp = Blueprint("docs", __name__)

HTML = "text/html"
# The files under web/static/ served as assets of the docs page: URL name -> media type.
ASSETS = {"docs.mjs": "text/javascript", "docs.css": "text/css"}
CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
LANDING_LINKS = ", ".join(
    (
        '</api/openapi.json>; rel="service-desc"',
        '</api/docs>; rel="service-doc"',
        '</api/health>; rel="status"',
    )
)


@dataclass(frozen=True)
class Page:
    body: bytes
    media_type: str  # with its charset for text
    etag: str  # opaque (unquoted)

    @classmethod
    def of(cls, body: bytes, media_type: str) -> Page:
        return cls(body, f"{media_type}; charset=utf-8", hashlib.sha256(body).hexdigest()[:40])


def static_file(name: str) -> bytes:
    """A file of ``web/static/`` (``admin/admin.html``: of a folder in it), read through
    importlib.resources (works from a wheel)."""
    folder = resources.files("heaper_trio.web") / "static"
    for part in name.split("/"):
        folder = folder / part
    return folder.read_bytes()


@lru_cache(maxsize=8)
def asset(name: str) -> Page:
    media_type = ASSETS.get(name, HTML)
    return Page.of(static_file(name), media_type)


@lru_cache(maxsize=4)
def landing(name: str, version: str) -> Page:
    template = Template(static_file("landing.html").decode("utf-8"))
    text = template.substitute(name=escape(name or "heaper_trio"), version=escape(version))
    return Page.of(text.encode("utf-8"), HTML)


def _field(name: str) -> str | None:
    values = request.headers.getlist(name)
    return ", ".join(values) if values else None


def answer(page: Page, extra: dict[str, str] | None = None) -> Response:
    """200, 206, 304 or 416 for a GET or HEAD of ``page`` (Quart drops a HEAD's body)."""
    size = len(page.body)
    headers = {**HEADERS, **(extra or {}), "ETag": quote_etag(page.etag)}
    plan = plan_response(
        etag=page.etag,
        last_modified=-1,  # no Last-Modified is sent: If-Range dates never hold
        size=size,
        range_header=_field("Range"),
        if_range=_field("If-Range"),
        if_none_match=_field("If-None-Match"),
    )
    if plan.status == 304:
        response = Response(b"", 304, headers=headers)
        del response.headers["Content-Type"]
        return response
    if plan.status == 416:
        raise RangeNotSatisfiable(size, headers=HEADERS)
    headers["Accept-Ranges"] = "bytes"
    body = page.body
    if plan.range is not None:
        body = body[plan.range.first : plan.range.last + 1]
        headers["Content-Range"] = plan.range.content_range(size)
    return Response(body, plan.status, headers=headers, content_type=page.media_type)


@route(
    bp,
    "GET",
    "/",
    tag="docs",
    auth="none",
    binary=(HTML,),
    summary="A landing page for people: the server's name and version, links to the API "
    "docs, health and instance routes.",
    description="HTML whatever the Accept header; programs discover the instance at GET /api/. "
    'Link: </api/openapi.json>; rel="service-desc", </api/docs>; rel="service-doc", '
    '</api/health>; rel="status" (RFC 8631).',
)
async def home() -> Response:
    s = services()
    return answer(landing(s.settings.name, s.version), {"Link": LANDING_LINKS})


@route(
    bp,
    "GET",
    "/api/docs",
    tag="docs",
    auth="none",
    binary=(HTML,),
    summary="Browsable API docs: this document rendered in the browser, with search and "
    "#operationId links.",
    description="Static HTML; its script (/api/docs/docs.mjs) fetches /api/openapi.json. "
    "Content-Security-Policy allows this origin only.",
)
async def docs_page() -> Response:
    return answer(asset("docs.html"))


@route(
    bp,
    "GET",
    "/api/docs/docs.mjs",
    tag="docs",
    auth="none",
    binary=(ASSETS["docs.mjs"],),
    summary="The docs page's JavaScript module (renders the OpenAPI document).",
)
async def docs_script() -> Response:
    return answer(asset("docs.mjs"))


@route(
    bp,
    "GET",
    "/api/docs/docs.css",
    tag="docs",
    auth="none",
    binary=(ASSETS["docs.css"],),
    summary="The stylesheet of the docs and landing pages.",
)
async def docs_style() -> Response:
    return answer(asset("docs.css"))
