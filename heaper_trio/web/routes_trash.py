"""The trash of a heap: list, empty (for good), restore (a CRDT edit of meta_v0.deleted_at)."""

from __future__ import annotations

from typing import Any

from quart import Blueprint

from heaper_trio.records import BlockRecord, User
from heaper_trio.services.sync_types import EditStatus
from heaper_trio.web.routes_heaps import ID
from heaper_trio.web.routing import route, services
from heaper_trio.web.schema import boolean, obj, open_obj

bp = Blueprint("trash", __name__)

IDS = {"type": "array", "items": ID, "maxItems": 10_000}


def trashed_json(b: BlockRecord) -> dict[str, Any]:
    return {
        "block_id": b.id,
        "id": b.id,
        "type": b.type,
        "title": b.title,
        "deleted_at": b.deleted_at,
        "updated_at": b.updated_at,
        "sync_version": b.sync_version,
    }


@route(
    bp,
    "GET",
    "/api/trash/{heapId}",
    tag="trash",
    errors=(403,),
    params={"heapId": ID},
    summary="Blocks in the heap's trash, most recently trashed first.",
    response=open_obj(success=boolean(), blocks={"type": "array"}),
)
async def list_trash(user: User, heapId: str) -> dict[str, Any]:
    blocks = [trashed_json(b) for b in await services().heaps.trash(user, heapId)]
    return {"success": True, "blocks": blocks, "count": len(blocks)}


@route(
    bp,
    "DELETE",
    "/api/trash/{heapId}",
    tag="trash",
    errors=(403,),
    params={"heapId": ID},
    summary="Empty the trash for good: documents, history and relations.",
    description="Without a body every trashed block goes; with block_ids only those of "
    "them that are in the trash. Removed blocks appear in delta's deleted_blocks. An edit "
    "that sets meta_v0.permanently_deleted_at removes its block the same way.",
    body=obj({}, {"block_ids": IDS}),
    response=open_obj(success=boolean(), deleted={"type": "array"}),
)
async def empty_trash(user: User, heapId: str, body: dict[str, Any]) -> dict[str, Any]:
    deleted = await services().heaps.empty_trash(user, heapId, body.get("block_ids"))
    return {"success": True, "deleted": deleted, "count": len(deleted)}


@route(
    bp,
    "POST",
    "/api/trash/{heapId}/restore",
    tag="trash",
    errors=(403,),
    params={"heapId": ID},
    summary="Restore blocks from the trash (a server-side CRDT edit, synced like any other).",
    description="Per block: ok, unchanged (was not in the trash), not_found, conflict.",
    body=obj({}, {"block_ids": IDS, "block_id": ID}),
    response=open_obj(success=boolean(), blocks={"type": "array"}, restored={"type": "array"}),
)
async def restore(user: User, heapId: str, body: dict[str, Any]) -> dict[str, Any]:
    ids = list(body.get("block_ids") or []) + ([body["block_id"]] if "block_id" in body else [])
    results = await services().heaps.restore(user, heapId, ids)
    return {
        "success": True,
        "blocks": [{"block_id": r.block_id, "status": r.status.value} for r in results],
        "restored": [r.block_id for r in results if r.status is EditStatus.ok],
    }
