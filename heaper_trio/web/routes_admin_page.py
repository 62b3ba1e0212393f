"""The admin page at ``GET /admin``: static HTML, CSS and one JavaScript module from
``web/static/admin/`` (package data; no build step, no CDN), the client of ``/api/admin/*``.

It is answered like the docs page (``routes_docs.answer``: strong ETag, no-cache, Range) under
the same Content-Security-Policy, which allows this origin's scripts, styles and fetches and
nothing else: no inline script, so even a string that slipped past the page's escaping could
not run. The sign-in secret arrives in the URL's fragment, which never reaches the server.
"""

from __future__ import annotations

from functools import lru_cache

from quart import Blueprint, Response

from heaper_trio.web.routes_docs import HTML, Page, answer, static_file
from heaper_trio.web.routing import route

bp = Blueprint("admin_page", __name__)

ASSETS = {"admin.mjs": "text/javascript", "admin.css": "text/css", "admin.html": HTML}


@lru_cache(maxsize=4)
def admin_asset(name: str) -> Page:
    return Page.of(static_file(f"admin/{name}"), ASSETS[name])


@route(
    bp,
    "GET",
    "/admin",
    tag="admin",
    auth="none",
    binary=(HTML,),
    summary="The admin page (HTML): accounts, jobs and storage use, signed in with a link "
    "from `python -m heaper_trio admin-link`.",
    description="Static HTML; its script (/admin/admin.mjs) calls /api/admin/*. "
    "Content-Security-Policy allows this origin only.",
)
async def admin_page() -> Response:
    return answer(admin_asset("admin.html"))


@route(
    bp,
    "GET",
    "/admin/admin.mjs",
    tag="admin",
    auth="none",
    binary=(ASSETS["admin.mjs"],),
    summary="The admin page's JavaScript module.",
)
async def admin_script() -> Response:
    return answer(admin_asset("admin.mjs"))


@route(
    bp,
    "GET",
    "/admin/admin.css",
    tag="admin",
    auth="none",
    binary=(ASSETS["admin.css"],),
    summary="The admin page's stylesheet.",
)
async def admin_style() -> Response:
    return answer(admin_asset("admin.css"))
