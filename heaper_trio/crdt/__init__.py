"""Yjs block documents: apply, diff, state vectors, and projecting a block into plain columns.

The only module that imports pycrdt, so that its quirks (checked on 0.14.13) are known in one
place rather than relearned at every call site:

- ``Doc.get_update()`` omits *pending* data (structs and deletions whose predecessors are
  missing); yrs does not always integrate pending structs once the gap is filled; a struct
  after a clock gap is integrated if its origins are known, but the state vector stops there.
- ``apply_update`` refuses bytes that do not decode, untouched, but can fail halfway through
  integrating and keep the first part; it ignores trailing bytes, as Yjs does (check_update).
- A root read as another type than a client wrote is cast, not refused (a Text reads as {}).
- Numbers come back as floats; ``str(XmlText)`` shows marks as tags; ``Map.to_py()`` raises on
  nested XML; ints above 2**53 are written as BigInt; a Rust panic is a ``BaseException``.
"""

from heaper_trio.crdt.codec import (
    EMPTY_STATE_VECTOR,
    EMPTY_UPDATE,
    InvalidUpdate,
    _parse_state_vector,
    check_state_vector,
    check_update,
    decode_b64,
    encode_b64,
)
from heaper_trio.crdt.document import (
    BlockDocument,
    merge_updates,
    new_block_document,
    new_server_block,
)
from heaper_trio.crdt.projection import Projection

__all__ = [
    "EMPTY_STATE_VECTOR",
    "EMPTY_UPDATE",
    "BlockDocument",
    "InvalidUpdate",
    "Projection",
    "_parse_state_vector",
    "check_state_vector",
    "check_update",
    "decode_b64",
    "encode_b64",
    "merge_updates",
    "new_block_document",
    "new_server_block",
]
