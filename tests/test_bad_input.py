"""Malformed input on every route of the foundation: a 4xx with a stable code, nothing stored."""

from __future__ import annotations

from typing import Any

import base58
import pytest

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient, KeyPair

from .conftest import assert_error

KEY = KeyPair.generate()
PK = KEY.public_key
SIG = KEY.sign("x")
SHORT_KEY = base58.b58encode(b"\x01" * 31).decode()
LONG_KEY = base58.b58encode(b"\x01" * 33).decode()
SHORT_SIG = base58.b58encode(b"\x01" * 63).decode()
NON_CANONICAL = "1" + PK  # a leading '1' is a leading zero byte: 33 bytes

# (route, body, status, error code)
CASES: list[tuple[str, Any, int, str]] = [
    # create_session
    ("/api/auth/create_session", None, 400, "invalid_json"),
    ("/api/auth/create_session", "{not json", 400, "invalid_json"),
    ("/api/auth/create_session", [], 400, "invalid_type"),
    ("/api/auth/create_session", {}, 400, "missing_field"),
    ("/api/auth/create_session", {"public_key": PK, "extra": 1}, 400, "unknown_field"),
    ("/api/auth/create_session", {"public_key": 12345}, 400, "invalid_type"),
    ("/api/auth/create_session", {"public_key": None}, 400, "invalid_type"),
    ("/api/auth/create_session", {"public_key": ""}, 400, "invalid_value"),
    ("/api/auth/create_session", {"public_key": "0OIl" * 11}, 400, "invalid_public_key"),
    ("/api/auth/create_session", {"public_key": SHORT_KEY}, 400, "invalid_public_key"),
    ("/api/auth/create_session", {"public_key": LONG_KEY}, 400, "invalid_public_key"),
    ("/api/auth/create_session", {"public_key": NON_CANONICAL}, 400, "invalid_public_key"),
    ("/api/auth/create_session", {"public_key": "x" * 65}, 400, "invalid_value"),
    ("/api/auth/create_session", {"public_key": PK, "email": 5}, 400, "invalid_type"),
    # verify_session
    ("/api/auth/verify_session", {"public_key": PK, "message": "m"}, 400, "missing_field"),
    ("/api/auth/verify_session", {"public_key": PK, "signature": SIG}, 400, "missing_field"),
    (
        "/api/auth/verify_session",
        {"public_key": PK, "message": "m", "signature": SIG, "signed_message": SIG},
        400,
        "unknown_field",
    ),
    (
        "/api/auth/verify_session",
        {"public_key": PK, "message": 1, "signature": SIG},
        400,
        "invalid_type",
    ),
    (
        "/api/auth/verify_session",
        {"public_key": PK, "message": "m", "signature": SHORT_SIG},
        400,
        "invalid_signature",
    ),
    (
        "/api/auth/verify_session",
        {"public_key": PK, "message": "m", "signature": "l0l"},
        400,
        "invalid_signature",
    ),
    (
        "/api/auth/verify_session",
        {"public_key": SHORT_KEY, "message": "m", "signature": SIG},
        400,
        "invalid_public_key",
    ),
    (
        "/api/auth/verify_session",
        {"public_key": PK, "message": "m" * 513, "signature": SIG},
        400,
        "invalid_value",
    ),
    (
        "/api/auth/verify_session",
        {"public_key": PK, "message": "m", "signature": SIG, "server_challenge": ["x"]},
        400,
        "invalid_type",
    ),
    # a well-formed signature that does not verify
    (
        "/api/auth/verify_session",
        {"public_key": PK, "message": "m", "signature": SIG},
        401,
        "signature_mismatch",
    ),
    # verify_key
    (
        "/api/auth/verify_key",
        {"public_key": PK, "message": "m", "signature": SIG},
        400,
        "missing_field",
    ),
    (
        "/api/auth/verify_key",
        {"public_key": PK, "message": "m", "signed_message": True},
        400,
        "invalid_type",
    ),
    (
        "/api/auth/verify_key",
        {"public_key": LONG_KEY, "message": "m", "signed_message": SIG},
        400,
        "invalid_public_key",
    ),
    # /api/me takes no fields
    ("/api/me", {"anything": 1}, 400, "unknown_field"),
]


async def _post(client: HeaperClient, path: str, body: Any) -> Any:
    """None: no body; str: raw bytes as sent; anything else: JSON."""
    if body is None or isinstance(body, str):
        return await client.post(
            path, content=(body or "").encode(), headers={"Content-Type": "application/json"}
        )
    return await client.post(path, json=body)


@pytest.mark.parametrize("path,body,status,code", CASES)
async def test_bad_auth_input(
    admin: HeaperClient, server: RunningServer, path: str, body: Any, status: int, code: str
) -> None:
    before = await server.services.storage.auth_stats()
    body_out = assert_error(await _post(admin, path, body), status, code)
    if code in ("missing_field", "unknown_field", "invalid_type", "invalid_value"):
        assert body_out["field"].startswith("body"), body_out
    assert await server.services.storage.auth_stats() == before


async def test_wrong_methods_and_unknown_routes(http: Any) -> None:
    assert_error(await http.get("/api/auth/create_session"), 405, "method_not_allowed")
    assert_error(await http.post("/api/health"), 405, "method_not_allowed")
    assert_error(await http.get("/api/nope"), 404, "not_found")
    assert_error(await http.get("/api/me"), 405, "method_not_allowed")


async def test_body_over_the_limit_is_413(start_server: Any) -> None:
    running = await start_server(max_request_bytes=2048)
    async with HeaperClient(running.url) as c:
        r = await c.http.post(
            "/api/auth/create_session",
            content=b'{"public_key": "' + b"1" * 5000 + b'"}',
            headers={"Content-Type": "application/json"},
        )
        assert_error(r, 413, "payload_too_large")
        assert (await running.services.storage.auth_stats())["challenges"] == 0


async def test_deeply_nested_json_is_a_400(http: Any) -> None:
    body = "[" * 100_000 + "]" * 100_000
    r = await http.post(
        "/api/auth/create_session", content=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code in (400, 413)
    assert r.json()["success"] is False
