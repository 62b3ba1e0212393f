"""The browsable API docs (``GET /api/docs``) and the landing page (``GET /``), over a real server.

The pages load nothing from other origins: their HTML, JavaScript and CSS hold no absolute
URL, every asset they name answers 200 with its own type, and every answer carries a CSP that
allows this origin only. The renderer (``web/static/docs.mjs``, as the server sends it) runs under
``node`` against the server's real ``/api/openapi.json``: every operation appears, with its own
``#operationId`` anchor, and its DOM output equals its string output; the page script itself
runs in a fake browser (tests/docs_page/fake_browser.mjs): load, search box, deep links. Node is
optional here as in tests/test_interop.py: skipped without it, unless
``HEAPER_TEST_REQUIRE_NODE=1`` (CI).

The files ship as package data: ``importlib.resources`` finds each one, and pyproject.toml's
package-data patterns cover each one (so a built wheel carries them).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import tomllib
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
import trio

from heaper_trio.app import RunningServer

pytestmark = pytest.mark.engines("sqlite")  # no storage behind these routes

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "heaper_trio" / "web" / "static"
TYPES = {
    ".html": "text/html",
    ".mjs": "text/javascript",
    ".css": "text/css",
}


class Links(HTMLParser):
    """Every ``src`` and ``href`` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str, str]] = []  # (tag, attribute, value)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.found.append((tag, name, value))


def escape(text: str) -> str:
    """As docs.mjs escapes text and attribute values."""
    for c, entity in (
        ("&", "&amp;"),
        ("<", "&lt;"),
        (">", "&gt;"),
        ('"', "&quot;"),
        ("'", "&#39;"),
    ):
        text = text.replace(c, entity)
    return text


def links(html: str) -> list[tuple[str, str, str]]:
    parser = Links()
    parser.feed(html)
    return parser.found


def assert_page_headers(r: httpx.Response, media_type: str) -> None:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].split(";")[0].strip() == media_type, r.headers
    csp = r.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'", csp
    assert directives["script-src"] == "'self'", csp
    assert directives["connect-src"] == "'self'", csp
    assert "unsafe" not in csp and "http" not in csp, csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["etag"] == f'"{hashlib.sha256(r.content).hexdigest()[:40]}"'


def assert_same_origin_only(text: str, where: str) -> None:
    """No absolute or protocol-relative URL: a page may reach nothing but its own origin."""
    found = re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}", text)
    assert not found, f"{where} names another origin: {found}"
    assert not re.search(r"\bhttps?://", text), where
    assert "@import" not in text, where


async def same_origin_assets(http: httpx.AsyncClient, page: str) -> dict[str, httpx.Response]:
    """Each src/href of the page at ``page``, fetched: it must resolve to this origin."""
    r = await http.get(page)
    base = str(http.base_url).rstrip("/") + page
    out: dict[str, httpx.Response] = {}
    for tag, attr, value in links(r.text):
        assert not urlsplit(value).scheme and not value.startswith("//"), (tag, attr, value)
        url = urljoin(base, value)
        assert urlsplit(url).netloc == urlsplit(base).netloc, url
        out[urlsplit(url).path] = await http.get(url)
    return out


async def test_docs_page_and_its_assets(http: httpx.AsyncClient) -> None:
    r = await http.get("/api/docs")
    assert_page_headers(r, "text/html")
    assert_same_origin_only(r.text, "/api/docs")
    assert '<script type="module" src="docs/docs.mjs">' in r.text
    assets = await same_origin_assets(http, "/api/docs")
    assert {
        "/api/docs/docs.mjs",
        "/api/docs/docs.css",
        "/api/openapi.json",
        "/api/health",
        "/api/",
        "/",
    } <= set(assets)
    for path, media_type in (
        ("/api/docs/docs.mjs", "text/javascript"),
        ("/api/docs/docs.css", "text/css"),
    ):
        assert_page_headers(assets[path], media_type)
        assert_same_origin_only(assets[path].text, path)
        assert assets[path].content == (STATIC / path.rsplit("/", 1)[1]).read_bytes()
    assert assets["/api/openapi.json"].json()["openapi"].startswith("3.")
    # the script fetches the document by a relative URL, and sets no HTML from strings
    script = assets["/api/docs/docs.mjs"].text
    assert 'fetch("openapi.json"' in script
    assert not re.search(
        r"\.(innerHTML|outerHTML|insertAdjacentHTML)\b|document\.write|eval\(", script
    )


async def test_landing_page(http: httpx.AsyncClient, server: RunningServer) -> None:
    for accept in ("text/html", "application/json", "*/*"):
        r = await http.get("/", headers={"Accept": accept})
        assert_page_headers(r, "text/html")
        assert_same_origin_only(r.text, "/")
        assert r.headers["link"] == (
            '</api/openapi.json>; rel="service-desc", </api/docs>; rel="service-doc", '
            '</api/health>; rel="status"'
        )
    assert f"heaper_trio {server.services.version}" in r.text
    assets = await same_origin_assets(http, "/")
    assert {"/api/docs", "/api/health", "/api/", "/api/openapi.json", "/api/docs/docs.css"} == set(
        assets
    )
    assert all(a.status_code == 200 for a in assets.values()), assets
    # instance discovery is unchanged: JSON at /api/
    assert assets["/api/"].json()["success"] is True


async def test_landing_page_escapes_the_instance_name(start_server: Any) -> None:
    server = await start_server(name='<script>alert("x")</script> & co')
    async with httpx.AsyncClient(base_url=server.url) as http:
        r = await http.get("/")
    assert r.status_code == 200
    assert "<script>" not in r.text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in r.text


async def test_validators_ranges_and_head(http: httpx.AsyncClient) -> None:
    for path in ("/", "/api/docs", "/api/docs/docs.mjs", "/api/docs/docs.css"):
        r = await http.get(path)
        etag = r.headers["etag"]
        again = await http.get(path, headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b"", again
        assert again.headers["etag"] == etag
        assert "content-type" not in again.headers
        changed = await http.get(path, headers={"If-None-Match": '"other"'})
        assert changed.status_code == 200 and changed.content == r.content
        head = await http.head(path)
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) == len(r.content)
        part = await http.get(path, headers={"Range": "bytes=0-9"})
        assert part.status_code == 206 and part.content == r.content[:10]
        assert part.headers["content-range"] == f"bytes 0-9/{len(r.content)}"
        outside = await http.get(path, headers={"Range": f"bytes={len(r.content)}-"})
        assert outside.status_code == 416
        assert outside.json()["error"] == "range_not_satisfiable"
    # other names under /api/docs are no route
    r = await http.get("/api/docs/other.js")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


async def test_the_routes_are_in_the_openapi_document(http: httpx.AsyncClient) -> None:
    paths = (await http.get("/api/openapi.json")).json()["paths"]
    for path, media_type in (
        ("/", "text/html"),
        ("/api/docs", "text/html"),
        ("/api/docs/docs.mjs", "text/javascript"),
        ("/api/docs/docs.css", "text/css"),
    ):
        op = paths[path]["get"]
        assert op["security"] == [] and op["tags"] == ["docs"]
        assert set(op["responses"]["200"]["content"]) == {media_type}


# -- the renderer, under node ----------------------------------------------------------------

NODE_SCRIPTS = Path(__file__).resolve().parent / "docs_page"


@pytest.fixture
def node() -> str:
    path = shutil.which("node")
    if path:
        return path
    if os.environ.get("HEAPER_TEST_REQUIRE_NODE") == "1":
        pytest.fail("HEAPER_TEST_REQUIRE_NODE=1 but `node` is not installed")
    pytest.skip("`node` is not installed")


async def run_node(node: str, script: str, http: httpx.AsyncClient, tmp: Path) -> Any:
    """Run tests/docs_page/``script`` on docs.mjs as the server sends it and the server's real
    OpenAPI document; answer the JSON it prints."""
    module = tmp / "docs.mjs"
    module.write_bytes((await http.get("/api/docs/docs.mjs")).content)
    spec = tmp / "spec.json"
    spec.write_bytes((await http.get("/api/openapi.json")).content)
    with trio.fail_after(60):
        done = await trio.run_process(
            [node, str(NODE_SCRIPTS / script), str(module), str(spec)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


async def test_renderer_shows_every_route_of_the_real_document(
    http: httpx.AsyncClient, node: str, tmp_path: Path
) -> None:
    spec = (await http.get("/api/openapi.json")).json()
    out = await run_node(node, "render.mjs", http, tmp_path)
    html: str = out["html"]
    assert out["mounted"] == html  # the browser's DOM holds what the string form shows
    expected = [
        (path, method, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in ("get", "put", "post", "delete", "patch")
    ]
    assert len(expected) > 40
    assert sorted(out["ids"]) == sorted(op["operationId"] for _, _, op in expected)
    for path, method, op in expected:
        oid = op["operationId"]
        start = html.index(f'<section class="op" id="{oid}">')
        section = (
            html[start : html.index('<section class="op"', start + 1)]
            if html.find('<section class="op"', start + 1) > 0
            else html[start:]
        )
        label = "WS" if op.get("x-websocket") else method.upper()
        assert f'<span class="method {label.lower()}">{label}</span>' in section, oid
        assert f'<code class="path">{escape(path)}</code>' in section, oid
        assert f'href="#{oid}"' in section, oid
        assert escape(op["summary"]) in section, oid
        assert escape(op.get("description", "")) in section, oid
        for param in op.get("parameters", []):
            assert f"<code>{param['name']}</code>" in section, (oid, param)
        for status in op["responses"]:
            assert f'<span class="status">{status}</span>' in section, (oid, status)
        for mime in op.get("requestBody", {}).get("content", {}):
            assert f'<code class="muted">{mime}</code>' in section, (oid, mime)
        for prop in (
            op.get("requestBody", {})
            .get("content", {})
            .get("application/json", {})
            .get("schema", {})
            .get("properties", {})
        ):
            assert f"<code>{prop}</code>" in section, (oid, prop)
    for tag in {op["tags"][0] for _, _, op in expected}:
        assert f'<section class="tag" id="tag-{tag}">' in html and f'href="#tag-{tag}"' in html
    # the search box's matching
    assert {"get_api_health", "get_sync_health"} <= set(out["health"])
    assert "post_api_heap" not in out["health"]
    assert out["database_health"] == ["get_api_health"]  # every word, in any case
    assert out["upload_chunk"] == ["put_api_upload_chunk_heap_id_block_id_hash_index"]
    assert set(out["websockets"]) == {"get_ws", "get_api_ws"}
    assert out["nothing"] == [] and len(out["all"]) == len(expected)


async def test_page_script_in_a_fake_browser(
    http: httpx.AsyncClient, node: str, tmp_path: Path
) -> None:
    """main(): fetch the document, render it, filter from ?q= and the search box, open and
    scroll to the #operationId target (clearing a filter that hides it)."""
    out = await run_node(node, "fake_browser.mjs", http, tmp_path)
    total = out["total"]
    assert out["fetched"] == [["openapi.json", {"headers": {"Accept": "application/json"}}]]
    version = (await http.get("/api/")).json()["version"]
    assert out["title"] == f"heaper_trio {version} · API docs"
    assert out["heading"] == f"heaper_trio {version} API"
    load = out["at_load"]
    assert load["search"] == "heap"
    assert "post_api_heap_count" in load["visible"] and "get_api_health" not in load["visible"]
    assert load["count"] == f"{len(load['visible'])} of {total} routes"
    assert load["opened"] == ["post_api_heap_count"] and load["scrolled"] == "post_api_heap_count"
    searched = out["searched"]
    assert searched["visible"] == ["get_api_health"]
    assert searched["count"] == f"1 of {total} routes"
    spec = (await http.get("/api/openapi.json")).json()
    tags = {op["tags"][0] for item in spec["paths"].values() for op in item.values()}
    assert searched["hidden_tags"] == len(tags) - 1  # every tag section but instance's
    followed = out["followed"]
    assert followed["search"] == "" and followed["visible"] == total
    assert "post_api_me" in followed["opened"] and followed["scrolled"] == "post_api_me"


# -- packaging -------------------------------------------------------------------------------


def test_static_files_are_package_data() -> None:
    files = sorted(p.name for p in STATIC.iterdir() if p.is_file())
    assert {"docs.html", "docs.mjs", "docs.css", "landing.html"} <= set(files)
    found = resources.files("heaper_trio.web") / "static"
    for name in files:
        assert (found / name).read_bytes() == (STATIC / name).read_bytes()
        assert Path(name).suffix in TYPES, name
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["heaper_trio"]
    for name in files:
        rel = f"web/static/{name}"
        assert any(fnmatch.fnmatch(rel, p) for p in patterns), (rel, patterns)
