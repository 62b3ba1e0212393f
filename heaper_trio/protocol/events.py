"""Typed server events: JSON objects sent as Hocuspocus stateless messages on the ``events``
channel of ``/ws`` (and as text frames on the deprecated ``/api/ws``).

Every event has ``type``; the other fields per type are listed in ``EVENT_FIELDS`` and in
docs/protocol.md (a test checks that the two agree). Clients ignore types they do not know.
"""

from __future__ import annotations

import json
import re
from typing import Any

from heaper_trio.protocol.names import _ID as ID_PATTERN

EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    # block events, for heaps the client subscribed to
    "block.created": ("heap_id", "block_id", "sync_version", "updated_at", "seq"),
    "block.changed": ("heap_id", "block_id", "sync_version", "updated_at", "seq"),
    "block.deleted": ("heap_id", "block_id", "sync_version", "updated_at", "seq"),
    "block.restored": ("heap_id", "block_id", "sync_version", "updated_at", "seq"),
    "block.purged": ("heap_id", "block_id", "deleted_at"),
    "heap.deleted": ("heap_id",),
    # files and jobs of the user
    "file.ready": ("heap_id", "block_id", "file_hash", "file_id"),
    "scan.progress": (
        "scan_id",
        "heap_id",
        "path",
        "files_seen",
        "files_done",
        "bytes",
        "current_path",
        "files_per_s",
    ),
    "scan.done": ("scan_id", "heap_id", "path", "files_seen", "files_done", "bytes"),
    "scan.failed": ("scan_id", "heap_id", "path", "error"),
    "scan.aborted": ("scan_id", "heap_id", "path", "files_seen", "files_done", "bytes"),
    # answers on the events channel and per document
    "subscribed": ("heap_ids",),
    "unsubscribed": ("heap_ids",),
    "sync_version_mismatch": ("block_id", "sync_version"),
    "error": ("error", "message"),
}
_HEAP_ID = re.compile(ID_PATTERN)
# what a client sends on the events channel: {"type": <command>, "heap_ids": [...]}
COMMANDS = ("subscribe", "unsubscribe")
SCAN_EVENTS = frozenset(t for t in EVENT_FIELDS if t.startswith("scan."))
BLOCK_KINDS = {
    "created": "block.created",
    "changed": "block.changed",
    "deleted": "block.deleted",
    "restored": "block.restored",
    "purged": "block.purged",
    "heap_deleted": "heap.deleted",
}


def event(type_: str, **fields: Any) -> dict[str, Any]:
    """An event as a dict, checked against its declared fields (a typo is a bug, not data)."""
    expected = EVENT_FIELDS[type_]
    if set(fields) != set(expected):
        raise ValueError(f"{type_}: fields {sorted(fields)} != {sorted(expected)}")
    return {"type": type_, **fields}


def to_json(evt: dict[str, Any]) -> str:
    return json.dumps(evt, separators=(",", ":"), ensure_ascii=False)


def parse_command(payload: str) -> dict[str, Any] | None:
    """A client's stateless message on the events channel, or None if it is not one we know.

    ``{"type": "subscribe", "heap_ids": [...]}`` and ``{"type": "unsubscribe", ...}``.
    """
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("type") not in COMMANDS:
        return None
    ids = data.get("heap_ids")
    # ids as document names and the HTTP routes take them: a NUL would reach PostgreSQL
    if (
        not isinstance(ids, list)
        or len(ids) > 1000
        or not all(isinstance(i, str) and _HEAP_ID.fullmatch(i) for i in ids)
    ):
        return None
    return {"type": data["type"], "heap_ids": list(dict.fromkeys(ids))}
