"""lib0 binary encoding (github.com/dmonad/lib0, ``encoding.js`` / ``decoding.js``), the layer
under every Hocuspocus frame and Yjs update.

Pure and strict: decoding untrusted bytes either succeeds or raises :class:`ProtocolError`,
never ``IndexError`` or ``UnicodeDecodeError``, so one ``except`` at the edge covers every
malformed frame. Unsigned varints stop at 53 bits (JavaScript's safe integers), as lib0 does,
and at 8 bytes, which is all 53 bits need: a longer run of continuation bytes is garbage.
"""

from __future__ import annotations

MAX_VAR_UINT = 2**53 - 1  # Number.MAX_SAFE_INTEGER; lib0 refuses larger varUints
_MAX_VAR_UINT_BYTES = 8  # ceil(53 / 7)


class ProtocolError(ValueError):
    """Bytes that are not a well-formed message. The message is short and safe to log."""


def read_var_uint(data: bytes, pos: int) -> tuple[int, int]:
    """lib0 ``readVarUint`` at ``pos``: (value, next position). LEB128, little-endian groups of
    7 bits; the high bit says another byte follows. The one varUint reader of the package
    (frames, the Yjs update walker in ``split.py``, state vectors in ``crdt/``): one, two and
    three bytes, nearly every varUint of an update, take no loop.
    """
    try:
        byte = data[pos]
        if byte < 0x80:
            return byte, pos + 1
        second = data[pos + 1]
        if second < 0x80:
            return (byte & 0x7F) | (second << 7), pos + 2
        third = data[pos + 2]
        if third < 0x80:
            return (byte & 0x7F) | (second & 0x7F) << 7 | third << 14, pos + 3
    except IndexError:
        raise ProtocolError("unexpected end of data in a varUint") from None
    value = shift = 0
    end = min(len(data), pos + _MAX_VAR_UINT_BYTES)
    while pos < end:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if value > MAX_VAR_UINT:
                raise ProtocolError("varUint exceeds 53 bits")
            return value, pos
        shift += 7
    if end < len(data):
        raise ProtocolError("varUint exceeds 53 bits")
    raise ProtocolError("unexpected end of data in a varUint")


class Decoder:
    """Reads lib0 values from one immutable buffer; ``pos`` is the next byte to read."""

    __slots__ = ("_data", "pos")

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self.pos = 0

    def read_var_uint(self) -> int:
        value, self.pos = read_var_uint(self._data, self.pos)
        return value

    def read_uint8(self) -> int:
        pos = self.pos
        if pos >= len(self._data):
            raise ProtocolError("unexpected end of data")
        self.pos = pos + 1
        return self._data[pos]

    def read_bytes(self, length: int) -> bytes:
        pos, end = self.pos, self.pos + length
        if end > len(self._data):
            raise ProtocolError(f"{length} bytes announced, {len(self._data) - pos} left")
        self.pos = end
        return self._data[pos:end]

    def read_var_bytes(self) -> bytes:
        """lib0 ``readVarUint8Array``: a varUint length, then that many bytes."""
        return self.read_bytes(self.read_var_uint())

    def read_var_string(self) -> str:
        """lib0 ``readVarString``: UTF-8 bytes with a varUint length. Strict: lib0's
        ``TextDecoder`` would put U+FFFD in place of invalid bytes, which gives one string two
        encodings; no honest encoder writes them.
        """
        raw = self.read_var_bytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"invalid UTF-8 in a string at byte {exc.start}") from None

    def at_end(self) -> bool:
        return self.pos >= len(self._data)

    def rest(self) -> bytes:
        """Everything not yet read (and consumes it)."""
        out = self._data[self.pos :]
        self.pos = len(self._data)
        return out

    def expect_end(self, what: str) -> None:
        """Refuse trailing bytes: a frame with more than its message is not that message."""
        if self.pos != len(self._data):
            raise ProtocolError(f"{len(self._data) - self.pos} trailing bytes after {what}")


def var_uint(n: int) -> bytes:
    """lib0 ``writeVarUint`` of one number, for one-off encoding."""
    if n < 0x80:
        if n < 0:
            raise ValueError(f"varUint of a negative number: {n}")
        return bytes((n,))
    if n > MAX_VAR_UINT:
        raise ValueError(f"varUint above 2**53 - 1: {n}")
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def var_bytes(data: bytes) -> bytes:
    """lib0 ``writeVarUint8Array``: length, then the bytes."""
    return var_uint(len(data)) + data


def var_string(text: str) -> bytes:
    """lib0 ``writeVarString``. Lone surrogates (a Python str may hold them) become U+FFFD, as
    JavaScript's ``TextEncoder`` writes them, rather than failing at send time.
    """
    try:
        raw = text.encode()
    except UnicodeEncodeError:  # pairs join into one code point; lone halves become U+FFFD
        raw = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace").encode()
    return var_uint(len(raw)) + raw


class Encoder:
    """Accumulates lib0 values; :meth:`to_bytes` returns them as one buffer."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def write_var_uint(self, n: int) -> Encoder:
        self._buf += var_uint(n)
        return self

    def write_uint8(self, n: int) -> Encoder:
        self._buf.append(n)  # ValueError outside 0..255
        return self

    def write_bytes(self, data: bytes) -> Encoder:
        self._buf += data
        return self

    def write_var_bytes(self, data: bytes) -> Encoder:
        self._buf += var_uint(len(data))
        self._buf += data
        return self

    def write_var_string(self, text: str) -> Encoder:
        self._buf += var_string(text)
        return self

    def to_bytes(self) -> bytes:
        return bytes(self._buf)
