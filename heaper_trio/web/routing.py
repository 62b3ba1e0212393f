"""Declaring a route once: URL, auth, body schema, responses, rate limit.

``@route(...)`` registers the Quart view and records a ``RouteSpec``; ``openapi.py`` builds the
document from the specs, and a test checks app and document list the same paths and methods.
The wrapper does the edge work every handler would otherwise repeat: parse and validate the
JSON body, authenticate, apply the auth rate limit. Handlers receive plain values.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

from quart import Blueprint, Response, current_app, request
from quart.datastructures import FileStorage
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from heaper_trio import logs
from heaper_trio.errors import (
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
)
from heaper_trio.records import User
from heaper_trio.services.container import Services
from heaper_trio.web import quart_compat
from heaper_trio.web.hot_request import HOT, HotRequest
from heaper_trio.web.schema import UNSTORABLE, check_text, storable, validate

# Segments that are routes of their own under a parameterised path: never an id, so
# ``DELETE /api/heap/add`` cannot reach (or name) a heap called "add".
RESERVED_IDS = ("add", "stats", "changed_blocks")
# (method, Quart rule) -> {path parameter: words it never takes}
_ROUTE_WORDS: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {}
_HOOKED: set[str] = set()
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(path: str) -> list[str]:
    """The methods some route answers at this concrete path. Werkzeug's own list counts a
    parameterised rule that matches a route word (DELETE /api/heap/{id} at /api/heap/add),
    which answers 405 here: neither Allow nor a 405 may offer it."""
    adapter = current_app.url_map.bind("localhost")
    found: set[str] = set()
    for method in METHODS:
        try:
            rule, args = adapter.match(path, method=method, return_rule=True)
        except HTTPException:
            continue
        words = _ROUTE_WORDS.get((method, rule.rule), {})
        if not any(args.get(name) in taken for name, taken in words.items()):
            found.add(method)
    if "GET" in found:
        found.add("HEAD")
    return sorted(found | {"OPTIONS"}) if found else []


async def _true_allow_header(response: Response) -> Response:
    if "Allow" in response.headers and (request.method == "OPTIONS" or response.status_code == 405):
        methods = allowed_methods(request.path)
        if methods:
            response.headers["Allow"] = ", ".join(methods)
    return response


AUTH_MODES = ("none", "optional", "access", "refresh", "access_or_query")


@dataclass(frozen=True)
class RouteSpec:
    method: str
    path: str  # OpenAPI style: /api/block/{blockKey}
    summary: str
    tag: str
    auth: str
    body: dict[str, Any] | None
    response: dict[str, Any] | None
    errors: tuple[int, ...]
    query: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""
    deprecated: bool = False
    websocket: bool = False
    # statuses whose body is not the error envelope (e.g. health's 503 is the health body)
    other_bodies: dict[int, dict[str, Any]] = field(default_factory=dict)
    # schemas of path parameters (default: any segment); enforced before the handler runs
    path_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the response is a file, not JSON: its media type(s) for 200/206, plus 304/416 answers
    binary: tuple[str, ...] = ()
    # a request body that is not JSON: media type -> schema (multipart parts, raw bytes)
    content: dict[str, dict[str, Any]] = field(default_factory=dict)
    required_query: tuple[str, ...] = ()
    text: str = ""  # a 200 answer that is text of this media type, not JSON (GET /metrics)


ROUTES: list[RouteSpec] = []
# (method, path) -> the wrapped view, for the routes web/hot_routes.py serves without Quart
VIEWS: dict[tuple[str, str], Callable[..., Awaitable[Any]]] = {}


def current_request() -> Any:
    """The request being served: the hot path's (``web/hot_routes.py``) or Quart's."""
    hot = HOT.get()
    return request if hot is None else hot


def services() -> Services:
    hot = HOT.get()
    return current_app.config["SERVICES"] if hot is None else hot.services  # type: ignore[no-any-return]


def client_address() -> str:
    if services().settings.trust_forwarded_for:
        # The last entry is the one our own proxy appended; earlier ones are whatever the
        # client sent and could be forged to dodge rate limits.
        forwarded = current_request().headers.get("X-Forwarded-For", "")
        last = forwarded.split(",")[-1].strip()
        if last:
            return last
    return current_request().remote_addr or "unknown"


def bearer_token() -> str | None:
    header = current_request().headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def limit_body(limit: int) -> None:
    """This request's body may hold at most ``limit`` bytes (413 otherwise). The app-wide
    bound is the largest any route takes (an upload chunk); JSON routes lower it here,
    before reading, so a big body is refused up front and never held in memory."""
    req = current_request()
    length = req.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"the request body exceeds {limit} bytes")
    if isinstance(req, HotRequest):
        req.max_body = limit
    else:
        quart_compat.limit_body(req, limit)


def _json_number(text: str) -> int | float:
    """JSON has one number type: ``5.0`` and ``5e3`` are integers to JSON Schema (and to any
    JavaScript client), so they are handed on as ints; ``5.5`` stays a float (and fails an
    integer field). Outside 2**53 a float holds no exact integer: it stays a float too."""
    value = float(text)
    if value.is_integer() and abs(value) <= 2**53:
        return int(value)
    return value


_DECODER = json.JSONDecoder(parse_float=_json_number)


async def read_json_body(*, allow_empty: bool) -> Any:
    limit_body(services().settings.max_request_bytes)
    raw = await current_request().get_data(cache=False, as_text=False, parse_form_data=False)
    if not raw.strip():
        if allow_empty:
            return {}
        raise BadRequest("a JSON body is required", code="invalid_json")
    try:
        # json.loads(raw, parse_float=...) exactly, minus a decoder built per call
        parsed = _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except (ValueError, RecursionError):
        raise BadRequest("the body is not valid JSON", code="invalid_json") from None
    if _MAY_HOLD_UNSTORABLE.search(raw):  # else no string in it can hold NUL or a surrogate
        check_text(parsed, "body")
    return parsed


# How NUL or a lone surrogate can reach a parsed JSON string: a \u escape, surrogate bytes
# (json.loads decodes bytes with surrogatepass), or a UTF-16/32 body (NUL bytes). Bodies
# without any of these (nearly all, including multi-MB base64 updates) skip the walk.
_MAY_HOLD_UNSTORABLE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])|\xed[\xa0-\xbf]|\x00")


def check_query_and_path(params: dict[str, Any]) -> None:
    """Query strings and path segments under the rule JSON strings follow: %00 decodes to NUL,
    and nothing behind a route needs it (ids, names, tokens, file names for a download)."""
    for name, value in params.items():
        if isinstance(value, str):
            check_text(value, f"path.{name}")
    for name, values in current_request().args.lists():
        if not storable(name):
            raise BadRequest(
                f"query has a parameter name that {UNSTORABLE}",
                code="invalid_value",
                details={"field": "query"},
            )
        for value in values:
            check_text(value, f"query.{name}")


async def read_form(
    schema: dict[str, Any] | None = None,
) -> tuple[MultiDict[str, str], MultiDict[str, FileStorage]]:
    """The multipart fields and files of this request, under the rule JSON strings follow:
    field values, field names, file names and part media types end up as names and MIME types
    in the database, where NUL fails PostgreSQL and a lone surrogate fails every engine. Text
    fields the route's form ``schema`` declares are validated against it, as a JSON body is."""
    files = await request.files
    form = await request.form
    for name in [*form.keys(), *files.keys()]:
        if not isinstance(name, str) or not storable(name):  # a part name the parser lost
            raise BadRequest(
                f"form has a field name that is missing or {UNSTORABLE}",
                code="invalid_value",
                details={"field": "form"},
            )
    fields = (schema or {}).get("properties", {})
    for name, value in form.items(multi=True):
        check_text(value, f"form.{name}")
        if value and name in fields and fields[name].get("format") != "binary":
            validate(value, fields[name], f"form.{name}")  # empty reads as absent, as ever
    for name, upload in files.items(multi=True):
        for text in (upload.filename or "", upload.content_type or ""):
            check_text(text, f"form.{name}")
    return form, files


def _quart_rule(path: str) -> str:
    return re.sub(r"\{(\w+)\}", r"<\1>", path)


def websocket_route(
    bp: Blueprint, path: str, *, summary: str, tag: str, description: str, deprecated: bool = False
) -> Callable[[Callable[[], Awaitable[None]]], Callable[[], Awaitable[None]]]:
    """Register a WebSocket endpoint and document it (OpenAPI has no WebSocket operations:
    it is listed as a GET answered with 101; the protocol itself is in docs/protocol.md)."""
    ROUTES.append(
        RouteSpec(
            "GET",
            path,
            summary,
            tag,
            "optional",
            None,
            None,
            (),
            {"token": {"type": "string"}},
            description,
            deprecated,
            websocket=True,
        )
    )

    def decorate(handler: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        bp.add_websocket(path, view_func=handler, endpoint=f"ws_{handler.__name__}")
        return handler

    return decorate


@dataclass(frozen=True)
class _Edge:
    """What one route's wrapper checks before its handler runs, fixed at registration."""

    auth: str
    body: dict[str, Any] | None
    rate_limit: bool
    path_schemas: dict[str, dict[str, Any]]
    # path parameter -> route words it never takes (``{"heap_id": ("add", ...)}``)
    route_words: dict[str, tuple[str, ...]]

    @property
    def body_optional(self) -> bool:
        return self.body is not None and not self.body.get("required") and "anyOf" not in self.body


async def _parse_body(edge: _Edge) -> tuple[Any, BadRequest | None]:
    """The JSON body, or why it is not one. The problem is returned, not raised: the rate
    limit below still counts a request whose body is broken."""
    if edge.body is None:
        return None, None
    try:
        return await read_json_body(allow_empty=edge.body_optional), None
    except BadRequest as e:
        return None, e


def _rate_limit(edge: _Edge, parsed: Any) -> None:
    """The auth rate limit, per client address and (when the body names one) public key."""
    if not edge.rate_limit:
        return
    key = parsed.get("public_key") if isinstance(parsed, dict) else None
    wait = services().auth_limits.check(
        client_address(), key if isinstance(key, str) else None, time.monotonic()
    )
    if wait is not None:
        raise RateLimited("too many auth requests; retry later", retry_after=wait)


def _check_path(edge: _Edge, params: dict[str, Any]) -> None:
    """Route words, then the text rule for path and query, then the path schemas."""
    for name, words in edge.route_words.items():
        if params[name] in words:
            # a route word is not an id: this rule does not apply, as if unmatched
            methods = allowed_methods(request.path)
            raise MethodNotAllowed(valid_methods=methods) if methods else NotFound()
    check_query_and_path(params)
    for name, schema in edge.path_schemas.items():
        try:
            validate(params[name], schema, f"path.{name}")
        except BadRequest as e:
            e.code = schema.get("x-error", e.code)
            raise


async def _authenticate(auth: str) -> dict[str, Any]:
    """The handler's ``user`` (access modes, and optional when a token is sent) or ``token``
    (refresh) argument; none for ``none``."""
    if auth in ("access", "access_or_query") or (auth == "optional" and bearer_token()):
        token = bearer_token()
        if token is None and auth == "access_or_query":
            # <img>/<video> cannot send headers: file routes take ?token= as well
            token = current_request().args.get("token") or None
        if token is None:
            raise Unauthorized("an access token is required", code="token_missing")
        user: User | None = None
        try:
            user = await services().accounts.authenticate(token)
        except (Unauthorized, Forbidden):
            if auth != "optional":
                raise
        if user is not None:
            logs.note_user(user.id)  # the access line and the request's log lines name it
        return {"user": user}
    if auth == "optional":
        return {"user": None}
    if auth == "refresh":
        token = bearer_token()
        if token is None:
            raise Unauthorized("a refresh token is required", code="token_missing")
        return {"token": token}
    return {}


def _implied_errors(
    path: str, auth: str, body: dict[str, Any] | None, rate_limit: bool, checked: bool
) -> set[int]:
    """Statuses the wrapper itself may answer, documented for every route that has it."""
    implied = {400, 413} if body is not None else set()
    if checked:  # path schemas or query parameters
        implied.add(400)
    if "{" in path:
        # an empty path parameter ("DELETE /api/heap/") is another URL, which no route serves
        implied.add(404)
    if auth in ("access", "refresh", "access_or_query"):
        implied |= {401, 403}
    if rate_limit:
        implied.add(429)
    return implied


def _register_route_words(
    bp: Blueprint, method: str, path: str, path_schemas: dict[str, dict[str, Any]]
) -> dict[str, tuple[str, ...]]:
    """Route words of this rule (a ``not: {enum: [...]}`` path schema), recorded so Allow and
    405 answers leave this rule out where a word takes its place (``allowed_methods``)."""
    route_words = {
        name: tuple(s["not"]["enum"])
        for name, s in path_schemas.items()
        if "enum" in s.get("not", {})
    }
    if route_words:
        _ROUTE_WORDS[(method, _quart_rule(path))] = route_words
        if bp.name not in _HOOKED:
            _HOOKED.add(bp.name)
            bp.after_app_request(_true_allow_header)
    return route_words


def route(
    bp: Blueprint,
    method: str,
    path: str,
    *,
    summary: str,
    tag: str,
    auth: str = "access",
    body: dict[str, Any] | None = None,
    response: dict[str, Any] | None = None,
    errors: tuple[int, ...] = (),
    rate_limit: bool = False,
    query: dict[str, dict[str, Any]] | None = None,
    description: str = "",
    deprecated: bool = False,
    other_bodies: dict[int, dict[str, Any]] | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    binary: tuple[str, ...] = (),
    content: dict[str, dict[str, Any]] | None = None,
    required_query: tuple[str, ...] = (),
    text: str = "",
) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Register ``handler(**path_params, [body=...], [user=...], [token=...])``.

    ``params`` gives path parameters a schema; a value that breaks it is a 400 before any
    work (``invalid_value``, or the schema's ``x-error`` code where routes had their own)."""
    assert auth in AUTH_MODES, auth
    path_schemas = params or {}
    assert set(path_schemas) <= set(re.findall(r"\{(\w+)\}", path)), (path, path_schemas)
    edge = _Edge(
        auth, body, rate_limit, path_schemas, _register_route_words(bp, method, path, path_schemas)
    )
    implied = _implied_errors(path, auth, body, rate_limit, bool(path_schemas or query))
    if auth == "access_or_query":
        query = {
            **(query or {}),
            "token": {
                "type": "string",
                "description": "the access token, for clients that cannot send headers",
            },
        }
    ROUTES.append(
        RouteSpec(
            method,
            path,
            summary,
            tag,
            auth,
            body,
            response,
            tuple(sorted(set(errors) | implied)),
            query or {},
            description,
            deprecated,
            other_bodies=other_bodies or {},
            path_params=path_schemas,
            binary=binary,
            content=content or {},
            required_query=required_query,
            text=text,
        )
    )

    def decorate(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @wraps(handler)
        async def view(**params: Any) -> Any:
            parsed, problem = await _parse_body(edge)
            _rate_limit(edge, parsed)
            if problem is not None:
                raise problem
            _check_path(edge, params)
            if edge.body is not None:
                validate(parsed, edge.body)
                params["body"] = parsed
            params.update(await _authenticate(edge.auth))
            return await handler(**params)

        VIEWS[(method, path)] = view
        bp.add_url_rule(
            _quart_rule(path),
            view_func=view,
            methods=[method],
            endpoint=f"{method.lower()}_{handler.__name__}",
        )
        return view

    return decorate
