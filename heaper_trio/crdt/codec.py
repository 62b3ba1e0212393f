"""Checking what clients send before pycrdt sees it: base64, state vectors, updates that
decode exactly (pycrdt's quirks are listed in the package docstring)."""

from __future__ import annotations

import binascii

import pycrdt

from heaper_trio.errors import Unprocessable
from heaper_trio.protocol.split import decodes_exactly
from heaper_trio.protocol.wire import read_var_uint

EMPTY_STATE_VECTOR: bytes = b"\x00"
EMPTY_UPDATE: bytes = b"\x00\x00"  # no structs, no deletions


class InvalidUpdate(Unprocessable):
    """A Yjs payload (update, state vector, or its base64) that does not decode."""

    code = "invalid_update"


def _is_pycrdt_failure(exc: BaseException) -> bool:
    """Exceptions, and pyo3's ``PanicException`` (a BaseException, not importable by name)."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def decode_b64(text: str, what: str = "update") -> bytes:
    """Standard base64 with padding. Whitespace, URL-safe letters or missing padding are errors
    rather than guesses, so that a payload has one meaning. "" decodes to b""."""
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError
        raise InvalidUpdate(f"{what} is not padded base64: {exc}", code="invalid_base64") from exc


def encode_b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _parse_state_vector(sv: bytes) -> dict[int, int]:
    """Decode a v1 state vector (``varUint n, n x (client, clock)``) with nothing after it."""
    count, pos = read_var_uint(sv, 0)
    clocks: dict[int, int] = {}
    for _ in range(count):
        client, pos = read_var_uint(sv, pos)
        clocks[client], pos = read_var_uint(sv, pos)
    if pos != len(sv):
        raise ValueError("trailing bytes after the state vector")
    return clocks


def check_state_vector(sv: bytes) -> None:
    """Refuse all but a well-formed v1 state vector: yrs would read a prefix and ignore the
    rest, answering with a diff for some other state. b"\\x00" is empty; b"" is no vector."""
    try:
        _parse_state_vector(bytes(sv))
    except (ValueError, TypeError) as exc:
        raise InvalidUpdate(f"malformed state_vector: {exc}", code="invalid_state_vector") from exc


def check_update(update: bytes) -> None:
    """For what clients send (not stored logs): yrs applies a prefix and ignores the rest. Fast
    path: yrs writes it again byte for byte (as Yjs and yrs encode); else the exact walk."""
    try:
        if pycrdt.get_update(update, EMPTY_STATE_VECTOR) == update:
            return
    except BaseException as exc:
        if not _is_pycrdt_failure(exc):
            raise
    if not decodes_exactly(update):
        raise InvalidUpdate("not exactly one Yjs v1 update (malformed, or bytes after its end)")
