"""heaper_trio.protocol.wire and .messages: lib0 varints, Hocuspocus frames, awareness payloads.

The invariant under test is h11's: decoding any bytes either gives a message or raises
ProtocolError, never another exception. Golden frames are written out by hand from the
provider's source (``@hocuspocus/provider`` OutgoingMessages) and cross-checked with pycrdt's
own y-protocols encoder where it has one.
"""

from __future__ import annotations

import json

import pycrdt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Text

from heaper_trio.protocol.messages import (
    Authenticated,
    AuthToken,
    Awareness,
    AwarenessEntry,
    Close,
    Message,
    PermissionDenied,
    Ping,
    Pong,
    QueryAwareness,
    Stateless,
    SyncStatus,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    TokenRequest,
    decode_awareness,
    decode_client_frame,
    decode_server_frame,
    encode,
    encode_awareness,
    encode_client_close,
)
from heaper_trio.protocol.wire import (
    MAX_VAR_UINT,
    Decoder,
    Encoder,
    ProtocolError,
    var_bytes,
    var_string,
    var_uint,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies -----------------------------------------------------------------------------

names = st.text(max_size=30)
addresses = names | st.builds(lambda n, s: f"{n}\0{s}", names, st.text(max_size=20))
blobs = st.binary(max_size=200)
texts = st.text(max_size=60)
replies = st.booleans()

sync_messages = st.one_of(
    st.builds(SyncStep1, addresses, blobs, replies),
    st.builds(SyncStep2, addresses, blobs, replies),
    st.builds(SyncUpdate, addresses, blobs, replies),
)
shared_messages = st.one_of(
    sync_messages,
    st.builds(Awareness, addresses, blobs),
    st.builds(QueryAwareness, addresses),
    st.builds(Stateless, addresses, texts),
    st.just(Ping()),
    st.just(Pong()),
)
client_messages = shared_messages | st.builds(
    AuthToken, addresses, texts, st.none() | st.text(max_size=10)
)
server_messages = shared_messages | st.one_of(
    st.builds(Authenticated, addresses, st.sampled_from(["read-write", "readonly"])),
    st.builds(PermissionDenied, addresses, texts),
    st.builds(TokenRequest, addresses),
    st.builds(Close, addresses, texts),
    st.builds(SyncStatus, addresses, st.booleans()),
)


def mutate(frame: bytes, how: int, where: int, byte: int) -> bytes:
    """A damaged copy of a valid frame: truncated, one byte changed, or a byte added."""
    at = where % (len(frame) + 1)
    if how == 0:
        return frame[:at]
    if how == 1 and frame:
        at %= len(frame)
        return frame[:at] + bytes((byte,)) + frame[at + 1 :]
    return frame[:at] + bytes((byte,)) + frame[at:]


def decodes_or_refuses(decode: object, data: bytes) -> Message | None:
    try:
        return decode(data)  # type: ignore[operator, no-any-return]
    except ProtocolError:
        return None


# --- lib0 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "8001"),
        (300, "ac02"),
        (16383, "ff7f"),
        (16384, "808001"),
        (2**32, "8080808010"),
        (MAX_VAR_UINT, "ffffffffffffff0f"),
    ],
)
def test_var_uint_edges(value: int, encoded: str) -> None:
    assert var_uint(value).hex() == encoded
    assert Encoder().write_var_uint(value).to_bytes().hex() == encoded
    d = Decoder(bytes.fromhex(encoded))
    assert d.read_var_uint() == value
    assert d.at_end()


@pytest.mark.parametrize(
    "data",
    [
        "",  # nothing
        "80",  # continuation, then the end
        "ffffffff",
        "8080808080808010",  # 2**53: one past the limit
        "ffffffffffffff7f",  # 2**56 - 1
        "808080808080808000",  # nine bytes, even if the value is 0
    ],
)
def test_var_uint_refused(data: str) -> None:
    with pytest.raises(ProtocolError):
        Decoder(bytes.fromhex(data)).read_var_uint()


def test_var_uint_encoder_refuses_out_of_range() -> None:
    for bad in (-1, MAX_VAR_UINT + 1):
        with pytest.raises(ValueError):
            var_uint(bad)


@FAST
@given(st.integers(0, MAX_VAR_UINT), st.binary(max_size=50), st.text(max_size=50))
def test_lib0_round_trip(n: int, blob: bytes, text: str) -> None:
    e = Encoder().write_var_uint(n).write_var_bytes(blob).write_var_string(text)
    data = e.write_uint8(7).write_bytes(b"xy").to_bytes()
    assert data == var_uint(n) + var_bytes(blob) + var_string(text) + b"\x07xy"
    d = Decoder(data)
    assert (d.read_var_uint(), d.read_var_bytes(), d.read_var_string()) == (n, blob, text)
    assert d.read_uint8() == 7
    assert d.pos == len(data) - 2
    assert d.rest() == b"xy"
    assert d.at_end()


def test_decoder_failures_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError):
        Decoder(b"").read_uint8()
    with pytest.raises(ProtocolError):
        Decoder(b"\x05abc").read_var_bytes()  # length past the end
    with pytest.raises(ProtocolError):
        Decoder(b"\x02\xc3\x28").read_var_string()  # invalid UTF-8
    with pytest.raises(ProtocolError):
        Decoder(b"\x03\xed\xa0\x80").read_var_string()  # an encoded surrogate


def test_lone_surrogates_are_written_as_replacement_characters() -> None:
    # As JavaScript's TextEncoder does; a surrogate pair spelled in halves joins up.
    assert var_string("a\ud83d") == b"\x04a\xef\xbf\xbd"
    assert var_string("\ud83d\ude00") == var_string("\U0001f600")


# --- golden frames -------------------------------------------------------------------------


def test_golden_provider_auth_frame() -> None:
    # HocuspocusProvider for "h:b": writeVarString(name), Auth, Token, token, version
    frame = bytes.fromhex("03683a62 0200 017405342e382e30")
    assert decode_client_frame(frame) == AuthToken("h:b", "t", "4.8.0")
    assert encode(AuthToken("h:b", "t", "4.8.0")) == frame
    # Providers before 2.x send no version
    assert decode_client_frame(frame[:-6]) == AuthToken("h:b", "t", None)
    assert encode(AuthToken("h:b", "t")) == frame[:-6]


def test_golden_provider_sync_step1() -> None:
    # An empty document's state vector is b"\x00": name, Sync, step 1, varByteArray([0])
    frame = bytes.fromhex("03683a62 0000 0100")
    assert decode_client_frame(frame) == SyncStep1("h:b", b"\x00")
    assert encode(SyncStep1("h:b", b"\x00")) == frame
    assert decode_client_frame(b"\x03h:b\x04\x00\x01\x00") == SyncStep1("h:b", b"\x00", True)


def test_sync_body_is_y_protocols() -> None:
    """After the address, a Hocuspocus sync frame is a y-websocket sync message."""
    doc: Doc = Doc()
    doc.get("t", type=Text).insert(0, "hello")
    address = "h:b\0session-1"
    frame = encode(SyncStep1(address, doc.get_state()))
    assert frame == var_string(address) + pycrdt.create_sync_message(doc)
    update = doc.get_update()
    assert encode(SyncUpdate(address, update)) == var_string(address) + (
        pycrdt.create_update_message(update)
    )


def test_golden_server_frames() -> None:
    head = bytes.fromhex("03683a62")
    cases: list[tuple[Message, str]] = [
        (Authenticated("h:b", "read-write"), "0202 0a" + b"read-write".hex()),
        (Authenticated("h:b", "readonly"), "0202 08" + b"readonly".hex()),
        (PermissionDenied("h:b", "no"), "0201 026e6f"),
        (TokenRequest("h:b"), "0200"),
        (QueryAwareness("h:b"), "03"),
        (Stateless("h:b", "{}"), "05 027b7d"),
        (Close("h:b", "bye"), "07 03627965"),
        (SyncStatus("h:b", True), "0801"),
        (SyncStatus("h:b", False), "0800"),
        (SyncStep2("h:b", b"\x00\x00", reply=True), "0401 020000"),
        (Awareness("h:b", b"\x00"), "01 0100"),
    ]
    for message, body in cases:
        frame = head + bytes.fromhex(body)
        assert encode(message) == frame, message
        assert decode_server_frame(frame) == message
    assert encode(Ping()) == b"\x09" and encode(Pong()) == b"\x0a"
    assert decode_server_frame(b"\x09") == Ping() and decode_client_frame(b"\x0a") == Pong()


def test_client_close_has_no_body() -> None:
    assert encode_client_close("h:b") == b"\x03h:b\x07"
    assert decode_client_frame(b"\x03h:b\x07") == Close("h:b")
    with pytest.raises(ProtocolError):
        decode_client_frame(encode(Close("h:b", "")))  # the server form, with its reason


@pytest.mark.parametrize(
    "frame",
    [
        b"",  # empty
        b"\x03h:b",  # no type
        b"\x03h:b\x06\x02{}",  # BroadcastStateless is for servers only
        b"\x03h:b\x0b",  # unknown type
        b"\x03h:b\x09",  # ping is a frame of its own, not an addressed message
        b"\x03h:b\x08\x01",  # SyncStatus comes from servers
        b"\x03h:b\x02\x02\x0aread-write",  # Authenticated, likewise
        b"\x03h:b\x02\x01\x02no",  # PermissionDenied
        b"\x03h:b\x02\x00",  # a token request
        b"\x03h:b\x00\x03\x00",  # unknown sync sub-type
        b"\x03h:b\x00\x00\x02\x00",  # step 1 cut short
        b"\x03h:b\x00\x00\x01\x00\x00",  # trailing byte after a sync message
        b"\x03h:b\x03\x00",  # trailing byte after query awareness
        b"\x03h:b\x07\x00",  # a client's close has no reason
        b"\x03h:b\x02\x00\x01t\x014\x00",  # trailing byte after the provider version
        b"\x03h:b\x02\x00\x02t",  # token cut short
        b"\x02\xff\xfe\x00\x00\x00",  # address is not UTF-8
        b"\x09\x09",  # ping with trailing byte
    ],
)
def test_client_frames_refused(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_client_frame(frame)


@pytest.mark.parametrize(
    "frame",
    [
        b"\x03h:b\x02\x02\x05admin",  # unknown scope
        b"\x03h:b\x02\x03",  # unknown auth sub-type
        b"\x03h:b\x08\x02",  # sync status is 0 or 1
        b"\x03h:b\x07",  # a server's close carries a reason
        b"\x03h:b\x06\x02{}",
        b"\x03h:b\x02\x00\x01t",  # a token request has no token
    ],
)
def test_server_frames_refused(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_server_frame(frame)


# --- properties ----------------------------------------------------------------------------


@FAST
@given(client_messages)
def test_client_round_trip(message: Message) -> None:
    assert decode_client_frame(encode(message)) == message


@FAST
@given(server_messages)
def test_server_round_trip(message: Message) -> None:
    assert decode_server_frame(encode(message)) == message


@FAST
@given(st.binary(max_size=64))
def test_any_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    decodes_or_refuses(decode_client_frame, data)
    decodes_or_refuses(decode_server_frame, data)


@FAST
@given(client_messages | server_messages, st.integers(0, 2), st.integers(0), st.integers(0, 255))
def test_damaged_frames_decode_or_raise_protocol_error(
    message: Message, how: int, where: int, byte: int
) -> None:
    frame = mutate(encode(message), how, where, byte)
    for decode in (decode_client_frame, decode_server_frame):
        decoded = decodes_or_refuses(decode, frame)
        if decoded is not None:  # then it means one thing (lib0 takes overlong varints)
            client_close = isinstance(decoded, Close) and decode is decode_client_frame
            again = encode_client_close(decoded.address) if client_close else encode(decoded)
            assert decode(again) == decoded


@FAST
@given(sync_messages | st.builds(Stateless, addresses, texts), st.integers(1, 20))
def test_truncated_frames_are_refused(message: Message, cut: int) -> None:
    frame = encode(message)[:-cut]
    if frame not in (b"\x09", b"\x0a"):  # a 9-character address cut to its length is a Ping
        with pytest.raises(ProtocolError):
            decode_client_frame(frame)


# --- awareness -----------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=10,
)
entries = st.builds(
    AwarenessEntry,
    st.integers(0, 2**32 - 1),
    st.integers(0, MAX_VAR_UINT),
    json_values.map(json.dumps),
)


def test_golden_awareness() -> None:
    payload = bytes.fromhex("02 0102 07") + b'{"a":1}' + bytes.fromhex("05 0304") + b"null"
    assert decode_awareness(payload) == [
        AwarenessEntry(1, 2, '{"a":1}'),
        AwarenessEntry(5, 3, "null"),
    ]
    assert encode_awareness(decode_awareness(payload)) == payload


def test_awareness_from_pycrdt() -> None:
    doc: Doc = Doc()
    awareness = pycrdt.Awareness(doc)
    awareness.set_local_state({"user": {"name": "Ann", "color": "#f00"}, "cursor": None})
    payload = awareness.encode_awareness_update([doc.client_id])
    (entry,) = decode_awareness(payload)
    assert entry.client_id == doc.client_id
    assert json.loads(entry.state) == {"user": {"name": "Ann", "color": "#f00"}, "cursor": None}
    assert encode_awareness([entry]) == payload


@FAST
@given(st.lists(entries, max_size=5))
def test_awareness_round_trip(items: list[AwarenessEntry]) -> None:
    assert decode_awareness(encode_awareness(items)) == items


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x01\x01\x01",  # state missing
        b"\x01\x01\x01\x03{a}",  # not JSON
        b"\x01\x01\x01\x03NaN",  # Python's json would take it; JSON.parse does not
        b"\x01\x01\x01\x08Infinity",
        b"\x01\x01\x01\x04null\x00",  # trailing byte
        b"\x05\x01\x01\x04null",  # fewer entries than announced
        b"\x01\x01\x01\x02\xc3\x28",  # not UTF-8
        b"\x01\x01\x01\x82\x01" + b"[" * 130,  # unbalanced, and deep
    ],
)
def test_awareness_refused(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_awareness(payload)


@FAST
@given(st.binary(max_size=64))
def test_awareness_any_bytes(payload: bytes) -> None:
    try:
        decode_awareness(payload)
    except ProtocolError:
        pass
