"""Instance discovery and health: ``GET /api/``, ``/api/health``, ``/sync/health``, OpenAPI."""

from __future__ import annotations

from typing import Any

from quart import Blueprint

from heaper_trio.records import User
from heaper_trio.services import instance
from heaper_trio.services.instance import DatabaseHealth, HealthStatus, Identity
from heaper_trio.web.openapi import openapi_document
from heaper_trio.web.routing import route, services
from heaper_trio.web.schema import boolean, open_obj, string

bp = Blueprint("instance", __name__)

IDENTITY = {
    "version": string(),
    "name": string(),
    "public_url": string(),
    "public_key": string(description="the server's base58 Ed25519 public key"),
}


def _identity(found: Identity) -> dict[str, Any]:
    return {
        "version": found.version,
        "name": found.name,
        "public_url": found.public_url,
        "public_key": found.public_key,
    }


def _database(db: DatabaseHealth) -> dict[str, Any]:
    out: dict[str, Any] = {"status": db.status.value, "engine": db.engine}
    if db.status is HealthStatus.ok:
        out["round_trip_ms"] = db.round_trip_ms
    else:
        out.update(error=db.error, message=db.message)
    return out


@route(
    bp,
    "GET",
    "/api/",
    tag="instance",
    auth="optional",
    summary="Instance metadata: version, public key, name, mode.",
    description="With a valid access token the answer adds is_admin and license fields.",
    response=open_obj(
        success=boolean(),
        status=string(),
        selfhosted=boolean(),
        is_admin=boolean(),
        license={"type": "object"},
        **IDENTITY,
    ),
)
async def index(user: User | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "success": True,
        "status": "ok",
        **_identity(instance.identity(services())),
        "selfhosted": True,
        "mode": "selfhosted",
    }
    if user is not None:
        out["is_admin"] = user.is_admin
        # License fields: a self-hosted server is licensed for everything it implements.
        out["license"] = {"type": "selfhosted", "valid": True, "expires_at": None}
        out["licensed"] = True
    return out


HEALTH = open_obj(
    success=boolean(),
    status=string(enum=[HealthStatus.ok.value, HealthStatus.degraded.value]),
    server={"type": "object"},
    database={"type": "object"},
    diagnostics={"type": "object"},
    **IDENTITY,
)


@route(
    bp,
    "GET",
    "/api/health",
    tag="instance",
    auth="none",
    errors=(503,),
    summary="Server and database health, with live-sync counters.",
    description="503 (same body, database.status = error, status = degraded) when the "
    "database does not answer.",
    response=HEALTH,
    other_bodies={503: HEALTH},
)
async def health() -> Any:
    found = await instance.health(services())
    ok = found.status is HealthStatus.ok
    body = {
        "success": ok,
        "status": found.status.value,
        "server": {"status": "ok", "uptime_s": found.uptime_s, "pid": found.pid},
        "database": _database(found.database),
        **_identity(found.identity),
        "diagnostics": {"realtime": found.realtime},
    }
    return body, 200 if ok else 503


@route(
    bp,
    "GET",
    "/sync/health",
    tag="sync",
    auth="none",
    summary="Live-sync subsystem health.",
    response=open_obj(success=boolean(), status=string(), connections={"type": "integer"}),
)
async def sync_health() -> dict[str, Any]:
    found = instance.sync_health(services())
    return {
        "success": True,
        "status": "ok",
        "version": found.version,
        "engine": found.engine,
        "connections": found.realtime["connections"],
        "documents_loaded": found.realtime["documents_loaded"],
        "realtime": found.realtime,
    }


@route(
    bp,
    "GET",
    "/api/openapi.json",
    tag="instance",
    auth="none",
    summary="This document: every route with its schemas and error codes.",
    response={"type": "object"},
)
async def openapi() -> dict[str, Any]:
    return openapi_document(services().version)
