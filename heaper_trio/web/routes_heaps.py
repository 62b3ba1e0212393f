"""Heaps (workspaces): create and list. A heap's name is its root index block's title."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, request

from heaper_trio.errors import BadRequest
from heaper_trio.records import BlockRecord, Heap, User
from heaper_trio.services.query import QueryRequest
from heaper_trio.web.json_sync import delta_json
from heaper_trio.web.routing import RESERVED_IDS, route, services
from heaper_trio.web.schema import boolean, integer, obj, open_obj, parse_int, string, validate

bp = Blueprint("heaps", __name__)

ID = string(pattern=r"^[A-Za-z0-9_-]{1,128}$", description="1-128 chars of [A-Za-z0-9_-]")
# A heap id is never a route word: DELETE /api/heap/{id} shares its path with POST
# /api/heap/add, so a heap called "add" could be deleted by a request meant for another route.
HEAP_ID = {
    **ID,
    "not": {"enum": list(RESERVED_IDS)},
    "description": "1-128 chars of [A-Za-z0-9_-], not " + ", ".join(RESERVED_IDS),
}
# Bodies that name a heap take it as heap_id or workspace_id (the same thing); one is required.
ONE_HEAP = {"anyOf": [{"required": ["heap_id"]}, {"required": ["workspace_id"]}]}
HEAP = open_obj(
    id=string(),
    heap_id=string(),
    name=string(),
    root_block_id=string(),
    created_at={"type": "integer"},
    updated_at={"type": "integer"},
)


def heap_json(h: Heap) -> dict[str, Any]:
    return {
        "id": h.id,
        "heap_id": h.id,
        "workspace_id": h.id,
        "name": h.name,
        "root_block_id": h.root_block_id,
        "created_at": h.created_at,
        "updated_at": h.clock,
    }


@route(
    bp,
    "POST",
    "/api/heap/add",
    tag="heaps",
    errors=(403,),
    summary="Create a heap and its root index block.",
    description="`id` may be chosen by the client; an id already in use answers 403 "
    "heap_exists (whoever owns it).",
    body=obj({"name": string(minLength=1, maxLength=500)}, {"id": HEAP_ID}),
    response=open_obj(success=boolean(), id=string(), heap=HEAP),
)
async def add_heap(user: User, body: dict[str, Any]) -> dict[str, Any]:
    heap = await services().documents.create_heap(user, body["name"], body.get("id"))
    return {"success": True, "id": heap.id, "heap": heap_json(heap)}


async def _list(user: User) -> dict[str, Any]:
    heaps = [heap_json(h) for h in await services().storage.list_heaps(user.id)]
    return {"success": True, "heaps": heaps, "workspaces": heaps}


LIST = open_obj(
    success=boolean(),
    heaps={"type": "array", "items": HEAP},
    workspaces={"type": "array", "items": HEAP},
)


@route(
    bp, "POST", "/api/heaps", tag="heaps", summary="The caller's heaps.", body=obj(), response=LIST
)
async def list_heaps(user: User, body: dict[str, Any]) -> dict[str, Any]:
    return await _list(user)


@route(
    bp,
    "POST",
    "/api/workspaces",
    tag="heaps",
    body=obj(),
    response=LIST,
    summary="The caller's heaps (the same list as /api/heaps, by their other name).",
)
async def list_workspaces(user: User, body: dict[str, Any]) -> dict[str, Any]:
    return await _list(user)


@route(
    bp,
    "DELETE",
    "/api/heap/{id}",
    tag="heaps",
    errors=(403, 405),
    params={"id": HEAP_ID},
    summary="Delete a heap: its blocks, their history and relations.",
    response=open_obj(success=boolean(), deleted=boolean()),
)
async def delete_heap(user: User, id: str) -> dict[str, Any]:
    await services().heaps.delete(user, id)
    return {"success": True, "deleted": True, "id": id}


@route(
    bp,
    "GET",
    "/api/heap/stats/{id}",
    tag="heaps",
    errors=(403,),
    params={"id": ID},
    summary="Block counts by type, trash count, files and bytes, last change.",
    response=open_obj(
        success=boolean(),
        blocks=integer(),
        by_type={"type": "object"},
        trash=integer(),
        files=integer(),
        file_bytes=integer(),
        last_change=integer(),
    ),
)
async def heap_stats(user: User, id: str) -> dict[str, Any]:
    stats = await services().heaps.stats(user, id)
    return {"success": True, "heap_id": stats.heap_id, "name": stats.name, **stats.counts}


CHANGED_FIELDS = {
    "heap_id": ID,
    "workspace_id": ID,
    "marker": integer(),
    "since": integer(),
    "limit": integer(minimum=1, maximum=1000),
}
CHANGED = open_obj(
    success=boolean(),
    changed_blocks={"type": "array"},
    deleted_blocks={"type": "array"},
    next_marker=integer(),
    has_more=boolean(),
)


@route(
    bp,
    "POST",
    "/api/heap/changed_blocks",
    tag="heaps",
    errors=(403,),
    summary="Blocks changed in a heap since a marker, and the next marker.",
    description="The same feed as GET /api/sync/delta: pass next_marker back as marker "
    "until has_more is false.",
    body=obj({}, CHANGED_FIELDS, **ONE_HEAP),
    response=CHANGED,
)
async def changed_blocks(user: User, body: dict[str, Any]) -> dict[str, Any]:
    return await _changed(user, body)


@route(
    bp,
    "GET",
    "/api/heap/changed_blocks",
    tag="heaps",
    errors=(403,),
    query={k: v for k, v in CHANGED_FIELDS.items() if k != "workspace_id"},
    required_query=("heap_id",),
    summary="The POST form's feed, its fields as query parameters.",
    description="heap_id (or workspace_id), marker (or since), limit: validated as the JSON "
    "fields are (an integer that is not ASCII digits, negative or past 2^53-1 is a 400 "
    "invalid_value; an unknown parameter is a 400 unknown_field).",
    response=CHANGED,
)
async def changed_blocks_get(user: User) -> dict[str, Any]:
    return await _changed(user, query_body(obj({}, CHANGED_FIELDS, **ONE_HEAP)))


async def _changed(user: User, body: dict[str, Any]) -> dict[str, Any]:
    marker = body.get("marker", body.get("since", 0))
    page = await services().heaps.changed_blocks(
        user, _heap_of(body), marker, body.get("limit", 1000)
    )
    return {**delta_json(page), "marker": marker, "next_marker": page.server_time}


FILTERS = {
    "heap_id": ID,
    "workspace_id": ID,
    "type": {
        "type": ["string", "array"],
        "items": string(maxLength=100),
        "maxItems": 50,
        "maxLength": 100,
    },
    "tag": ID,
    "query": string(maxLength=1000, description="full-text words; all must match, as prefixes"),
    "unlinked": boolean(description="only blocks with no tag (the root block excluded)"),
    "has_content": boolean(),
    "trash": boolean(description="only blocks in the trash (default: trashed ones excluded)"),
    "in_trash": boolean(description="the same as trash"),
}
QUERY = obj(
    {},
    {
        **FILTERS,
        "sort": string(enum=["created", "updated", "title"]),
        "order": string(enum=["asc", "desc"]),
        "limit": integer(minimum=1, maximum=500),
        # a title-sorted cursor holds the last title, which may be long
        "cursor": string(maxLength=65536),
    },
    **ONE_HEAP,
)


CONTENTS = open_obj(
    success=boolean(),
    blocks={"type": "array"},
    has_more=boolean(),
    next_cursor={"type": ["string", "null"]},
)
REPEATABLE = ("type",)
_TRUE, _FALSE = ("true", "1"), ("false", "0")


def query_body(schema: dict[str, Any]) -> dict[str, Any]:
    """The query string as the JSON body ``schema`` describes, validated as that body is:
    integers as ``parse_int`` reads them, booleans true/false (1/0), ``type`` repeatable."""
    fields: dict[str, Any] = schema["properties"]
    body: dict[str, Any] = {}
    for name, values in request.args.lists():
        where = f"query.{name}"
        sub = fields.get(name)
        if sub is None:
            raise BadRequest(
                f"query has an unknown parameter: {name}",
                code="unknown_field",
                details={"field": where},
            )
        if len(values) > 1 and name not in REPEATABLE:
            raise BadRequest(
                f"{where} is given more than once", code="invalid_value", details={"field": where}
            )
        body[name] = values if len(values) > 1 else _query_value(values[0], sub, where)
    validate(body, schema, "query")
    return body


def _query_value(text: str, schema: dict[str, Any], where: str) -> Any:
    kind = schema.get("type")
    if kind == "integer":
        return parse_int(text, schema, where)
    if kind == "boolean":
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise BadRequest(
            f"{where} must be true or false", code="invalid_value", details={"field": where}
        )
    return text


# The GET form: the same fields, with bounds that keep a URL (percent-encoded, up to 12 bytes
# a character) under the server's 16 KiB request head; a longer query or cursor takes the POST.
GET_QUERY = obj(
    {},
    {
        **QUERY["properties"],
        "type": {**FILTERS["type"], "items": string(maxLength=50), "maxItems": 10, "maxLength": 50},
        "query": {**FILTERS["query"], "maxLength": 200},
        "cursor": string(maxLength=2048),
    },
    **ONE_HEAP,
)


def block_json(b: BlockRecord) -> dict[str, Any]:
    return {
        "id": b.id,
        "block_id": b.id,
        "heap_id": b.heap_id,
        "type": b.type,
        "title": b.title,
        "text": b.text,
        "created_at": b.created_at,
        "created_by": b.created_by,
        "updated_at": b.updated_at,
        "deleted_at": b.deleted_at,
        "sync_version": b.sync_version,
        "relations": b.relations,
        "files": b.files,
        "apps": b.apps,
        "size": b.size,
    }


def query_request(body: dict[str, Any]) -> QueryRequest:
    """The filters of a heap query body (``trash`` and ``in_trash`` are one filter)."""
    types = body.get("type") or ()
    return QueryRequest(
        types=(types,) if isinstance(types, str) else tuple(types),
        tag=body.get("tag"),
        text=body.get("query") or "",
        unlinked=bool(body.get("unlinked")),
        has_content=body.get("has_content"),
        trash=bool(body.get("trash", body.get("in_trash", False))),
        sort=body.get("sort", "updated"),
        descending=body["order"] == "desc" if "order" in body else None,
        cursor=body.get("cursor") or None,
    )


def _heap_of(body: dict[str, Any]) -> str:
    heap_id = body.get("heap_id") or body.get("workspace_id")
    if not heap_id:
        raise BadRequest(
            "heap_id is required", code="missing_field", details={"field": "body.heap_id"}
        )
    return str(heap_id)


@route(
    bp,
    "POST",
    "/api/heap",
    tag="heaps",
    errors=(403,),
    summary="Heap contents: filter, search, sort, paginate.",
    description="Filters: type, tag (nested tags included), query (full text over title "
    "and text), unlinked, has_content, trash. Sort by created, updated (default, newest "
    "first) or title (A-Z). Pass next_cursor back as cursor for the next page.",
    body=QUERY,
    response=CONTENTS,
)
async def heap_contents(user: User, body: dict[str, Any]) -> dict[str, Any]:
    return await _contents(user, body)


@route(
    bp,
    "GET",
    "/api/heap",
    tag="heaps",
    errors=(403,),
    query={k: v for k, v in GET_QUERY["properties"].items() if k != "workspace_id"},
    required_query=("heap_id",),
    summary="Heap contents (the POST form's filters as query parameters), newest first.",
    description="The POST body's fields as query parameters: heap_id (or workspace_id), "
    "type (repeat it for several), tag, query, unlinked, has_content, trash (in_trash), sort, "
    "order, limit, cursor. Booleans are true/false (or 1/0). The default order is the POST "
    "form's: updated, newest first. Values are validated as the JSON fields are; an unknown "
    "parameter is a 400 unknown_field, a parameter given twice (other than type) a 400 "
    "invalid_value. Bounds are tighter than the POST body's, so that a URL stays under the "
    "16 KiB request head: query 200 characters, type 10 of 50, cursor 2048 (else POST).",
    response=CONTENTS,
)
async def heap_contents_get(user: User) -> dict[str, Any]:
    return await _contents(user, query_body(GET_QUERY))


async def _contents(user: User, body: dict[str, Any]) -> dict[str, Any]:
    page = await services().query.blocks(
        user, _heap_of(body), query_request(body), body.get("limit", 100)
    )
    return {
        "success": True,
        "blocks": [block_json(b) for b in page.blocks],
        "has_more": page.has_more,
        "next_cursor": page.next_cursor,
    }


@route(
    bp,
    "POST",
    "/api/heap_count",
    tag="heaps",
    errors=(403,),
    summary="How many blocks match the same filters as POST /api/heap, by type.",
    body=obj({}, FILTERS, **ONE_HEAP),
    response=open_obj(success=boolean(), count=integer(), by_type={"type": "object"}),
)
async def heap_count(user: User, body: dict[str, Any]) -> dict[str, Any]:
    counted = await services().query.count(user, _heap_of(body), query_request(body))
    return {"success": True, "count": counted.count, "by_type": counted.by_type}
