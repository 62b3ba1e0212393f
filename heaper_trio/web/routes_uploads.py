"""Uploads: one-request (multipart) and resumable (init, chunks in any order, complete), and
upload status. The work is in ``services/files.py``; these parse and shape."""

from __future__ import annotations

import os
from typing import Any

from quart import Blueprint

from heaper_trio.errors import BadRequest, PayloadTooLarge
from heaper_trio.records import User
from heaper_trio.services import metrics
from heaper_trio.services.file_outcomes import UploadStatus
from heaper_trio.services.upload_rules import MAX_CHUNKS, MIN_CHUNK_BYTES, check_hash
from heaper_trio.web.json_files import upload_json
from heaper_trio.web.routing import current_request, limit_body, read_form, route, services
from heaper_trio.web.schema import boolean, integer, obj, open_obj, string

bp = Blueprint("uploads", __name__)

ANSWER = open_obj(
    success=boolean(), status=string(), block_id=string(), file_hash=string(), file_id=string()
)
PROGRESS = open_obj(
    success=boolean(),
    status=string(),
    size=integer(),
    chunk_size=integer(),
    total_chunks=integer(),
    received={"type": "array"},
    bytes_received=integer(),
)
HASH = string(pattern="^[0-9a-fA-F]{64}$", description="lowercase hex SHA-256 of the content")
# Path parameters, checked before the handler runs (with the codes these routes always gave).
PATH_ID = string(
    pattern=r"^[A-Za-z0-9_-]{1,128}$",
    description="1-128 chars of [A-Za-z0-9_-]",
    **{"x-error": "invalid_field"},
)
PATH_HASH = {**HASH, "x-error": "bad_hash"}
PATH_IDS = {"heap_id": PATH_ID, "block_id": PATH_ID}
PATH_FILE = {**PATH_IDS, "hash": PATH_HASH}
# ASCII digits only: "²".isdigit() is True, and int("²") raises.
CHUNK_INDEX = string(
    pattern="^[0-9]{1,9}$", description="the chunk number, from 0", **{"x-error": "bad_chunk_index"}
)
UPLOAD_FORM = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": string(format="binary", description="the content"),
        "hash": HASH,
        "file_hash": HASH,
        "name": string(maxLength=1024),
        "mime_type": string(maxLength=255),
    },
}


@route(
    bp,
    "POST",
    "/api/upload/file/{heap_id}/{block_id}",
    tag="files",
    errors=(400, 403, 404, 409, 413, 422, 429, 507),
    params=PATH_IDS,
    content={"multipart/form-data": UPLOAD_FORM},
    summary="Upload a whole file to a block in one request (multipart: file, hash).",
    description="Form fields: `file` (the content), `hash` (optional lowercase hex SHA-256; "
    "a mismatch is a 422 and nothing is stored), `name` and `mime_type` (optional). The "
    "file is recorded in the block's files_v0 (the block is created as a file block if "
    "new). Larger files than max_direct_upload_bytes use the resumable routes.",
    response=ANSWER,
)
async def upload_file(user: User, heap_id: str, block_id: str) -> dict[str, Any]:
    settings = services().settings
    limit_body(settings.max_direct_upload_bytes + 1024 * 1024)
    with services().files.slots.hold(user.id):  # a slow multipart body counts against the cap
        form, files = await read_form(UPLOAD_FORM)
    upload = files.get("file")
    if upload is None:
        raise BadRequest("a multipart field 'file' is required", code="file_missing_in_form")
    stream = upload.stream
    size = stream.seek(0, os.SEEK_END)
    stream.seek(0)
    if size > settings.max_direct_upload_bytes:
        raise PayloadTooLarge("the file exceeds max_direct_upload_bytes")
    claimed = form.get("hash") or form.get("file_hash")
    name = form.get("name") or upload.filename or ""
    metrics.upload_bytes("direct", size)  # received (spooled) whatever happens next
    return upload_json(
        await services().files.direct(
            user,
            heap_id,
            block_id,
            stream,
            size,
            check_hash(claimed) if claimed else None,
            name[:1024],
            form.get("mime_type") or upload.mimetype or None,
        )
    )


@route(
    bp,
    "POST",
    "/api/upload/init/{heap_id}/{block_id}",
    tag="files",
    errors=(400, 403, 404, 409, 413, 422),
    params=PATH_IDS,
    summary="Start (or resume) a resumable upload of a file to a block.",
    description="status `exists`: a block of yours holds these bytes already, this block "
    "now holds the file too, nothing needs to be sent (a hash another user's file has is "
    "no proof: its bytes are sent and checked like any other). status `ready`: send the "
    "chunks that are not in `received` (any order, in parallel, again if unsure), then "
    "complete. Calling init again answers the same upload with what it has (it survives "
    f"restarts). `chunk_size` is at least {MIN_CHUNK_BYTES} (a smaller file is one chunk) "
    "and at most max_chunk_bytes (413 above); a file is at most "
    f"{MAX_CHUNKS} chunks (400 invalid_value, whose details give the limits).",
    body=obj(
        {"size": integer(minimum=0), "chunk_size": integer(minimum=MIN_CHUNK_BYTES)},
        {
            "hash": HASH,
            "file_hash": HASH,
            "name": string(maxLength=1024),
            "mime_type": string(maxLength=255),
        },
        anyOf=[{"required": ["hash"]}, {"required": ["file_hash"]}],
    ),
    response=open_obj(
        success=boolean(),
        status=string(enum=[UploadStatus.ready.value, UploadStatus.exists.value]),
        chunk_size=integer(),
        total_chunks=integer(),
        received={"type": "array"},
    ),
)
async def upload_init(
    user: User, heap_id: str, block_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    claimed = body.get("hash") or body.get("file_hash")
    if not claimed:
        raise BadRequest("hash is required", code="invalid_field", details={"field": "hash"})
    return upload_json(
        await services().files.init(
            user,
            heap_id,
            block_id,
            check_hash(claimed),
            body["size"],
            body["chunk_size"],
            body.get("name", ""),
            body.get("mime_type"),
        )
    )


@route(
    bp,
    "GET",
    "/api/upload/status/{heap_id}/{block_id}/{hash}",
    tag="files",
    errors=(400, 403),
    params=PATH_FILE,
    summary="Progress of a resumable upload (or the file's status if none is under way).",
    response=PROGRESS,
)
async def upload_status(user: User, heap_id: str, block_id: str, hash: str) -> dict[str, Any]:
    return upload_json(await services().files.status(user, heap_id, block_id, check_hash(hash)))


@route(
    bp,
    "PUT",
    "/api/upload/chunk/{heap_id}/{block_id}/{hash}/{index}",
    tag="files",
    errors=(400, 403, 404, 413, 429, 507),
    params={**PATH_FILE, "index": CHUNK_INDEX},
    content={"application/octet-stream": string(contentMediaType="application/octet-stream")},
    summary="Send one chunk of a resumable upload (the body is its raw bytes).",
    description="Chunk i holds bytes [i*chunk_size, (i+1)*chunk_size) (the last may be "
    "shorter); its length must match exactly. Received once all of it is on disk: a chunk "
    "cut off mid-way is not received. Sending a chunk again replaces it.",
    response=open_obj(success=boolean(), status=string(), index=integer(), size=integer()),
)
async def upload_chunk(
    user: User, heap_id: str, block_id: str, hash: str, index: str
) -> dict[str, Any]:
    # ids, hash and index (ASCII digits, at most 9: CHUNK_INDEX) are checked by route()
    limit_body(services().settings.max_chunk_bytes)
    stored = await services().files.chunk(
        user, heap_id, block_id, check_hash(hash), int(index), current_request().body
    )
    metrics.upload_bytes("chunk", stored.size)
    return upload_json(stored)


@route(
    bp,
    "POST",
    "/api/upload/complete/{heap_id}/{block_id}/{hash}",
    tag="files",
    errors=(400, 403, 404, 409, 422, 507),
    params=PATH_FILE,
    summary="Finish a resumable upload: check size and hash, store, record in the block.",
    description="409 upload_incomplete lists the missing chunks. A wrong hash is a 422 and "
    "the upload is discarded. Calling complete again after success answers the same.",
    response=ANSWER,
)
async def upload_complete(user: User, heap_id: str, block_id: str, hash: str) -> dict[str, Any]:
    return upload_json(await services().files.complete(user, heap_id, block_id, check_hash(hash)))


@route(
    bp,
    "GET",
    "/api/status/file/{heap_id}/{block_id}/{hash}",
    tag="files",
    errors=(400, 403),
    params=PATH_FILE,
    summary="Is this file stored for this block: complete, uploading (with progress) or missing.",
    response=PROGRESS,
)
async def file_status(user: User, heap_id: str, block_id: str, hash: str) -> dict[str, Any]:
    return upload_json(await services().files.status(user, heap_id, block_id, check_hash(hash)))
