"""One block: metadata, relations both ways, apps, files, text and the document state; its
history (list, a version, restore) and compaction on request."""

from __future__ import annotations

from typing import Any

from quart import Blueprint

from heaper_trio import crdt
from heaper_trio.records import User
from heaper_trio.records.history import HistoryRow
from heaper_trio.services.history import MAX_LIMIT, HistoryPage
from heaper_trio.web.json_sync import block_view_json
from heaper_trio.web.routes_heaps import ID
from heaper_trio.web.routing import route, services
from heaper_trio.web.schema import boolean, integer, obj, open_obj, string

bp = Blueprint("blocks", __name__)


@route(
    bp,
    "POST",
    "/api/block/{blockKey}",
    tag="blocks",
    errors=(404,),
    params={"blockKey": ID},
    summary="A block with relations, apps, file metadata, text and its Yjs state.",
    description="Unknown blocks and blocks in other users' heaps both answer 404.",
    body=obj(),
    response=open_obj(
        success=boolean(),
        block={"type": "object"},
        relations={"type": "object"},
        apps={"type": "object"},
        files={"type": "object"},
        text=string(),
        state=string(),
        state_vector=string(),
    ),
)
async def get_block(user: User, body: dict[str, Any], blockKey: str) -> dict[str, Any]:
    return block_view_json(await services().documents.block(user, blockKey))


def history_row_json(r: HistoryRow) -> dict[str, Any]:
    out: dict[str, Any] = {
        "seq": r.seq,
        "created_at": r.created_at,
        "author_id": r.author_id,
        "size": r.size,
        "first_seq": r.first_seq,
        "kind": r.kind.value,
        "sync_version": r.sync_version,
    }
    if r.data is not None:
        out["data"] = crdt.encode_b64(r.data)
    return out


def history_page_json(page: HistoryPage) -> dict[str, Any]:
    return {
        "success": True,
        "block_id": page.block_id,
        "sync_version": page.sync_version,
        "last_seq": page.last_seq,
        "compacted_through": page.compacted_through,
        "updates": [history_row_json(r) for r in reversed(page.rows)],
        "has_more": page.next_before_seq is not None,
        "next_before_seq": page.next_before_seq,
        "state": crdt.encode_b64(page.state),
        "state_vector": crdt.encode_b64(page.state_vector),
    }


SEQ = integer(minimum=1)


@route(
    bp,
    "POST",
    "/api/block_updates/{blockKey}",
    tag="blocks",
    errors=(400, 404),
    params={"blockKey": ID},
    summary="A block's history, newest page first (sequence, time, author, size; bytes on "
    "request) and its merged Yjs state.",
    description="History outlives compaction (see History in docs/api.md). A page holds the "
    "`limit` (default 100, at most 1000) newest entries before `before_seq`, oldest first; "
    "`next_before_seq` asks for the page before it. `include_data` adds each entry's Yjs "
    "update (base64). compacted_through: the snapshot covers the entries up to it.",
    body=obj(
        optional={
            "before_seq": SEQ,
            "limit": integer(minimum=1, maximum=MAX_LIMIT),
            "include_data": boolean(),
        }
    ),
    response=open_obj(
        success=boolean(),
        updates={"type": "array"},
        has_more=boolean(),
        state=string(),
        state_vector=string(),
    ),
)
async def block_updates(user: User, body: dict[str, Any], blockKey: str) -> dict[str, Any]:
    page = await services().documents.history.page(
        user, blockKey, body.get("before_seq"), body.get("limit"), bool(body.get("include_data"))
    )
    return history_page_json(page)


@route(
    bp,
    "POST",
    "/api/block_version/{blockKey}",
    tag="blocks",
    errors=(400, 404, 410, 422),
    params={"blockKey": ID},
    summary="The block's document as of a point in its history: Yjs state, title and text.",
    description="Versions exist at the entries history keeps; the answer's `seq` is the kept "
    "point at or before the one asked for. 422 seq_out_of_range past the block's last change, "
    "410 version_gone when that history is no longer kept.",
    body=obj(required={"seq": SEQ}),
    response=open_obj(
        success=boolean(),
        block_id=string(),
        seq=integer(),
        state=string(),
        title=string(),
        text=string(),
        created_at=integer(),
    ),
)
async def block_version(user: User, body: dict[str, Any], blockKey: str) -> dict[str, Any]:
    v = await services().documents.history.version(user, blockKey, body["seq"])
    return {
        "success": True,
        "block_id": v.block_id,
        "seq": v.seq,
        "sync_version": v.sync_version,
        "state": crdt.encode_b64(v.state),
        "title": v.title,
        "text": v.text,
        "created_at": v.created_at,
    }


@route(
    bp,
    "POST",
    "/api/block_restore/{blockKey}",
    tag="blocks",
    errors=(400, 404, 409, 410, 422),
    params={"blockKey": ID},
    summary="Replace the block's document with its version as of `seq`; sync_version + 1.",
    description="Not a CRDT continuation: clients on the old sync_version get the full state "
    "on pull, version_mismatch on push and sync_version_mismatch live. The block keeps its "
    "trash state. The restore is itself an entry of the history.",
    body=obj(required={"seq": SEQ}),
    response=open_obj(success=boolean(), block_id=string(), sync_version=integer()),
)
async def block_restore(user: User, body: dict[str, Any], blockKey: str) -> dict[str, Any]:
    version = await services().documents.history.restore(user, blockKey, body["seq"])
    return {"success": True, "block_id": blockKey, "sync_version": version}


@route(
    bp,
    "POST",
    "/api/ydoc/compact",
    tag="blocks",
    errors=(404, 409),
    summary="Compact a block now: snapshot its document, move its update log to the history.",
    description="Nothing a client sees changes (no new change time, same sync_version); "
    "`compacted` counts the log entries moved (0 when there were none).",
    body=obj(required={"block_id": ID}),
    response=open_obj(success=boolean(), block_id=string(), compacted=integer()),
)
async def compact(user: User, body: dict[str, Any]) -> dict[str, Any]:
    moved = await services().documents.history.compact(user, body["block_id"])
    return {"success": True, "block_id": body["block_id"], "compacted": moved}
