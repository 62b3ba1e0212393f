"""Document names on ``/ws``: which block (or channel) a Hocuspocus address points at.

The contract names block documents ``<heap_id>:<block_id>:v<sync_version>`` or
``<heap_id>:<block_id>``. The Heaper app also names them ``block/<block_id>?workspaceId=<heap_id>``
(a URL-like form: parameters in any order, ``syncVersion=<N>`` optional and meaning what
``:v<N>`` means, other parameters ignored; no percent-decoding, since ids never need it). Without
a version it is the unversioned form: no version check. Since provider v4 an address may carry
``"\\0" + sessionId`` so one socket can open the same document twice; the session part only
routes replies.
``events`` is the per-user channel of typed server events (docs/protocol.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EVENTS_CHANNEL = "events"
_ID = r"[A-Za-z0-9_-]{1,128}"  # as the HTTP routes accept ids
_VERSION = r"[0-9]{1,9}"
_BLOCK = re.compile(rf"({_ID}):({_ID})(?::v({_VERSION}))?")
_APP_BLOCK = re.compile(rf"block/({_ID})\?(.*)", re.DOTALL)
_ID_VALUE = re.compile(_ID)
_VERSION_VALUE = re.compile(_VERSION)
APP_HEAP_PARAM = "workspaceId"
APP_VERSION_PARAM = "syncVersion"


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
        return _parse_app_name(name)
    version = int(m.group(3)) if m.group(3) is not None else None
    return BlockName(m.group(1), m.group(2), version)


def _parse_app_name(name: str) -> BlockName | None:
    """``block/<block_id>?workspaceId=<heap_id>[&syncVersion=<N>]``: each known parameter at
    most once and well-formed, a parameter without ``=`` refused, unknown ones ignored."""
    m = _APP_BLOCK.fullmatch(name)
    if m is None:
        return None
    known: dict[str, str] = {}
    for part in m.group(2).split("&"):
        key, sep, value = part.partition("=")
        if not sep:
            return None
        if key in (APP_HEAP_PARAM, APP_VERSION_PARAM):
            if key in known:
                return None
            known[key] = value
    heap_id = known.get(APP_HEAP_PARAM)
    if heap_id is None or not _ID_VALUE.fullmatch(heap_id):
        return None
    version = known.get(APP_VERSION_PARAM)
    if version is not None and not _VERSION_VALUE.fullmatch(version):
        return None
    return BlockName(heap_id, m.group(1), int(version) if version is not None else None)


def app_document_name(heap_id: str, block_id: str, sync_version: int | None = None) -> str:
    """The app's form of a block document's name (tests and clients build it here)."""
    version = f"&{APP_VERSION_PARAM}={sync_version}" if sync_version is not None else ""
    return f"block/{block_id}?{APP_HEAP_PARAM}={heap_id}{version}"
