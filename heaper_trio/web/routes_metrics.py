"""``GET /metrics`` (Prometheus text format) and the HTTP request metrics behind it.

Requests are measured at the edge, as ASGI (:class:`HttpMetrics`, outside the keep-alive guard):
from the request's arrival until the app has handed over the answer's last byte, labelled by
method, status and route *rule*. The rule comes from Quart's own routing: the first
before-request hook (ahead of the CORS preflight, which answers without a view) writes it into
the ASGI scope the middleware holds. Not a URL value preprocessor: Quart runs those for its
WebSockets too, through the ``request`` proxy, which has no request there. A path no route
serves is ``unmatched``, so a scanner walking random URLs adds one series, not one per URL.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import MutableMapping
from typing import Any, cast

from quart import Blueprint, Quart, Response, request
from werkzeug.exceptions import NotFound

from heaper_trio.errors import Unauthorized
from heaper_trio.services import metrics
from heaper_trio.web.http_guard import ASGIApp, Message, Receive, Send
from heaper_trio.web.routing import bearer_token, route, services

bp = Blueprint("metrics", __name__)
ROUTE_KEY = "heaper.route"  # the scope key the rule is written to


async def _note_rule() -> None:
    rule = request.url_rule
    if rule is not None:
        cast(dict[str, Any], request.scope)[ROUTE_KEY] = rule.rule


def install_route_labels(app: Quart) -> None:
    app.before_request_funcs.setdefault(None, []).insert(0, _note_rule)  # before all others


class HttpMetrics:
    """ASGI middleware: one observation per HTTP exchange; other scopes pass through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: int | None = None

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            metrics.http_request(
                scope["method"],
                scope.get(ROUTE_KEY, metrics.UNMATCHED),
                status,
                time.perf_counter() - start,
            )


def _check_token(expected: str) -> None:
    """``metrics_token`` set: the scrape must send it as a bearer token (constant time)."""
    if not expected:
        return
    given = bearer_token()
    if given is None:
        raise Unauthorized("GET /metrics needs the metrics_token", code="token_missing")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("this is not the metrics_token", code="token_invalid")


@route(
    bp,
    "GET",
    "/metrics",
    tag="instance",
    auth="none",
    errors=(401, 404),
    text="text/plain",
    summary="Prometheus metrics (text exposition format).",
    description="With metrics_token set, send it as Authorization: Bearer (401 without it). "
    "404 when the metrics setting is false. With several workers, any one answers for all.",
)
async def scrape() -> Response:
    settings = services().settings
    if not settings.metrics:
        raise NotFound()
    _check_token(settings.metrics_token)
    return Response(metrics.exposition(), 200, content_type=metrics.CONTENT_TYPE)
