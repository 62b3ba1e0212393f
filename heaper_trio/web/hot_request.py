"""The request of a route served by ``web/hot_routes.py``, as the route wrapper reads it.

``routing`` reads the current request through :func:`current_request`: Quart's ``request``
proxy, or, on the hot path, a :class:`HotRequest` set in :data:`HOT`. It is werkzeug's own
sans-I/O request (the class Quart's request is built on), made from the ASGI scope the way
Quart makes its own (``quart.asgi._create_request_from_scope``), so headers, query arguments,
``Content-Length`` and the client address read exactly alike; only the body is ours: read
from ASGI ``receive`` up to the route's limit, over it the 413 Quart's body reader raises.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, MutableMapping
from contextvars import ContextVar
from functools import cached_property
from typing import Any

from werkzeug.datastructures import Headers, ImmutableHeadersMixin, ImmutableMultiDict, MultiDict
from werkzeug.exceptions import BadRequestKeyError, RequestEntityTooLarge
from werkzeug.sansio.request import Request

from heaper_trio.web.http_guard import Receive


class ClientGone(Exception):
    """The client left before its body was in: the request ends without an answer (the
    access log's 499), as when Quart cancels a request on ``http.disconnect``."""


_ABSENT: Any = object()


class ScopeHeaders(ImmutableHeadersMixin, Headers):  # type: ignore[misc]
    """The request's headers as Quart's request holds them (names title-cased, values
    latin-1, in order), read through a dict: werkzeug's ``get`` lowercases and walks the
    whole list on every call, and a request reads five or six. Immutable, so the two views
    cannot part."""

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        pairs = [(name.decode("latin1"), value.decode("latin1")) for name, value in raw]
        self._list = [(name.title(), value) for name, value in pairs]
        first: dict[str, str] = {}
        for name, value in pairs:
            first.setdefault(name.lower(), value)  # werkzeug answers the first of repeats
        self._first = first

    def _get_key(self, key: str) -> str:
        try:
            return self._first[key.lower()]
        except KeyError:
            raise BadRequestKeyError(key) from None

    # As werkzeug's, without raising (and catching) a KeyError for each absent header.
    def get(self, key: str, default: Any = None, type: Any = None) -> Any:  # type: ignore[override]
        value = self._first.get(key.lower(), _ABSENT)
        if value is _ABSENT:
            return default
        if type is None:
            return value
        try:
            return type(value)
        except ValueError:
            return default

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._first


NO_ARGS: ImmutableMultiDict[str, str] = ImmutableMultiDict()


class HotRequest(Request):
    def __init__(
        self, scope: MutableMapping[str, Any], receive: Receive, services: Any, max_body: int
    ) -> None:
        headers = ScopeHeaders(scope["headers"])
        remote = (scope.get("client") or ["<local>"])[0]
        super().__init__(
            scope["method"],
            scope["scheme"],
            None,
            scope.get("root_path", ""),
            scope["path"],
            scope["query_string"],
            headers,
            remote,
        )
        self.scope = scope
        self.services = services
        self.max_body = max_body  # lowered per route by routing.limit_body
        self._receive = receive
        self._size = 0
        # No body to read only when none can come: HTTP/2 may send one without a length
        # (and has no chunked encoding), so there the body is read until its end (found in
        # review: an h2 push without Content-Length was taken as empty)
        http1 = scope.get("http_version") in ("1.0", "1.1")
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "")
        self.body_read = self.content_length == 0 or (
            http1 and not self.content_length and not chunked
        )

    @cached_property
    def args(self) -> MultiDict[str, str]:
        """As werkzeug's, without parsing an empty query string (most hot requests)."""
        return Request.args.fget(self) if self.query_string else NO_ARGS  # type: ignore[attr-defined]

    async def get_data(self, **_: Any) -> bytes:
        """The whole body (``routing.read_json_body`` asks for bytes, uncached)."""
        return b"".join([part async for part in self.body])

    @property
    def body(self) -> AsyncIterator[bytes]:
        """The body as it arrives (the chunk PUT writes it so), never more than ``max_body``.
        An iterator object, not an async generator: one left unfinished (a body longer than
        its chunk) has nothing to finalize."""
        return self

    def __aiter__(self) -> HotRequest:
        return self

    async def __anext__(self) -> bytes:
        while not self.body_read:
            message = await self._receive()
            if message["type"] != "http.request":
                self.body_read = True
                raise ClientGone  # Quart cancels the request here: no answer, no work
            data = message.get("body", b"")
            self._size += len(data)
            if self._size > self.max_body:
                raise RequestEntityTooLarge()
            self.body_read = not message.get("more_body", False)
            if data:
                return bytes(data)
        raise StopAsyncIteration

    async def discard_body(self) -> None:
        """Read and drop what is left of the body, as Quart's receiver task does for a request
        answered before its body was read (a 413 on ``Content-Length``): the keep-alive guard
        waits for it to end before the connection carries the next request."""
        while not self.body_read:
            message = await self._receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                self.body_read = True


HOT: ContextVar[HotRequest | None] = ContextVar("heaper_hot_request", default=None)
