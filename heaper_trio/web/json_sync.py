"""The documents side of the contract's JSON: sync requests in, sync and block answers out.

Wire names (``workspace_id``, ``full_state``, ...) and base64 live here; the document service
takes and gives bytes, enums and frozen values (``services/sync_types.py``). Key order follows
what clients have always received.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from heaper_trio import crdt
from heaper_trio.records import ChangePage, EncodedChangePage
from heaper_trio.services.sync_types import (
    BlockView,
    PullItemRequest,
    PullOutcome,
    PullStatus,
    PushItemRequest,
    PushOutcome,
    PushStatus,
    Undecodable,
)


def _decoded(text: str, what: str) -> bytes | Undecodable:
    """Base64 that does not decode is the block's own fault (answered ``invalid`` in its
    place), not the request's."""
    try:
        return crdt.decode_b64(text, what)
    except crdt.InvalidUpdate as e:
        return Undecodable(e.code)


def push_request(raw: dict[str, Any]) -> PushItemRequest:
    """One item of a push body, already checked against the route's schema."""
    sv = raw.get("state_vector")
    return PushItemRequest(
        raw["block_id"],
        raw["workspace_id"],
        _decoded(raw["update"], "update"),
        _decoded(sv, "state_vector") if sv else None,
        raw.get("sync_version"),
    )


def pull_request(raw: dict[str, Any]) -> PullItemRequest:
    """One item of a pull body; an empty state vector asks for everything, as none does."""
    sv = raw.get("state_vector")
    return PullItemRequest(
        raw["block_id"],
        (_decoded(sv, "state_vector") or None) if sv else None,
        raw.get("sync_version"),
    )


def push_json(o: PushOutcome) -> dict[str, Any]:
    out: dict[str, Any] = {"block_id": o.block_id, "status": o.status.value}
    if o.status is not PushStatus.forbidden:
        # a refused block may be another user's: nothing of it goes back, not its version
        out["sync_version"] = o.sync_version
    if o.error:
        out["error"] = o.error
    if o.state_vector is not None:
        out["state_vector"] = crdt.encode_b64(o.state_vector)
    if o.update is not None:
        out["update"] = crdt.encode_b64(o.update)
    return out


def pull_json(o: PullOutcome) -> dict[str, Any]:
    out: dict[str, Any] = {"block_id": o.block_id}
    if o.sync_version is not None:
        out["sync_version"] = o.sync_version
    out["status"] = o.status.value
    if o.status is PullStatus.deleted:
        out.update(deleted=True, deleted_at=o.deleted_at)
    if o.error:
        out["error"] = o.error
    if o.full_state is not None:
        out["full_state"] = crdt.encode_b64(o.full_state)
    if o.update is not None:
        out["update"] = crdt.encode_b64(o.update)
    if o.state_vector is not None:
        out["state_vector"] = crdt.encode_b64(o.state_vector)
    return out


def delta_json(page: ChangePage) -> dict[str, Any]:
    return {
        "success": True,
        "changed_blocks": [
            {
                "block_id": b.id,
                "updated_at": b.updated_at,
                "sync_version": b.sync_version,
                "type": b.type,
                "title": b.title,
                "deleted_at": b.deleted_at,
            }
            for b in page.changed
        ],
        "deleted_blocks": [{"block_id": bid, "deleted_at": at} for bid, at in page.deleted],
        "server_time": page.server_time,
        "has_more": page.has_more,
        "total_changed": page.total_changed,
        "total_deleted": page.total_deleted,
    }


def delta_bytes(page: ChangePage) -> bytes:
    """``delta_json`` encoded: the bytes the delta route's answer (``encoded_delta_bytes``,
    rows written by the database) is held to, byte for byte, by the tests. orjson encodes a
    page 6-8 times faster than ``json.dumps``; text orjson refuses (a lone surrogate, which no
    engine can store) goes through ``json``."""
    body = delta_json(page)
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        return json.dumps(body).encode()


def encoded_delta_bytes(page: EncodedChangePage) -> bytes:
    """The bytes ``delta_bytes`` makes of the same page, around rows the database encoded."""
    return b"".join(
        (
            b'{"success":true,"changed_blocks":[',
            page.changed.encode(),
            b'],"deleted_blocks":[',
            page.deleted.encode(),
            b'],"server_time":%d,"has_more":%s,"total_changed":%d,"total_deleted":%d}'
            % (
                page.server_time,
                b"true" if page.has_more else b"false",
                page.total_changed,
                page.total_deleted,
            ),
        )
    )


def block_view_json(view: BlockView) -> dict[str, Any]:
    record = view.record
    return {
        "success": True,
        "block": {
            "id": record.id,
            "block_id": record.id,
            "heap_id": record.heap_id,
            "workspace_id": record.heap_id,
            "type": record.type,
            "title": record.title,
            "text": record.text,
            "created_at": record.created_at,
            "created_by": record.created_by,
            "updated_at": record.updated_at,
            "deleted_at": record.deleted_at,
            "permanently_deleted_at": record.permanently_deleted_at,
            "sync_version": record.sync_version,
            "size": record.size,
            "is_root": view.is_root,
        },
        "relations": {**view.related, "raw": record.relations},
        "apps": record.apps,
        "files": record.files,
        "text": record.text,
        "state": crdt.encode_b64(view.state),
        "state_vector": crdt.encode_b64(view.state_vector),
    }
