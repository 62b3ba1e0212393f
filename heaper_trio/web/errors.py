"""Every failure leaves as the contract's JSON envelope; nothing leaves as an HTML page.

``HeaperError`` carries its own status, code and headers (a 416's ``Content-Range``, a 429's
``Retry-After``). Werkzeug's HTTP errors (unknown route, wrong
method, body over the size limit) are mapped to stable codes. Anything else is a bug: it is
logged with its traceback and answered with a 500 that reveals nothing. Two conditions of the
server, not bugs, are not 500s: a full disk (507) and running out of file descriptors
(EMFILE/ENFILE, usually because many connections are open at once): a 503 with Retry-After, so
a client whose request failed for somebody else's load retries instead of giving up.
"""

from __future__ import annotations

import errno
import logging
from typing import Any

from quart import Quart, jsonify
from werkzeug.exceptions import HTTPException

from heaper_trio.errors import HeaperError, disk_full, os_errno

log = logging.getLogger("heaper_trio.web")
OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE})
FD_RETRY_AFTER_S = 2

HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


Answer = tuple[int, dict[str, Any], dict[str, str]]  # status, JSON body, headers


def _envelope(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Answer:
    return status, {"success": False, "error": code, "message": message}, headers or {}


def heaper_answer(e: HeaperError) -> Answer:
    return e.status, e.body(), e.headers


def http_answer(e: HTTPException) -> Answer:
    status = e.code or 500
    headers = {}
    if status == 405 and getattr(e, "valid_methods", None):
        headers["Allow"] = ", ".join(e.valid_methods)  # type: ignore[attr-defined]
    return _envelope(
        status, HTTP_CODES.get(status, f"http_{status}"), e.description or e.name, headers
    )


def unexpected_answer(e: Exception) -> Answer:
    if os_errno(e) in OUT_OF_FDS:
        log.warning("out of file descriptors: %s", e)
        return _envelope(
            503,
            "server_busy",
            "the server is out of resources for the moment; retry shortly",
            {"Retry-After": str(FD_RETRY_AFTER_S)},
        )
    if (full := disk_full(e)) is not None:
        # a full disk anywhere (not only in the upload paths, which raise it themselves)
        return heaper_answer(full)
    log.error("unhandled error", exc_info=e)  # the handler's own exception, explicitly
    return _envelope(500, "internal_error", "internal server error")


def error_answer(e: Exception) -> Answer:
    """What any failure leaves as: the hot path's handler (``web/hot_routes.py``) and
    Quart's handlers below answer alike."""
    if isinstance(e, HeaperError):
        return heaper_answer(e)
    if isinstance(e, HTTPException):
        return http_answer(e)
    return unexpected_answer(e)


def _response(answer: Answer) -> Any:
    status, body, headers = answer
    response = jsonify(body)
    response.status_code = status
    for name, value in headers.items():
        response.headers[name] = value
    return response


def install_error_handlers(app: Quart) -> None:
    @app.errorhandler(HeaperError)
    async def heaper_error(e: HeaperError) -> Any:
        return _response(heaper_answer(e))

    @app.errorhandler(HTTPException)
    async def http_error(e: HTTPException) -> Any:
        return _response(http_answer(e))

    @app.errorhandler(Exception)
    async def unexpected(e: Exception) -> Any:
        return _response(unexpected_answer(e))
