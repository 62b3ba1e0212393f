"""Discovery, health, CORS, rate limits and the OpenAPI document, on a real server."""

from __future__ import annotations

from typing import Any

from heaper_trio.app import RunningServer, create_app
from heaper_trio.client import HeaperClient, KeyPair

from .conftest import StartServer, assert_error


async def test_index(http: Any, server: RunningServer) -> None:
    body = (await http.get("/api/")).json()
    assert body["status"] == "ok" and body["selfhosted"] is True
    assert body["public_key"] == server.services.server_key.public_key
    assert {"version", "name", "public_url"} <= set(body)


async def test_health_reports_database_round_trip(http: Any, server: RunningServer) -> None:
    r = await http.get("/api/health")
    body = r.json()
    assert r.status_code == 200
    assert body["server"]["status"] == "ok"
    assert body["database"]["status"] == "ok"
    assert body["database"]["engine"] == server.services.storage.engine
    assert body["database"]["round_trip_ms"] > 0
    realtime = body["diagnostics"]["realtime"]
    assert {
        "connections",
        "documents_loaded",
        "messages_in",
        "messages_out",
        "bytes_in",
        "bytes_out",
        "dropped_slow_consumers",
    } <= set(realtime)
    for field in ("version", "name", "public_url", "public_key"):
        assert field in body


async def test_health_is_503_when_the_database_is_gone(server: RunningServer, http: Any) -> None:
    async def broken() -> None:
        raise ConnectionError("database went away")

    server.services.storage.ping = broken  # type: ignore[method-assign]
    r = await http.get("/api/health")
    assert r.status_code == 503
    assert r.json()["database"]["status"] == "error"
    assert r.json()["server"]["status"] == "ok"


async def test_sync_health(http: Any) -> None:
    body = (await http.get("/sync/health")).json()
    assert body["status"] == "ok" and body["connections"] == 0


async def test_cors_mirrors_origin_and_answers_preflight(http: Any) -> None:
    origin = "https://notes.example"
    r = await http.options(
        "/api/me",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == origin
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert r.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    assert r.headers["Access-Control-Allow-Credentials"] == "true"

    r = await http.get("/api/", headers={"Origin": origin})
    assert r.headers["Access-Control-Allow-Origin"] == origin
    assert "Origin" in r.headers["Vary"]
    # Errors carry CORS headers too, or browsers hide the error body from the app.
    r = await http.post("/api/me", headers={"Origin": origin})
    assert r.status_code == 401 and r.headers["Access-Control-Allow-Origin"] == origin
    assert "Access-Control-Allow-Origin" not in (await http.get("/api/")).headers


async def test_auth_rate_limit_per_address(start_server: StartServer) -> None:
    running = await start_server(auth_rate_limit=5)
    async with HeaperClient(running.url) as c:
        statuses = []
        for _ in range(6):
            r = await c.http.post(
                "/api/auth/create_session", json={"public_key": KeyPair.generate().public_key}
            )
            statuses.append(r.status_code)
        assert statuses == [200] * 5 + [429]
        body = assert_error(r, 429, "rate_limited")
        assert int(r.headers["Retry-After"]) >= 1, body
        # Malformed requests count too, and non-auth routes are not limited.
        assert_error(await c.http.post("/api/auth/create_session", content=b"{"), 429)
        assert (await c.http.get("/api/health")).status_code == 200


async def test_auth_rate_limit_per_key(start_server: StartServer) -> None:
    running = await start_server(auth_rate_limit=10)  # per key: 2 per minute
    async with HeaperClient(running.url) as c:
        key = KeyPair.generate().public_key
        statuses = [
            (await c.http.post("/api/auth/create_session", json={"public_key": key})).status_code
            for _ in range(3)
        ]
        assert statuses == [200, 200, 429]
        other = await c.http.post(
            "/api/auth/create_session", json={"public_key": KeyPair.generate().public_key}
        )
        assert other.status_code == 200


async def test_openapi_lists_exactly_the_app_routes(http: Any, server: RunningServer) -> None:
    doc = (await http.get("/api/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    app = create_app(server.services)
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                served.add((path, method))
    assert served == documented
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            success = "101" if op.get("x-websocket") else "200"
            assert op["summary"] and op["responses"][success], (path, method)
            if op["security"] == [{"bearer": []}]:
                assert "401" in op["responses"], (path, method)
            if "requestBody" in op:
                assert "400" in op["responses"], (path, method)


async def test_a_failing_database_gives_503_not_500(
    admin: HeaperClient, server: RunningServer
) -> None:
    from heaper_trio.errors import Unavailable

    async def down(*args: object, **kw: object) -> None:
        raise Unavailable("the database is unavailable: test", code="database_unavailable")

    server.services.storage.get_user = down  # type: ignore[method-assign]
    r = await admin.post("/api/me")
    assert_error(r, 503, "database_unavailable")
