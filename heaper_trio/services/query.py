"""Heap contents: filters, full-text search, sorting and cursor pagination.

A cursor carries the sort, direction and the (sort value, id) of the last row seen, so a page
boundary never splits or repeats rows even when many blocks share a sort value; a cursor from
another sort or direction is refused rather than misread.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from heaper_trio.errors import BadRequest
from heaper_trio.services.documents import DocumentService
from heaper_trio.records import BlockQuery, BlockRecord, SORTS, User

MAX_TERMS = 16
# A cursor comes back from the client, so what it holds is checked like any input: a forged
# 2**64 reached the database as an overflow (a 500). Times are Unix ms, ids are block ids.
MAX_CURSOR_INT = 2**53 - 1
CURSOR_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
WORD = re.compile(r"\w+", re.UNICODE)


def block_json(b: BlockRecord) -> dict[str, Any]:
    return {
        "id": b.id, "block_id": b.id, "heap_id": b.heap_id, "type": b.type, "title": b.title,
        "text": b.text, "created_at": b.created_at, "created_by": b.created_by,
        "updated_at": b.updated_at, "deleted_at": b.deleted_at,
        "sync_version": b.sync_version, "relations": b.relations, "files": b.files,
        "apps": b.apps, "size": b.size,
    }


def _sort_value(b: BlockRecord, sort: str) -> Any:
    return {"created": b.created_at, "updated": b.updated_at, "title": b.title}[sort]


def encode_cursor(sort: str, descending: bool, last: BlockRecord) -> str:
    raw = json.dumps([sort, descending, _sort_value(last, sort), last.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str, sort: str, descending: bool) -> tuple[Any, str]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        c_sort, c_desc, value, last_id = json.loads(raw)
        kind = str if sort == "title" else int
        if (c_sort, c_desc) != (sort, descending) or not isinstance(value, kind) \
                or isinstance(value, bool) or not isinstance(last_id, str) \
                or not CURSOR_ID.fullmatch(last_id) \
                or (kind is int and not 0 <= value <= MAX_CURSOR_INT) \
                or (kind is str and "\x00" in value):
            raise ValueError
        if kind is str:
            value.encode()  # a lone surrogate ("\ud800" in the JSON) cannot reach the database
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise BadRequest("cursor is not one this query handed out", code="invalid_cursor",
                         details={"field": "body.cursor"}) from None
    return value, last_id


def parse_query(body: dict[str, Any]) -> BlockQuery:
    types = body.get("type") or ()
    if isinstance(types, str):
        types = (types,)
    terms = tuple(dict.fromkeys(w.lower() for w in WORD.findall(body.get("query") or "")))
    if len(terms) > MAX_TERMS:
        raise BadRequest(f"at most {MAX_TERMS} search words", code="invalid_value",
                         details={"field": "body.query"})
    sort = body.get("sort", "updated")
    if sort not in SORTS:  # the schema enforces it too; this keeps the service honest
        raise BadRequest(f"sort must be one of {SORTS}", code="invalid_value")
    descending = body.get("order", "desc" if sort != "title" else "asc") == "desc"
    after = decode_cursor(body["cursor"], sort, descending) if body.get("cursor") else None
    return BlockQuery(
        types=tuple(types), tag=body.get("tag"), terms=terms,
        unlinked=bool(body.get("unlinked")), has_content=body.get("has_content"),
        trash=bool(body.get("trash", body.get("in_trash", False))),
        sort=sort, descending=descending, after=after,
    )


class QueryService:
    def __init__(self, documents: DocumentService) -> None:
        self.documents = documents
        self.storage = documents.storage

    async def blocks(self, user: User, heap_id: str, body: dict[str, Any], limit: int
                     ) -> dict[str, Any]:
        await self.documents.owned_heap(user, heap_id)
        q = parse_query(body)
        rows = await self.storage.query_blocks(heap_id, q, limit + 1)
        page, has_more = rows[:limit], len(rows) > limit
        return {
            "success": True,
            "blocks": [block_json(b) for b in page],
            "has_more": has_more,
            "next_cursor": encode_cursor(q.sort, q.descending, page[-1]) if has_more else None,
        }

    async def count(self, user: User, heap_id: str, body: dict[str, Any]) -> dict[str, Any]:
        await self.documents.owned_heap(user, heap_id)
        by_type = await self.storage.count_blocks(heap_id, parse_query(body))
        return {"success": True, "count": sum(by_type.values()), "by_type": by_type}
