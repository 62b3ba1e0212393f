"""Routes the Heaper app uses beside the published API (their shapes are not published; these
are designed in the style of the rest, docs/api.md): server-side edits of a block's
``files_v0`` by operation, and the app's "upload finished" notice. The edits themselves are in
``services/app_edits.py``."""

from __future__ import annotations

from typing import Any

from quart import Blueprint

from heaper_trio.errors import BadRequest
from heaper_trio.records import User
from heaper_trio.services.app_edits import AppEdits, FileEdit
from heaper_trio.services.upload_rules import check_hash
from heaper_trio.web.routes_heaps import ID
from heaper_trio.web.routes_uploads import HASH
from heaper_trio.web.routing import read_json_body, route, services
from heaper_trio.web.schema import boolean, integer, obj, open_obj, string, validate

bp = Blueprint("app_routes", __name__)

THUMB_NAME = string(pattern=r"^[A-Za-z0-9_-]{1,32}$", description="1-32 chars of [A-Za-z0-9_-]")
FILE_NAME = string(minLength=1, maxLength=1024, description="the file's name in this block")
WHERE = {"heap_id": ID, "workspace_id": ID}  # optional: when given, the block's heap
THUMBNAIL = obj(
    {"key": THUMB_NAME},
    {
        "type": THUMB_NAME,
        "size": THUMB_NAME,
        "width": integer(),
        "height": integer(),
        "mime_type": string(maxLength=255),
    },
)
OPERATIONS: dict[str, dict[str, Any]] = {
    "add_file": obj(
        {"block_id": ID, "operation": string(enum=["add_file"]), "file_hash": HASH},
        {**WHERE, "name": FILE_NAME},
    ),
    "add_thumbnails": obj(
        {
            "block_id": ID,
            "operation": string(enum=["add_thumbnails"]),
            "file_hash": HASH,
            "thumbnails": {"type": "array", "items": THUMBNAIL, "minItems": 1, "maxItems": 32},
        },
        WHERE,
    ),
}
# Documented as one of the operations' (closed) schemas; read by the handler, not the route
# wrapper, so that the operation is looked at first: an unknown one is its own stable code.
UPDATE = {"anyOf": list(OPERATIONS.values())}
EDITED = open_obj(
    success=boolean(),
    status=string(enum=["ok", "unchanged"]),
    operation=string(),
    block_id=string(),
    heap_id=string(),
    file_hash=string(),
    file_id=string(),
    size=integer(),
    thumbnails={"type": "object"},
)


def _heap(body: dict[str, Any]) -> str | None:
    heap_id = body.get("heap_id") or body.get("workspace_id")
    return str(heap_id) if heap_id else None


def edit_json(done: FileEdit) -> dict[str, Any]:
    out: dict[str, Any] = {
        "success": True,
        "status": done.status,
        "block_id": done.block_id,
        "heap_id": done.heap_id,
        "file_hash": done.file_hash,
        "file_id": done.file_id,
        "size": done.size,
    }
    if done.thumbnails is not None:
        out["thumbnails"] = dict(done.thumbnails)
    return out


def _edits() -> AppEdits:
    return AppEdits(services().files)


@route(
    bp,
    "POST",
    "/api/ydoc/update",
    tag="files",
    errors=(400, 404, 409, 413),
    content={"application/json": UPDATE},
    summary="A server-side CRDT edit of a block's files_v0, by operation.",
    description="`add_file` `{block_id, file_hash, name?}` records a file you may read (a "
    "block of yours holds it and you proved its bytes) in the block, as an upload does; "
    "`add_thumbnails` `{block_id, file_hash, thumbnails: [{key, type?, size?, width?, height?, "
    "mime_type?}]}` records thumbnails on the block's entry of that file (its `thumbnails` "
    "map, by key). Both take `heap_id` (or `workspace_id`) optionally; `status` is `ok`, or "
    "`unchanged` when the document already said so. An unknown operation is a 400 "
    "unknown_operation; another user's (or no) block a 404 block_not_found.",
    response=EDITED,
)
async def ydoc_update(user: User) -> dict[str, Any]:
    body = await read_json_body(allow_empty=False)
    validate(body, {"type": "object", "required": ["operation"]})
    operation = body["operation"]
    validate(operation, string(), "body.operation")
    schema = OPERATIONS.get(operation)
    if schema is None:
        raise BadRequest(
            f"operation must be one of {sorted(OPERATIONS)}",
            code="unknown_operation",
            details={"field": "body.operation", "operations": sorted(OPERATIONS)},
        )
    validate(body, schema)
    file_hash = check_hash(body["file_hash"])
    if operation == "add_file":
        done = await _edits().add_file(
            user, body["block_id"], file_hash, body.get("name"), _heap(body)
        )
    else:
        done = await _edits().add_thumbnails(
            user, body["block_id"], file_hash, body["thumbnails"], _heap(body)
        )
    return {**edit_json(done), "operation": operation}


@route(
    bp,
    "POST",
    "/sync/upload-complete",
    tag="files",
    errors=(404, 409),
    body=obj({"block_id": ID, "file_hash": HASH}, {**WHERE, "name": FILE_NAME}),
    summary="The app's notice that an upload finished: the file recorded in the block.",
    description="The same files_v0 edit as `add_file`, keyed by block and file hash, for a "
    "file whose bytes the server holds and you may read; idempotent (nothing is written when "
    "the upload recorded it already). Answers like upload complete: `{status: complete, "
    "block_id, file_hash, file_id, size}`.",
    response=open_obj(
        success=boolean(),
        status=string(enum=["complete"]),
        block_id=string(),
        file_hash=string(),
        file_id=string(),
        size=integer(),
    ),
)
async def upload_complete(user: User, body: dict[str, Any]) -> dict[str, Any]:
    done = await _edits().upload_complete(
        user, body["block_id"], check_hash(body["file_hash"]), body.get("name"), _heap(body)
    )
    return {
        "success": True,
        "status": "complete",
        "block_id": done.block_id,
        "file_hash": done.file_hash,
        "file_id": done.file_id,
        "size": done.size,
        "changed": done.status == "ok",
    }
