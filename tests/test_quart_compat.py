"""The framework internals web/quart_compat.py relies on still exist in the installed versions.

An upgrade of Quart, Quart-Trio or hypercorn that renames one must fail here, not disable a
body limit or a socket workaround in production without a word."""

from __future__ import annotations

import pytest
from hypercorn.protocol import ws_stream
from hypercorn.protocol.ws_stream import Handshake
from hypercorn.trio.tcp_server import TCPServer
from quart import Quart
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import TrioBody
from werkzeug.exceptions import RequestEntityTooLarge

import heaper_trio.app  # noqa: F401  (applies the hypercorn patch on import, as served)
from heaper_trio.web import quart_compat
from heaper_trio.web.quart_compat import HOOKS, Hook


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: f"{h.owner.__name__}.{h.name}")
def test_each_internal_we_rely_on_still_exists(hook: Hook) -> None:
    owner = f"{hook.owner.__module__}.{hook.owner.__name__}"
    assert hook.present(), f"{owner} lost {hook.name}: {hook.why}"


def test_a_missing_attribute_is_noticed() -> None:
    """The check itself can fail: for class and for instance attributes."""
    assert not Hook(TCPServer, "_no_such_method", why="").present()
    assert not Hook(TrioBody, "_no_such_field", why="", instance=True).present()
    assert not Hook(Handshake, "NoSuchGlobal", why="", used_by="accept").present()


async def test_limit_body_lowers_the_limit_the_body_enforces() -> None:
    body = TrioBody(None, 1000)
    quart_compat.limit_body(_RequestWith(body), 3)  # type: ignore[arg-type]
    body.append(b"abcd")
    with pytest.raises(RequestEntityTooLarge):
        await body


class _RequestWith:
    def __init__(self, body: TrioBody) -> None:
        self.body = body


def test_the_eof_patch_is_in_force() -> None:
    assert quart_compat.idle_timer_stops_at_eof()
    before = TCPServer._read_data
    quart_compat.stop_idle_timer_at_eof()  # idempotent: never wraps twice
    assert TCPServer._read_data is before


def test_handle_request_still_runs_in_the_request_nursery() -> None:
    """file_response cancels the parent nursery of the task running this code object; that
    holds only while handle_request is started in (and handed) the request's nursery."""
    code = quart_compat.HANDLE_REQUEST_CODE
    assert code is TrioASGIHTTPConnection.handle_request.__code__
    assert code.co_varnames[:2] == ("self", "nursery")


def test_json_keys_keep_their_order() -> None:
    app = Quart(__name__)
    quart_compat.keep_json_key_order(app)
    assert app.json.dumps({"b": 1, "a": 2}) == '{"b": 1, "a": 2}'


def test_ws_compression_declines_the_offer_unless_on() -> None:
    """The handshake hypercorn builds sees our deflate, which accepts only when told to."""
    before = quart_compat.ws_compression_enabled()
    offer = [(b"sec-websocket-extensions", b"permessage-deflate")]
    headers = [
        (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
        (b"sec-websocket-version", b"13"),
    ]
    try:
        for on in (False, True, False):
            quart_compat.set_ws_compression(on)
            assert ws_stream.PerMessageDeflate is quart_compat._DeflateIfEnabled
            assert quart_compat.ws_compression_enabled() is on
            _, answer, connection = Handshake(headers + offer, "1.1").accept(None, [])
            assert (b"sec-websocket-extensions" in dict(answer)) is on
            enabled = [e.name for e in connection._proto.extensions]  # type: ignore[attr-defined]
            assert enabled == (["permessage-deflate"] if on else [])
    finally:
        quart_compat.set_ws_compression(before)
