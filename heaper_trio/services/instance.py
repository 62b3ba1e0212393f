"""What the server says about itself: identity (``GET /api/``) and health."""

from __future__ import annotations

import os
import time
from typing import Any

import trio

from heaper_trio.services.container import Services
from heaper_trio.records import User

DB_PING_TIMEOUT_S = 5.0


def identity(s: Services) -> dict[str, Any]:
    return {
        "version": s.version,
        "name": s.settings.name,
        "public_url": s.settings.public_url,
        "public_key": s.server_key.public_key,
    }


def info(s: Services, user: User | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "success": True,
        "status": "ok",
        **identity(s),
        "selfhosted": True,
        "mode": "selfhosted",
    }
    if user is not None:
        out["is_admin"] = user.is_admin
        # License fields: a self-hosted server is licensed for everything it implements.
        out["license"] = {"type": "selfhosted", "valid": True, "expires_at": None}
        out["licensed"] = True
    return out


async def database_health(s: Services) -> dict[str, Any]:
    """Status and round-trip time of one trivial query; never raises."""
    started = time.perf_counter()
    try:
        with trio.fail_after(DB_PING_TIMEOUT_S):
            await s.storage.ping()
    except Exception as e:
        return {"status": "error", "engine": s.storage.engine, "error": type(e).__name__,
                "message": str(e)[:200]}
    rtt_ms = (time.perf_counter() - started) * 1000
    return {"status": "ok", "engine": s.storage.engine, "round_trip_ms": round(rtt_ms, 3)}


async def health(s: Services) -> tuple[dict[str, Any], bool]:
    db = await database_health(s)
    ok = db["status"] == "ok"
    body = {
        "success": ok,
        "status": "ok" if ok else "degraded",
        "server": {
            "status": "ok",
            "uptime_s": round(time.time() - s.started_at, 3),
            "pid": os.getpid(),
        },
        "database": db,
        **identity(s),
        "diagnostics": {"realtime": s.realtime.snapshot()},
    }
    return body, ok


def sync_health(s: Services) -> dict[str, Any]:
    counters = s.realtime.snapshot()
    return {
        "success": True,
        "status": "ok",
        "version": s.version,
        "engine": s.storage.engine,
        "connections": counters["connections"],
        "documents_loaded": counters["documents_loaded"],
        "realtime": counters,
    }
