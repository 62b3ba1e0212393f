"""HTTP sync of block documents: delta, push, pull (contract, "CRDT payloads")."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response

from heaper_trio.errors import BadRequest, PayloadTooLarge, Unprocessable
from heaper_trio.records import User
from heaper_trio.services.documents import DELTA_LIMIT
from heaper_trio.web.json_sync import (
    encoded_delta_bytes,
    pull_json,
    pull_request,
    push_json,
    push_request,
)
from heaper_trio.web.routes_heaps import ID
from heaper_trio.web.routing import current_request, route, services
from heaper_trio.web.schema import (
    boolean,
    integer,
    is_int_text,
    obj,
    open_obj,
    parse_int,
    string,
    validate,
)

bp = Blueprint("sync", __name__)

B64 = string(description="standard base64 (with padding) of Yjs v1 bytes")
# 0 is "never saw the block" (the contract): no block is ever at 0, so a pull gets the full
# state and a push to an existing block the version mismatch; a new block is created at 1.
VERSION = integer(description="the block's sync_version as the client knows it; 0: none")
PUSH_ITEM = obj(
    {"block_id": ID, "workspace_id": ID, "update": B64},
    {"state_vector": B64, "sync_version": VERSION},
)
PULL_ITEM = obj(
    {"block_id": ID}, {"state_vector": B64, "sync_version": VERSION, "workspace_id": ID}
)
SINCE = integer(
    description="Unix ms; omitted or not a number: 0 (the published API). A "
    "number out of range is a 400."
)
LIMIT = integer(minimum=1, maximum=DELTA_LIMIT)
RESULTS = open_obj(success=boolean(), blocks={"type": "array"}, server_time=integer())


def _check_batch(items: list[Any]) -> None:
    limit = services().settings.max_sync_batch
    if len(items) > limit:
        raise PayloadTooLarge(
            f"at most {limit} blocks per request (max_sync_batch)", code="batch_too_large"
        )


def _answer(blocks: list[dict[str, Any]], bad: str) -> Any:
    """200 with per-block statuses; 422 when not a single block could be used."""
    body = {"success": True, "blocks": blocks, "server_time": services().documents._now()}
    if blocks and all(b["status"] == "invalid" for b in blocks):
        e = Unprocessable(
            f"no block of the {bad} could be decoded",
            code="invalid_update",
            details={"blocks": blocks},
        )
        return e.body(), e.status
    return body


@route(
    bp,
    "GET",
    "/api/sync/delta",
    tag="sync",
    errors=(403,),
    summary="Blocks changed and removed in a heap since a change time.",
    description="Ask again with the returned server_time until has_more is false; every "
    "change is seen at least once, even while writes commit concurrently. heap_id is "
    "taken for workspace_id too.",
    query={"workspace_id": ID, "since": SINCE, "limit": LIMIT},
    required_query=("workspace_id",),
    response=open_obj(
        success=boolean(),
        changed_blocks={"type": "array"},
        deleted_blocks={"type": "array"},
        server_time=integer(),
        has_more=boolean(),
        total_changed=integer(),
        total_deleted=integer(),
    ),
)
async def delta(user: User) -> Response:
    request = current_request()
    heap_id = request.args.get("workspace_id") or request.args.get("heap_id")
    if not heap_id:
        raise BadRequest(
            "workspace_id is required",
            code="missing_field",
            details={"field": "query.workspace_id"},
        )
    validate(heap_id, ID, "query.workspace_id")
    # The seed: "Defaults to 0 if omitted or invalid" -- text that is no number at all. A number
    # is held to its bounds: 2**63 and up would overflow the database's 64-bit integers.
    since_text = request.args.get("since", "")
    since = parse_int(since_text, SINCE, "query.since") if is_int_text(since_text) else 0
    limit = parse_int(request.args.get("limit", str(DELTA_LIMIT)), LIMIT, "query.limit")
    page = await services().heaps.delta_encoded(user, heap_id, since, limit)
    return Response(encoded_delta_bytes(page), content_type="application/json")


@route(
    bp,
    "POST",
    "/api/sync/push",
    tag="sync",
    errors=(422,),
    summary="Push Yjs updates; answers after they are durably committed.",
    description="Each block is applied on its own: status is ok, created, version_mismatch, "
    "forbidden, not_found, deleted, invalid (or conflict after repeated concurrent writes). "
    "`update` is what the client lacks given its state_vector (all of it without one).",
    body=obj({"blocks": {"type": "array", "items": PUSH_ITEM}}),
    response=RESULTS,
)
async def push(user: User, body: dict[str, Any]) -> Any:
    _check_batch(body["blocks"])
    outcomes = await services().documents.push(user, [push_request(b) for b in body["blocks"]])
    return _answer([push_json(o) for o in outcomes], "push")


@route(
    bp,
    "POST",
    "/api/sync/pull",
    tag="sync",
    errors=(422,),
    summary="Missing updates, full states on a sync_version mismatch, deletion markers.",
    body=obj({"blocks": {"type": "array", "items": PULL_ITEM}}),
    response=RESULTS,
)
async def pull(user: User, body: dict[str, Any]) -> Any:
    _check_batch(body["blocks"])
    outcomes = await services().documents.pull(user, [pull_request(b) for b in body["blocks"]])
    return _answer([pull_json(o) for o in outcomes], "pull")
