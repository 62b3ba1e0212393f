"""Document names on ``/ws``: which block (or channel) a Hocuspocus address points at.

The contract names block documents ``<heap_id>:<block_id>:v<sync_version>`` or
``<heap_id>:<block_id>``. Since provider v4 an address may carry ``"\\0" + sessionId`` so one
socket can open the same document twice; the session part only routes replies.
``events`` is the per-user channel of typed server events (docs/protocol.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EVENTS_CHANNEL = "events"
_ID = r"[A-Za-z0-9_-]{1,128}"  # as the HTTP routes accept ids
_BLOCK = re.compile(rf"({_ID}):({_ID})(?::v([0-9]{{1,9}}))?")


@dataclass(frozen=True, slots=True)
class BlockName:
    heap_id: str
    block_id: str
    sync_version: int | None  # None: the client did not say (no version check)


@dataclass(frozen=True, slots=True)
class EventsName:
    """The per-user event channel."""


DocumentName = BlockName | EventsName


def split_address(address: str) -> tuple[str, str | None]:
    """``name\\0session`` -> (name, session); a plain name has no session."""
    name, sep, session = address.partition("\x00")
    return name, (session if sep else None)


def parse_document_name(address: str) -> DocumentName | None:
    """The document an address names, or None when it names nothing we serve."""
    name, _ = split_address(address)
    if name == EVENTS_CHANNEL:
        return EventsName()
    m = _BLOCK.fullmatch(name)
    if m is None:
        return None
    version = int(m.group(3)) if m.group(3) is not None else None
    return BlockName(m.group(1), m.group(2), version)
