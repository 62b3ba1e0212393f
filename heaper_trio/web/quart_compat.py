"""Every place we reach into Quart, Quart-Trio or hypercorn beyond their public API.

Read against Quart 0.22.0, Quart-Trio 0.12.0 and hypercorn 0.18.0. Each hook below uses a
private attribute or relies on an internal behaviour; ``HOOKS`` lists them all, and
``tests/test_quart_compat.py`` checks that each still exists in the installed versions, so an
upgrade that renames or removes one fails a test instead of quietly disabling a limit or a
workaround in production. When that test fails, read the hook's ``why``, re-check the upstream
code it names, and adjust the hook (or drop it if upstream fixed the problem).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.protocol import ws_stream
from hypercorn.protocol.events import Request as StreamRequest
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import ASGIWebsocketState, Handshake, WSStream
from hypercorn.trio.tcp_server import TCPServer
from quart import Quart, Request, websocket
from quart.json.provider import DefaultJSONProvider
from quart.wrappers import Websocket
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import TrioBody
from wsproto.connection import ConnectionState
from wsproto.events import Ping
from wsproto.extensions import PerMessageDeflate

from heaper_trio.web.compat_hooks import PER_REQUEST_HOOKS, Hook

log = logging.getLogger(__name__)


HOOKS: tuple[Hook, ...] = (
    Hook(
        TrioBody,
        "_max_content_length",
        instance=True,
        why="limit_body lowers the body limit per request; without it a JSON route would "
        "hold up to the app-wide limit (an upload chunk) in memory",
    ),
    Hook(
        TCPServer,
        "_read_data",
        why="stop_idle_timer_at_eof wraps it: the socket is freed when the client leaves",
    ),
    Hook(
        TCPServer,
        "idle_task",
        instance=True,
        why="the keep-alive idle timer stop_idle_timer_at_eof stops at EOF",
    ),
    Hook(
        TrioASGIHTTPConnection,
        "handle_request",
        why="web/file_response.py ends a short body by cancelling the nursery of the task "
        "running this coroutine (HANDLE_REQUEST_CODE)",
    ),
    Hook(
        TrioASGIHTTPConnection,
        "handle_messages",
        why="cancels the request's nursery on http.disconnect: the behaviour HttpGuard "
        "(web/http_guard.py) works around",
    ),
    Hook(
        H11Protocol,
        "_maybe_recycle",
        why="recycles or closes the connection inside the app's final send; HttpGuard "
        "shields that send so it finishes",
    ),
    Hook(
        H11Protocol,
        "_close_stream",
        why="delivers http.disconnect from within _maybe_recycle (HttpGuard's analysis)",
    ),
    Hook(
        TCPServer,
        "_close",
        why="send_eof then aclose: the close HttpGuard's shielded send lets finish",
    ),
    Hook(
        type(websocket),
        "_get_current_object",
        why="current_websocket: the connection's child tasks need the object, not the "
        "context-bound proxy",
    ),
    Hook(
        Handshake,
        "PerMessageDeflate",
        used_by="accept",
        why="set_ws_compression: accept() builds its extension list from the module global "
        "PerMessageDeflate, which we replace so the offer is declined unless ws_compression",
    ),
    Hook(
        WSStream,
        "send",
        instance=True,
        why="websocket_socket: the ASGI send of a WebSocket is WSStream.app_send; its "
        "stream's send is the H11Protocol's stream_send, the way down to the TCPServer",
    ),
    Hook(
        WSStream,
        "connection",
        used_by="_accept",
        why="WebSocketSocket.open: the wsproto connection's state (OPEN until a close frame)",
    ),
    Hook(
        WSStream,
        "closed",
        instance=True,
        why="WebSocketSocket.open: set once the stream is closed (hypercorn drops sends then)",
    ),
    Hook(
        H11Protocol,
        "send",
        instance=True,
        why="websocket_socket: the H11Protocol's send is TCPServer.protocol_send",
    ),
    Hook(
        TCPServer,
        "stream",
        instance=True,
        why="websocket_socket: the connection's trio SocketStream, written to directly",
    ),
    Hook(
        TCPServer,
        "protocol_send",
        why="web/send_bound.py replaces it for RawData on plain sockets: upstream's shielded "
        "send_all has no time limit, so a client that stops reading held it for ever",
    ),
    Hook(
        TCPServer,
        "stream",
        used_by="protocol_send",
        why="web/send_bound.py writes to the socket of the stream upstream's send_all writes to",
    ),
    Hook(
        TCPServer,
        "config",
        instance=True,
        why="web/send_bound.py reads the send limits hypercorn_config puts on the config",
    ),
    Hook(
        TCPServer,
        "send_lock",
        used_by="protocol_send",
        why="the lock every hypercorn write takes; raw frame writes take it too, so a ping "
        "or a close frame never lands inside one of our frames",
    ),
    Hook(
        TCPServer,
        "send_lock",
        instance=True,
        why="websocket_socket swaps a WebSocket's lock for a Semaphore(1): a frame begun by "
        "a direct write from the hub's fan-out is finished by the connection's writer task, and "
        "a trio.Lock must be released by the task that took it. Sound only while hypercorn "
        "takes the lock through `async with` alone (tests/test_quart_compat.py reads its code)",
    ),
    Hook(
        WSStream,
        "_send_pings",
        why="end_pings_with_the_stream replaces it: the ping loop's sleep kept a closed "
        "WebSocket's connection task (and shutdown) waiting for up to the ping interval",
    ),
    Hook(
        WSStream,
        "websocket_ping_interval",
        used_by="_accept",
        why="leave_pings_to_the_app: _accept reads the interval from the stream's config "
        "(self.config), which a /ws stream gets without it, so no ping task is spawned",
    ),
    Hook(
        WSStream,
        "_send_wsproto_event",
        why="end_pings_with_the_stream sends its pings through it, as upstream's loop did",
    ),
    Hook(
        DefaultJSONProvider,
        "sort_keys",
        why="keep_json_key_order: answers keep the key order the contract documents",
    ),
    Hook(
        TrioASGIHTTPConnection,
        "scope",
        used_by="_create_request_from_scope",
        why="web/routes_metrics.py: the request's scope is the very ASGI scope dict, so the "
        "route rule written into request.scope reaches the metrics middleware",
    ),
    *PER_REQUEST_HOOKS,
)


# -- Quart ------------------------------------------------------------------------------------
def limit_body(request: Request, limit: int) -> None:
    """Make Quart's body reader refuse (413) more than ``limit`` bytes for this request.
    Quart has only the app-wide ``MAX_CONTENT_LENGTH``, fixed when the request is created; the
    body object keeps its own copy, which is what it checks each chunk against."""
    request.body._max_content_length = limit


def current_websocket() -> Websocket:
    """The current WebSocket itself, not the proxy: the proxy resolves through the context of
    the task using it, which the connection's reader, writer and keepalive tasks lack."""
    return websocket._get_current_object()  # type: ignore[attr-defined, no-any-return]


def keep_json_key_order(app: Quart) -> None:
    app.json.sort_keys = False  # type: ignore[attr-defined]


# -- Quart-Trio -------------------------------------------------------------------------------
# The coroutine quart-trio runs a response's body in; its task's parent nursery is the
# request's, which web/file_response.py cancels to end a body that came up short.
HANDLE_REQUEST_CODE = TrioASGIHTTPConnection.handle_request.__code__


# -- hypercorn --------------------------------------------------------------------------------
_PATCHED = "_heaper_stops_idle_at_eof"


def stop_idle_timer_at_eof() -> None:
    """Free a connection's socket as soon as its client has gone (hypercorn 0.18.0, trio).

    ``TCPServer.run`` starts the keep-alive idle timer in the connection's task group, then
    reads. When the client closes (EOF) or the read fails, ``_read_data`` returns, but the task
    group still waits for the idle timer, which sleeps out ``keep_alive_timeout`` before the
    ``finally`` closes the socket. Every connect-and-leave (no request, or after an answer)
    pins one descriptor for that long, so a client looping connect/close exhausts the server's
    descriptors. The timer is there to close idle connections; once the peer is gone there is
    nothing left to time, so we stop it when reading ends. HttpGuard cannot do this: no ASGI
    call exists for such a connection.

    A patch of a private method is the last resort (the alternative is a fork of
    ``TCPServer``); this checks that TCPServer still keeps that idle timer and does nothing
    otherwise, and ``tests/test_harden_http.py`` pins the behaviour. Idempotent.
    """
    original: Callable[[Any], Awaitable[None]] = TCPServer._read_data
    if getattr(original, _PATCHED, False):
        return
    if "idle_task" not in TCPServer.__init__.__code__.co_names:
        log.warning("hypercorn's TCPServer has no idle_task: EOF workaround not applied")
        return

    async def _read_data(self: TCPServer) -> None:
        try:
            await original(self)
        finally:  # the peer is gone: nothing left for the timer to close
            with trio.CancelScope(shield=True):  # stop() takes a lock: see it through
                await self.idle_task.stop()
            end = getattr(self.idle_task, "end", None)  # web/idle_timer.py's one task
            if end is not None:
                end()

    setattr(_read_data, _PATCHED, True)
    TCPServer._read_data = _read_data  # type: ignore[method-assign]


_PINGS_PATCHED = "_heaper_pings_end_with_stream"


def end_pings_with_the_stream() -> None:
    """End a WebSocket's ping loop when its stream closes, not at the next ping (hypercorn
    0.18.0).

    ``WSStream._accept`` spawns ``_send_pings`` into the connection's task group: it pings,
    then sleeps ``websocket_ping_interval`` (20 s here) and only then sees ``closed``. The
    connection's task (``TCPServer.run``) waits for it, so a WebSocket closed at shutdown held
    the server for the whole ``graceful_timeout`` (5 s measured, whatever the socket did), and
    in normal running a closed WebSocket's task lived on for up to 20 s. Here the loop sleeps
    on an event that ``handle(StreamClosed)`` sets. Idempotent; HOOKS checks the names."""
    original_handle: Callable[[Any, Any], Awaitable[None]] = WSStream.handle
    if getattr(original_handle, _PINGS_PATCHED, False):
        return

    async def _send_pings(self: WSStream) -> None:
        gone = self._heaper_gone = trio.Event()  # type: ignore[attr-defined]
        while not self.closed:
            await self._send_wsproto_event(Ping())
            with trio.move_on_after(self.config.websocket_ping_interval or 0):
                await gone.wait()

    async def handle(self: WSStream, event: Any) -> None:
        if (
            type(event) is StreamRequest
            and event.raw_path.partition(b"?")[0] in _own_keepalive
            and self.config.websocket_ping_interval is not None
        ):
            self.config = _without_pings(self.config)
        try:
            await original_handle(self, event)
        finally:
            if self.closed and (gone := getattr(self, "_heaper_gone", None)) is not None:
                gone.set()

    setattr(handle, _PINGS_PATCHED, True)
    WSStream.handle = handle  # type: ignore[method-assign]
    WSStream._send_pings = _send_pings  # type: ignore[method-assign]


_QUIET = "_heaper_without_pings"
_own_keepalive: frozenset[bytes] = frozenset()


def _without_pings(config: Config) -> Config:
    """``config`` with no WebSocket ping interval: one shared copy per config."""
    quiet: Config | None = getattr(config, _QUIET, None)
    if quiet is None:
        quiet = copy.copy(config)
        quiet.websocket_ping_interval = None
        setattr(config, _QUIET, quiet)
    return quiet


def leave_pings_to_the_app(paths: Iterable[str]) -> None:
    """No hypercorn ping task for WebSockets on ``paths`` (hypercorn 0.18.0).

    ``WSStream._accept`` spawns ``_send_pings`` for every WebSocket when
    ``websocket_ping_interval`` is set: one more task, cancel scope and event per socket (about
    3 KiB of an idle socket's memory, issue 12), and hypercorn never checks the pongs anyway;
    the pings only make TCP notice a dead peer. A path whose protocol keeps its own time
    (``/ws``: an idle timeout, and Ping frames of its own to providers that answer them) needs
    none of it; other WebSockets (``/api/ws``) keep hypercorn's. The stream reads its config at
    accept, so such a stream gets a shared copy of the config without the interval when its
    request arrives. Needs :func:`end_pings_with_the_stream` (it wraps ``WSStream.handle``)."""
    global _own_keepalive
    _own_keepalive = frozenset(path.encode() for path in paths)


def pings_end_with_the_stream() -> bool:
    """Whether ``end_pings_with_the_stream`` is in force (for tests and diagnostics)."""
    return bool(getattr(WSStream.handle, _PINGS_PATCHED, False))


def idle_timer_stops_at_eof() -> bool:
    """Whether ``stop_idle_timer_at_eof`` is in force (for tests and diagnostics)."""
    return bool(getattr(TCPServer._read_data, _PATCHED, False))


class _DeflateIfEnabled(PerMessageDeflate):
    """permessage-deflate that a server accepts only while ``ws_compression`` is on.

    hypercorn 0.18.0 offers ``[PerMessageDeflate()]`` to every handshake
    (``ws_stream.Handshake.accept``), with no setting to leave it out, so each Node ``ws``
    client negotiates it and every frame is deflated again for every subscriber. Declining
    (``None``) leaves the extension disabled: wsproto then drops it from the connection, sends
    no ``Sec-WebSocket-Extensions`` header and refuses compressed frames (RSV1) from the peer."""

    enabled_in_process = False

    def accept(self, offer: str) -> bool | str | None:
        if not _DeflateIfEnabled.enabled_in_process:
            return None
        return super().accept(offer)


def set_ws_compression(on: bool) -> None:
    """Accept permessage-deflate in WebSocket handshakes only when ``on`` (idempotent).

    Process-wide, like hypercorn's handshake it patches: the last app created decides
    (``create_app`` calls this with its ``ws_compression`` setting; one server per process).
    Replaces the name ``Handshake.accept`` looks up (a module global of ws_stream), which the
    HOOKS entry checks it still uses; if it no longer does, the patch is not applied and the
    upstream default (always accept) stands, with a warning."""
    if "PerMessageDeflate" not in Handshake.accept.__code__.co_names:
        log.warning(
            "hypercorn's Handshake.accept no longer names PerMessageDeflate: "
            "ws_compression not applied"
        )
        return
    _DeflateIfEnabled.enabled_in_process = on
    setattr(ws_stream, "PerMessageDeflate", _DeflateIfEnabled)  # noqa: B010


def ws_compression_enabled() -> bool:
    """Whether handshakes accept permessage-deflate now (for tests and diagnostics)."""
    return ws_stream.PerMessageDeflate is not _DeflateIfEnabled or (
        _DeflateIfEnabled.enabled_in_process
    )


# -- below ASGI: the socket behind an accepted WebSocket ----------------------------------------
@dataclass(frozen=True, slots=True)
class WebSocketSocket:
    """hypercorn's objects behind one accepted WebSocket on HTTP/1.1 without TLS: enough to
    write data frames to its socket (web/ws_transport.py) under the lock hypercorn's own
    writes (pings, close frames, the handshake) take."""

    stream: WSStream
    socket: trio.socket.SocketType
    send_lock: trio.Semaphore  # swapped in for the server's trio.Lock (transferable_send_lock)

    def open(self) -> bool:
        """Whether data frames may still go out: hypercorn has neither closed the stream nor
        sent or received a close frame (after which it drops sends, and so do we)."""
        stream = self.stream
        return (
            not stream.closed
            and stream.state is ASGIWebsocketState.CONNECTED
            and stream.connection.state is ConnectionState.OPEN
        )


def websocket_socket(send: Callable[..., Awaitable[None]]) -> WebSocketSocket | None:
    """The socket behind an ASGI ``send`` hypercorn gave a WebSocket app, or None when the
    chain is not the one we know (another server, HTTP/2, TLS, an upgrade that renamed a
    link): the caller then keeps to ASGI messages, which always work. A middleware's wrapper
    (web/access_log.py) names the ``send`` it wraps as ``__wrapped__``."""
    while (inner := getattr(send, "__wrapped__", None)) is not None:
        send = inner
    stream = getattr(send, "__self__", None)
    if not isinstance(stream, WSStream):
        return None
    protocol = getattr(getattr(stream, "send", None), "__self__", None)
    if not isinstance(protocol, H11Protocol):
        return None
    server = getattr(getattr(protocol, "send", None), "__self__", None)
    if not isinstance(server, TCPServer):
        return None
    tcp = getattr(server, "stream", None)
    if not isinstance(tcp, trio.SocketStream):
        return None
    lock = transferable_send_lock(server)
    if lock is None:
        return None
    return WebSocketSocket(stream, tcp.socket, lock)


def transferable_send_lock(server: TCPServer) -> trio.Semaphore | None:
    """The connection's send lock as a ``trio.Semaphore(1)``, swapped in for hypercorn's
    ``trio.Lock`` (hypercorn 0.18.0), or None when it cannot be swapped now.

    The hub's fan-out writes a frame straight to the socket when nothing is queued before it
    (web/ws_transport.py ``write_now``); when the socket takes only part of it, the rest is
    the connection's writer task's to finish, under the same lock, so that no ping or close
    frame of hypercorn lands inside the frame. A ``trio.Lock`` refuses a release by another
    task than the one that took it; a semaphore of one does not, and is as fair (first come,
    first served, handed straight to the next waiter). hypercorn takes ``send_lock`` only in
    ``protocol_send``, through ``async with``, reading the attribute at each send, which is
    all a semaphore needs to stand in for it (the HOOKS entry and its test check that). The
    swap is made only while nobody holds or waits for the lock; otherwise the caller keeps to
    ASGI messages."""
    lock = getattr(server, "send_lock", None)
    if isinstance(lock, trio.Semaphore):
        return lock  # swapped already
    if not isinstance(lock, trio.Lock) or lock.locked() or lock.statistics().tasks_waiting:
        return None
    semaphore = trio.Semaphore(1, max_value=1)
    server.send_lock = semaphore  # type: ignore[assignment]
    return semaphore
