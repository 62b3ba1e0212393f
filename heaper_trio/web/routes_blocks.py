"""One block: metadata, relations both ways, apps, files, text and the document state."""

from __future__ import annotations

from typing import Any

from quart import Blueprint

from heaper_trio.records import User
from heaper_trio.web.json_sync import block_view_json, history_json
from heaper_trio.web.routes_heaps import ID
from heaper_trio.web.routing import route, services
from heaper_trio.web.schema import boolean, obj, open_obj, string

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


@route(
    bp,
    "POST",
    "/api/block_updates/{blockKey}",
    tag="blocks",
    errors=(404,),
    params={"blockKey": ID},
    summary="A block's update history (sequence, time, author, size) and merged Yjs state.",
    description="History older than the last compaction is folded into the snapshot; "
    "compacted_through says up to which sequence.",
    body=obj(),
    response=open_obj(
        success=boolean(), updates={"type": "array"}, state=string(), state_vector=string()
    ),
)
async def block_updates(user: User, body: dict[str, Any], blockKey: str) -> dict[str, Any]:
    return history_json(await services().heaps.history(user, blockKey))
