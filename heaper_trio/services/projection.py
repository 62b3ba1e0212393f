"""What storage indexes of a block, read from its document: the projection (title, text,
relations, files, meta) with strings PostgreSQL cannot hold removed, and the file hashes a
block holds. Shared by HTTP pushes, live edits and scans."""

import math
import re
from typing import Any

from heaper_trio import crdt
from heaper_trio.records import BlockProjection
from heaper_trio.records.text_segments import Segments, Text, lazy, raw_text


def storable(value: Any) -> Any:
    """JSON both engines store alike: no NUL in strings (PostgreSQL TEXT/JSONB refuse it),
    no NaN or infinity (JSONB refuses them). The document itself keeps whatever it holds."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {storable(str(k)): storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable(v) for v in value]
    return value


def storable_text(text: Text) -> Text:
    """``storable`` for a text that may be in segments: those that know they hold no NUL are
    handed on as they are, so a big text is neither joined nor scanned here."""
    if isinstance(text, Segments) and not text.nul:
        return text
    return storable(str(text))


def projection_of(doc: crdt.BlockDocument) -> BlockProjection:
    p = doc.project()
    ids = lambda xs: tuple(x for x in xs if "\x00" not in x)  # noqa: E731
    return BlockProjection(
        type=storable(p.type),
        title=storable(p.title),
        text=lazy(storable_text(raw_text(p))),
        relations=storable(p.relations),
        files=storable(p.files),
        apps=storable(p.apps),
        deleted_at=p.deleted_at,
        permanently_deleted_at=p.permanently_deleted_at,
        tags=ids(p.tags),
        mentions=ids(p.mentions),
        links=ids(p.links),
        file_hashes=file_hashes(p.files),
    )


_HASH = re.compile(r"[0-9a-f]{64}")


def file_hashes(files: dict[str, Any]) -> tuple[str, ...]:
    """Content hashes of a block's ``files_v0`` entries: the entry's ``hash`` field, else
    the key's ``<hash>:<size>`` prefix (lowercase hex SHA-256 only)."""
    out = set()
    for key, value in files.items():
        candidate = value.get("hash") if isinstance(value, dict) else None
        if not (isinstance(candidate, str) and _HASH.fullmatch(candidate.lower())):
            candidate = str(key).split(":", 1)[0]
        candidate = candidate.lower()
        if _HASH.fullmatch(candidate):
            out.add(candidate)
    return tuple(sorted(out))
