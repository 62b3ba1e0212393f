"""The Hocuspocus wire protocol (@hocuspocus/provider and server, v2/v3) as typed messages.

A frame is ``varString(address) • varUint(type) • body``, where the address is a document name
or ``name + "\\0" + sessionId`` (the provider's multiplexing). Ping and Pong are the exception:
the whole frame is the single byte 9 or 10. One codec per direction, so that a server never
accepts what only a server may say (an ``Authenticated``, a ``BroadcastStateless``) and a client
library can reuse the other half. Decoding is strict: a frame is exactly one message, anything
else is a :class:`~heaper_trio.protocol.wire.ProtocolError`.

The Awareness payload (y-protocols ``awareness.js``) has its own codec here, because the server
reads it to learn which client ids a connection owns, and rewrites it to drop them on leave.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

from heaper_trio.protocol.wire import (
    Decoder,
    Encoder,
    ProtocolError,
    var_bytes,
    var_string,
    var_uint,
)

# Message types (hocuspocus packages/server/src/types.ts, MessageType)
SYNC, AWARENESS, AUTH, QUERY_AWARENESS, SYNC_REPLY = 0, 1, 2, 3, 4
STATELESS, BROADCAST_STATELESS, CLOSE, SYNC_STATUS, PING, PONG = 5, 6, 7, 8, 9, 10
# y-protocols sync.js sub-types
STEP1, STEP2, UPDATE = 0, 1, 2
# Auth sub-types (hocuspocus packages/common/src/auth.ts)
AUTH_TOKEN, PERMISSION_DENIED, AUTHENTICATED = 0, 1, 2
SCOPES = ("read-write", "readonly")


@dataclass(frozen=True, slots=True)
class SyncStep1:
    """A state vector: "send me what I lack". ``reply`` marks a SyncReply frame (type 4),
    which asks the receiver not to answer with a step 1 of its own.
    """

    address: str
    state_vector: bytes
    reply: bool = False


@dataclass(frozen=True, slots=True)
class SyncStep2:
    """The answer to a step 1: an update holding what the asker lacked."""

    address: str
    update: bytes
    reply: bool = False


@dataclass(frozen=True, slots=True)
class SyncUpdate:
    address: str
    update: bytes
    reply: bool = False


@dataclass(frozen=True, slots=True)
class Awareness:
    """A y-protocols awareness update, kept as bytes; :func:`decode_awareness` reads it."""

    address: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class AuthToken:
    """Client to server: the token, and since provider 2.x its version (None when absent)."""

    address: str
    token: str
    provider_version: str | None = None


@dataclass(frozen=True, slots=True)
class Authenticated:
    address: str
    scope: str  # "read-write" or "readonly"


@dataclass(frozen=True, slots=True)
class PermissionDenied:
    address: str
    reason: str


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """Server to client: an Auth frame with sub-type 0 and no token asks for the token again."""

    address: str


@dataclass(frozen=True, slots=True)
class QueryAwareness:
    address: str


@dataclass(frozen=True, slots=True)
class Stateless:
    address: str
    payload: str


@dataclass(frozen=True, slots=True)
class Close:
    """Client to server it has no body (``reason`` is ""); server to client it has a reason."""

    address: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SyncStatus:
    """Server to client: whether the last update from this client was applied."""

    address: str
    applied: bool


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Pong:
    pass


Message: TypeAlias = (
    SyncStep1
    | SyncStep2
    | SyncUpdate
    | Awareness
    | AuthToken
    | Authenticated
    | PermissionDenied
    | TokenRequest
    | QueryAwareness
    | Stateless
    | Close
    | SyncStatus
    | Ping
    | Pong
)

_PING, _PONG = bytes((PING,)), bytes((PONG,))


def _decode_sync(d: Decoder, address: str, reply: bool) -> Message:
    subtype = d.read_var_uint()
    payload = d.read_var_bytes()
    d.expect_end("a sync message")
    if subtype == STEP1:
        return SyncStep1(address, payload, reply)
    if subtype == STEP2:
        return SyncStep2(address, payload, reply)
    if subtype == UPDATE:
        return SyncUpdate(address, payload, reply)
    raise ProtocolError(f"unknown sync message type {subtype}")


def _decode_common(d: Decoder, address: str, kind: int) -> Message | None:
    """The message types both directions share, or None for the caller to handle."""
    if kind in (SYNC, SYNC_REPLY):
        return _decode_sync(d, address, kind == SYNC_REPLY)
    if kind == AWARENESS:
        payload = d.read_var_bytes()
        d.expect_end("an awareness message")
        return Awareness(address, payload)
    if kind == QUERY_AWARENESS:
        d.expect_end("a query-awareness message")
        return QueryAwareness(address)
    if kind == STATELESS:
        text = d.read_var_string()
        d.expect_end("a stateless message")
        return Stateless(address, text)
    return None


def _header(data: bytes) -> tuple[Decoder, str, int]:
    if not data:
        raise ProtocolError("empty frame")
    d = Decoder(data)
    address = d.read_var_string()
    return d, address, d.read_var_uint()


def decode_client_frame(data: bytes) -> Message:
    """One frame as a client may send it; ProtocolError for anything else, including the
    server-only forms and BroadcastStateless (which only servers exchange among themselves).
    """
    if len(data) == 1 and data in (_PING, _PONG):
        return Ping() if data == _PING else Pong()
    d, address, kind = _header(data)
    message = _decode_common(d, address, kind)
    if message is not None:
        return message
    if kind == AUTH:
        if d.read_var_uint() != AUTH_TOKEN:
            raise ProtocolError("a client may only send a token in an auth message")
        token = d.read_var_string()
        version = None if d.at_end() else d.read_var_string()
        d.expect_end("an auth message")
        return AuthToken(address, token, version)
    if kind == CLOSE:
        d.expect_end("a close message")
        return Close(address)
    raise ProtocolError(f"message type {kind} is not one a client may send")


def decode_server_frame(data: bytes) -> Message:
    """One frame as a server sends it (for tests and Python clients)."""
    if len(data) == 1 and data in (_PING, _PONG):
        return Ping() if data == _PING else Pong()
    d, address, kind = _header(data)
    message = _decode_common(d, address, kind)
    if message is not None:
        return message
    if kind == AUTH:
        subtype = d.read_var_uint()
        if subtype == AUTH_TOKEN:
            message = TokenRequest(address)
        elif subtype == PERMISSION_DENIED:
            message = PermissionDenied(address, d.read_var_string())
        elif subtype == AUTHENTICATED:
            scope = d.read_var_string()
            if scope not in SCOPES:
                raise ProtocolError(f"unknown scope {scope[:40]!r}")
            message = Authenticated(address, scope)
        else:
            raise ProtocolError(f"unknown auth message type {subtype}")
        d.expect_end("an auth message")
        return message
    if kind == CLOSE:
        reason = d.read_var_string()
        d.expect_end("a close message")
        return Close(address, reason)
    if kind == SYNC_STATUS:
        applied = d.read_var_uint()
        if applied > 1:
            raise ProtocolError(f"sync status {applied} is neither 0 nor 1")
        d.expect_end("a sync status message")
        return SyncStatus(address, applied == 1)
    raise ProtocolError(f"message type {kind} is not one a server sends")


def _sync(subtype: int) -> Callable[[Any], bytes]:
    def encode_sync(m: Any) -> bytes:
        payload = m.state_vector if subtype == STEP1 else m.update
        kind = SYNC_REPLY if m.reply else SYNC
        return var_string(m.address) + bytes((kind, subtype)) + var_bytes(payload)

    return encode_sync


def _auth_token(m: AuthToken) -> bytes:
    e = Encoder().write_var_string(m.address).write_bytes(bytes((AUTH, AUTH_TOKEN)))
    e.write_var_string(m.token)
    if m.provider_version is not None:
        e.write_var_string(m.provider_version)
    return e.to_bytes()


def _head(address: str, kind: int) -> bytes:
    return var_string(address) + bytes((kind,))


_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    SyncStep1: _sync(STEP1),
    SyncStep2: _sync(STEP2),
    SyncUpdate: _sync(UPDATE),
    Awareness: lambda m: _head(m.address, AWARENESS) + var_bytes(m.payload),
    AuthToken: _auth_token,
    Authenticated: lambda m: _head(m.address, AUTH) + b"\x02" + var_string(m.scope),
    PermissionDenied: lambda m: _head(m.address, AUTH) + b"\x01" + var_string(m.reason),
    TokenRequest: lambda m: _head(m.address, AUTH) + b"\x00",
    QueryAwareness: lambda m: _head(m.address, QUERY_AWARENESS),
    Stateless: lambda m: _head(m.address, STATELESS) + var_string(m.payload),
    Close: lambda m: _head(m.address, CLOSE) + var_string(m.reason),
    SyncStatus: lambda m: _head(m.address, SYNC_STATUS) + (b"\x01" if m.applied else b"\x00"),
    Ping: lambda m: _PING,
    Pong: lambda m: _PONG,
}


def encode(message: Message) -> bytes:
    """The frame for ``message``, as the side it belongs to writes it. ``Close`` is written as
    a server does (with its reason); a client's close is :func:`encode_client_close`.
    """
    return _ENCODERS[type(message)](message)


def encode_client_close(address: str) -> bytes:
    """A client's Close: the header alone (the provider sends no reason)."""
    return _head(address, CLOSE)


# --- Awareness payload (y-protocols awareness.js, encodeAwarenessUpdate) -------------------


@dataclass(frozen=True, slots=True)
class AwarenessEntry:
    """One client's awareness state; ``state`` is the JSON text, "null" when it left."""

    client_id: int
    clock: int
    state: str


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json accepts NaN; JSON.parse does not


def decode_awareness(payload: bytes) -> list[AwarenessEntry]:
    """The entries of an awareness update. Each state must be valid JSON (checked, kept as
    text) so that a relayed update cannot break other clients' ``JSON.parse``.
    """
    d = Decoder(payload)
    count = d.read_var_uint()
    if count > len(payload):  # each entry takes at least 3 bytes; refuse before allocating
        raise ProtocolError(f"awareness update announces {count} entries")
    entries = []
    for _ in range(count):
        client_id = d.read_var_uint()
        clock = d.read_var_uint()
        state = d.read_var_string()
        try:
            json.loads(state, parse_constant=_refuse_constant)
        except (ValueError, RecursionError):
            raise ProtocolError(f"awareness state of client {client_id} is not JSON") from None
        entries.append(AwarenessEntry(client_id, clock, state))
    d.expect_end("an awareness update")
    return entries


def encode_awareness(entries: Iterable[AwarenessEntry]) -> bytes:
    entries = list(entries)
    parts = [var_uint(len(entries))]
    for entry in entries:
        parts += (var_uint(entry.client_id), var_uint(entry.clock), var_string(entry.state))
    return b"".join(parts)
