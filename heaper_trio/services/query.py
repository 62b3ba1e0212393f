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
from dataclasses import dataclass
from typing import Any

from heaper_trio.errors import BadRequest
from heaper_trio.records import SORTS, BlockQuery, BlockRecord, User
from heaper_trio.services.documents import DocumentService
from heaper_trio.services.search_catchup import SearchCatchUp

MAX_TERMS = 16
# A cursor comes back from the client, so what it holds is checked like any input: a forged
# 2**64 reached the database as an overflow (a 500). Times are Unix ms, ids are block ids.
MAX_CURSOR_INT = 2**53 - 1
CURSOR_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class QueryRequest:
    """Filters, sort and cursor of ``POST /api/heap`` and ``/api/heap_count`` as the client
    gave them; ``parse_query`` checks them and turns them into a storage ``BlockQuery``."""

    types: tuple[str, ...] = ()
    tag: str | None = None
    text: str = ""  # full-text words
    unlinked: bool = False
    has_content: bool | None = None
    trash: bool = False
    sort: str = "updated"
    descending: bool | None = None  # None: the sort's own default (title A-Z, times newest)
    cursor: str | None = None


@dataclass(frozen=True)
class BlockPage:
    blocks: list[BlockRecord]
    has_more: bool
    next_cursor: str | None  # None on the last page


@dataclass(frozen=True)
class BlockCount:
    count: int
    by_type: dict[str, int]


def _sort_value(b: BlockRecord, sort: str) -> Any:
    return {"created": b.created_at, "updated": b.updated_at, "title": b.title}[sort]


def encode_cursor(sort: str, descending: bool, last: BlockRecord) -> str:
    raw = json.dumps([sort, descending, _sort_value(last, sort), last.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str, sort: str, descending: bool) -> tuple[Any, str]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        c_sort, c_desc, value, last_id = json.loads(raw)
        if (
            (c_sort, c_desc) != (sort, descending)
            or not isinstance(last_id, str)
            or not CURSOR_ID.fullmatch(last_id)
        ):
            raise ValueError
        if sort == "title":
            if not isinstance(value, str) or "\x00" in value:
                raise ValueError
            value.encode()  # a lone surrogate ("\ud800" in the JSON) cannot reach the database
        elif (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not 0 <= value <= MAX_CURSOR_INT
        ):
            raise ValueError
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise BadRequest(
            "cursor is not one this query handed out",
            code="invalid_cursor",
            details={"field": "body.cursor"},
        ) from None
    return value, last_id


def parse_query(request: QueryRequest) -> BlockQuery:
    terms = tuple(dict.fromkeys(w.lower() for w in WORD.findall(request.text)))
    if len(terms) > MAX_TERMS:
        raise BadRequest(
            f"at most {MAX_TERMS} search words",
            code="invalid_value",
            details={"field": "body.query"},
        )
    sort = request.sort
    if sort not in SORTS:  # the schema enforces it too; this keeps the service honest
        raise BadRequest(f"sort must be one of {SORTS}", code="invalid_value")
    descending = request.descending if request.descending is not None else sort != "title"
    after = decode_cursor(request.cursor, sort, descending) if request.cursor else None
    return BlockQuery(
        types=request.types,
        tag=request.tag,
        terms=terms,
        unlinked=request.unlinked,
        has_content=request.has_content,
        trash=request.trash,
        sort=sort,
        descending=descending,
        after=after,
    )


class QueryService:
    def __init__(self, documents: DocumentService, catchup: SearchCatchUp | None = None) -> None:
        self.documents = documents
        self.storage = documents.storage
        self.catchup = catchup  # live edits' search rows, written before a search reads them

    async def blocks(
        self, user: User, heap_id: str, request: QueryRequest, limit: int
    ) -> BlockPage:
        await self.documents.owned_heap(user, heap_id)
        q = parse_query(request)
        if q.terms and self.catchup is not None:
            await self.catchup.before_search()
        rows = await self.storage.query_blocks(heap_id, q, limit + 1)
        page, has_more = rows[:limit], len(rows) > limit
        return BlockPage(
            page, has_more, encode_cursor(q.sort, q.descending, page[-1]) if has_more else None
        )

    async def count(self, user: User, heap_id: str, request: QueryRequest) -> BlockCount:
        await self.documents.owned_heap(user, heap_id)
        q = parse_query(request)
        if q.terms and self.catchup is not None:
            await self.catchup.before_search()
        by_type = await self.storage.count_blocks(heap_id, q)
        return BlockCount(sum(by_type.values()), by_type)
