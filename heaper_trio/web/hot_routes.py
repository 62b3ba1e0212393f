"""The hot JSON routes as raw ASGI, in front of Quart (as ``web/ws_asgi.py`` is for ``/ws``).

A request through Quart pays for its request and app contexts, werkzeug's URL matching, the
before/after hooks, a response object and quart-trio's per-request nursery: about as much CPU
as the rest of a ``GET /api/health``. The routes clients call most (:data:`HOT`) are served
here instead, by the very view ``routing.route`` registered with Quart (same body parsing,
schema validation, authentication, rate limit and handler, reading the request through
``routing.current_request``), answered as Quart would answer it: the same JSON bytes, the same
headers in the same order, CORS (``cors.origin_headers``), every failure through
``errors.error_answer``. It sits inside the access log, the metrics middleware (which gets the
route's label from here) and the keep-alive guard, so those see every request alike.

The chunk PUT of resumable uploads is served here too (its body goes to the disk as it
arrives, through ``HotRequest.body``). Anything else (another method on these paths,
``OPTIONS`` preflights, ``HEAD``) goes to Quart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import trio
from quart import Quart, Response

from heaper_trio.web.cors import origin_headers
from heaper_trio.web.errors import error_answer
from heaper_trio.web.hot_request import HOT, ClientGone, HotRequest
from heaper_trio.web.http_guard import NO_DISCONNECT_CANCEL, ASGIApp, Receive, Send
from heaper_trio.web.routes_metrics import ROUTE_KEY
from heaper_trio.web.routing import VIEWS

HOT_ROUTES = (
    ("GET", "/api/health"),
    ("POST", "/api/me"),
    ("POST", "/api/sync/push"),
    ("POST", "/api/sync/pull"),
    ("GET", "/api/sync/delta"),
)

CHUNK_PUT = ("PUT", "/api/upload/chunk/{heap_id}/{block_id}/{hash}/{index}")
CHUNK_PREFIX = "/api/upload/chunk/"
CHUNK_RULE = "/api/upload/chunk/<heap_id>/<block_id>/<hash>/<index>"
CHUNK_PARAMS = ("heap_id", "block_id", "hash", "index")
_AS_QUART = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
# bytes after which orjson's text may not be json's (see HotRoutes._json)
_ORJSON_DIFFERS = (b"\x7f", b"e-", b"0.0000")
# looked up per request (a test empties it to have Quart answer the same requests)
SERVED: dict[tuple[str, str], Callable[..., Awaitable[Any]]] = {}


def match(
    method: str, path: str
) -> tuple[Callable[..., Awaitable[Any]], str, dict[str, str]] | None:
    """The view, metrics rule and path parameters of a hot route; None: Quart's to answer.
    The chunk PUT's four segments match as werkzeug's do: non-empty, no ``/``."""
    view = SERVED.get((method, path))
    if view is not None:
        return view, path, {}
    if method == "PUT" and path.startswith(CHUNK_PREFIX) and (view := SERVED.get(CHUNK_PUT)):
        parts = path[len(CHUNK_PREFIX) :].split("/")
        if len(parts) == len(CHUNK_PARAMS) and all(parts):
            return view, CHUNK_RULE, dict(zip(CHUNK_PARAMS, parts, strict=True))
    return None


class HotRoutes:
    """ASGI middleware: serves :data:`HOT_ROUTES`, passes everything else on to ``app``."""

    def __init__(self, app: ASGIApp, quart: Quart) -> None:
        self.app = app
        self.services = quart.config["SERVICES"]
        self.max_body: int = quart.config["MAX_CONTENT_LENGTH"]
        self.json = quart.json
        self.mimetype = quart.json.mimetype  # type: ignore[attr-defined]
        SERVED.update({key: VIEWS[key] for key in (*HOT_ROUTES, CHUNK_PUT)})

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        found = match(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        view, rule, params = found
        scope[ROUTE_KEY] = rule  # the metrics label, Quart's rule
        scope[NO_DISCONNECT_CANCEL] = True  # unlike Quart (the guard's final send)
        req = HotRequest(scope, receive, self.services, self.max_body)
        token = HOT.set(req)
        try:
            result = await view(**params)
            body, status = result if isinstance(result, tuple) else (result, 200)  # as Quart's
            extra: dict[str, str] = {}
        except ClientGone:
            return
        except Exception as e:
            status, body, extra = error_answer(e)
        finally:
            HOT.reset(token)
        if req.body_read:
            await self._answer(send, req, status, body, extra)
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(req.discard_body)
            await self._answer(send, req, status, body, extra)
            nursery.cancel_scope.cancel()

    def _json(self, body: Any) -> bytes:
        """Quart's bytes for a JSON answer (``json.response``: compact ``json.dumps``, ASCII
        only, then a newline), through orjson where its bytes are the same: about 0.6 µs
        against 11 for an ``/api/me`` answer. They differ for non-ASCII text and DEL (which
        json escapes), for floats between 1e-9 and 1e-4 (``1e-05`` against ``1e-5`` or
        ``0.00001``), for integers past 64 bits and for dict keys that are not strings: those
        answers go through json as before. Dates and dataclasses go to Quart's own
        ``default``, as in json. One difference is left: NaN and infinities, which no answer
        holds and which json writes as invalid JSON, would come out ``null``."""
        try:
            data = orjson.dumps(body, default=self.json.default, option=_AS_QUART)  # type: ignore[attr-defined]
        except (orjson.JSONEncodeError, TypeError):
            data = b""
        if not data or not data.isascii() or any(mark in data for mark in _ORJSON_DIFFERS):
            return f"{self.json.dumps(body, separators=(',', ':'))}\n".encode()
        return data + b"\n"

    async def _answer(
        self, send: Send, req: HotRequest, status: int, body: Any, extra: dict[str, str]
    ) -> None:
        """As Quart sends a JSON answer: ``json.response``'s bytes, then its headers; a view
        that encodes its own answer (delta: orjson) returns a ``Response``, sent as it is."""
        if isinstance(body, Response):
            data = await body.get_data()
            status, mimetype = body.status_code, body.content_type or self.mimetype
        else:
            data = self._json(body)
            mimetype = self.mimetype
        headers = [
            (b"content-type", mimetype.encode()),
            (b"content-length", str(len(data)).encode()),
        ]
        for name, value in [*extra.items(), *origin_headers(req.headers.get("Origin"))]:
            headers.append((name.lower().encode(), value.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data, "more_body": False})
