"""WebSocket data frames as a server sends them (RFC 6455 5.2): unmasked, final, no extension.

The raw transport (``web/ws_transport.py``) writes these straight to the socket instead of
handing each message through hypercorn's wsproto connection. Fan-out hands the same ``bytes``
object to every subscriber of a document, so the encoded frame is cached by that object's
identity: one encoding per update, however many subscribers it reaches.
"""

from __future__ import annotations

from struct import pack

OP_TEXT = 0x1
OP_BINARY = 0x2
FIN = 0x80

CACHE_ENTRIES = 64  # distinct frames kept encoded (a fan-out burst reuses the newest few)
CACHE_MAX_PAYLOAD = 16 * 1024  # larger frames go out as header + payload, never copied


def header(opcode: int, length: int) -> bytes:
    """The frame header of an unmasked final frame carrying ``length`` payload bytes."""
    if length < 126:
        return bytes((FIN | opcode, length))
    if length < 65536:
        return pack("!BBH", FIN | opcode, 126, length)
    return pack("!BBQ", FIN | opcode, 127, length)


# id(payload) -> (payload, encoded frame). The payload is kept alive with its entry, so its id
# cannot be reused by another object while the entry exists.
_cache: dict[int, tuple[bytes, bytes]] = {}


def encode(message: bytes | str) -> list[bytes]:
    """The buffers of one frame, in order (one for a small message, header and payload for a
    large one: ``sendmsg`` writes them without joining them)."""
    if type(message) is bytes:
        hit = _cache.get(id(message))
        if hit is not None and hit[0] is message:
            return [hit[1]]
        n = len(message)
        if n > CACHE_MAX_PAYLOAD:
            return [header(OP_BINARY, n), message]
        frame = header(OP_BINARY, n) + message
        if len(_cache) >= CACHE_ENTRIES:
            _cache.clear()  # a burst's frames are used within a turn; older ones are done
        _cache[id(message)] = (message, frame)
        return [frame]
    if isinstance(message, str):
        data = message.encode()
        return [header(OP_TEXT, len(data)) + data]
    data = bytes(message)  # bytearray, memoryview: not shared, not cached
    return [header(OP_BINARY, len(data)), data]


def cached_frames() -> int:
    """How many encoded frames the cache holds (for tests)."""
    return len(_cache)
