"""CORS that mirrors the request origin (the seed's rule, for every device and browser).

Preflight requests are answered here, before routing, so every route gets them for free.
"""

from __future__ import annotations

from typing import Any

from quart import Quart, Response, request

ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
DEFAULT_HEADERS = "Authorization, Content-Type, Range, If-None-Match"
EXPOSE_HEADERS = (
    "Content-Range, Content-Length, Content-Disposition, ETag, Retry-After, Accept-Ranges"
)
MAX_AGE_S = "600"


def install_cors(app: Quart) -> None:
    @app.before_request
    async def preflight() -> Any:
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response = Response(b"", status=204)
            response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
            response.headers["Access-Control-Allow-Headers"] = request.headers.get(
                "Access-Control-Request-Headers", DEFAULT_HEADERS
            )
            response.headers["Access-Control-Max-Age"] = MAX_AGE_S
            return response
        return None

    @app.after_request
    async def mirror_origin(response: Response) -> Response:
        for name, value in origin_headers(request.headers.get("Origin")):
            if name == "Vary":
                response.headers.add(name, value)
            else:
                response.headers[name] = value
        return response


def origin_headers(origin: str | None) -> list[tuple[str, str]]:
    """What every answer to a request with an ``Origin`` adds (Quart's and the hot path's)."""
    if not origin:
        return []
    return [
        ("Access-Control-Allow-Origin", origin),
        ("Access-Control-Allow-Credentials", "true"),
        ("Access-Control-Expose-Headers", EXPOSE_HEADERS),
        ("Vary", "Origin"),
    ]
