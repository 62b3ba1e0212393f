"""A request body taken out of h11's receive buffer without copying it twice (h11 0.16.0).

h11's ``ReceiveBuffer.maybe_extract_at_most`` slices the bytes it hands out twice (once to see
whether there are any, once in ``_extract``) and then deletes them from the buffer: two copies
of every body byte, each into a newly allocated buffer. With body parts of up to 1 MiB
(``web/read_size.py``) that was two fresh 1 MiB buffers per part, page faults included, in the
server's main thread, on top of the copy into h11's buffer and hypercorn's ``bytes()``.

Here, when the caller takes everything the buffer holds (a body part: the usual case, as a
read rarely holds the next request too), the buffer itself is handed out and a new empty one
takes its place; otherwise, one slice (``_extract``), as upstream. The result is the same
either way: a new ``bytearray`` of the first ``count`` bytes, which the buffer no longer
holds, with the line searches reset. The names used are checked by ``tests/test_h11_reads.py``.
"""

from __future__ import annotations

from typing import Any

from h11._receivebuffer import ReceiveBuffer

_PATCHED = "_heaper_hands_the_buffer_over"


def maybe_extract_at_most(self: Any, count: int) -> bytearray | None:
    data: bytearray = self._data
    if not data or count <= 0:
        return None  # as upstream: its empty slice is falsy
    if count < len(data):
        return self._extract(count)  # type: ignore[no-any-return]
    self._data = bytearray()
    self._next_line_search = 0
    self._multiple_lines_search = 0
    return data


def hand_the_buffer_over() -> bool:
    """Patch ``ReceiveBuffer.maybe_extract_at_most`` as the module docstring says, while the
    buffer has the fields this relies on. Idempotent; False if not applied."""
    current = ReceiveBuffer.maybe_extract_at_most
    if getattr(current, _PATCHED, False):
        return True
    fields = ReceiveBuffer().__dict__
    if not {"_data", "_next_line_search", "_multiple_lines_search"} <= fields.keys():
        return False
    if not hasattr(ReceiveBuffer, "_extract"):
        return False
    setattr(maybe_extract_at_most, _PATCHED, True)
    maybe_extract_at_most.__wrapped__ = current  # type: ignore[attr-defined]
    ReceiveBuffer.maybe_extract_at_most = maybe_extract_at_most  # type: ignore[method-assign]
    return True


def buffer_handed_over() -> bool:
    return bool(getattr(ReceiveBuffer.maybe_extract_at_most, _PATCHED, False))
