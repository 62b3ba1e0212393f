"""Instance discovery and health: ``GET /api/``, ``/api/health``, ``/sync/health``, OpenAPI."""

from __future__ import annotations

from typing import Any

from quart import Blueprint

from heaper_trio.services import instance
from heaper_trio.records import User
from heaper_trio.web.openapi import openapi_document
from heaper_trio.web.routing import route, services
from heaper_trio.web.schema import boolean, open_obj, string

bp = Blueprint("instance", __name__)

IDENTITY = dict(version=string(), name=string(), public_url=string(),
                public_key=string(description="the server's base58 Ed25519 public key"))


@route(bp, "GET", "/api/", tag="instance", auth="optional",
       summary="Instance metadata: version, public key, name, mode.",
       description="With a valid access token the answer adds is_admin and license fields.",
       response=open_obj(success=boolean(), status=string(), selfhosted=boolean(),
                         is_admin=boolean(), license={"type": "object"}, **IDENTITY))
async def index(user: User | None) -> dict[str, Any]:
    return instance.info(services(), user)


HEALTH = open_obj(success=boolean(), status=string(enum=["ok", "degraded"]),
                  server={"type": "object"}, database={"type": "object"},
                  diagnostics={"type": "object"}, **IDENTITY)


@route(bp, "GET", "/api/health", tag="instance", auth="none", errors=(503,),
       summary="Server and database health, with live-sync counters.",
       description="503 (same body, database.status = error, status = degraded) when the "
       "database does not answer.",
       response=HEALTH, other_bodies={503: HEALTH})
async def health() -> Any:
    body, ok = await instance.health(services())
    return body, 200 if ok else 503


@route(bp, "GET", "/sync/health", tag="sync", auth="none",
       summary="Live-sync subsystem health.",
       response=open_obj(success=boolean(), status=string(), connections={"type": "integer"}))
async def sync_health() -> dict[str, Any]:
    return instance.sync_health(services())


@route(bp, "GET", "/api/openapi.json", tag="instance", auth="none",
       summary="This document: every route with its schemas and error codes.",
       response={"type": "object"})
async def openapi() -> dict[str, Any]:
    return openapi_document(services().version)
