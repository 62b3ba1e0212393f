"""Key-based login, approval, tokens, refresh rotation and revocation, on both engines."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import base58
import jwt
import nacl.signing
import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient, KeyPair, LoginPending
from heaper_trio.keys import SERVER_KEY_FILE
from heaper_trio.services.accounts import find_user
from heaper_trio.services.tokens import AUDIENCE

from .auth_support import issue_challenge, verify_session
from .conftest import StartServer, assert_error


async def test_first_login_becomes_admin_and_later_ones_wait(
    admin: HeaperClient, make_client: Callable[..., HeaperClient], server: RunningServer
) -> None:
    assert admin.login_answer["is_admin"] is True
    assert admin.login_answer["status"] == "approved"
    assert admin.login_answer["server_public_key"] == server.services.server_key.public_key

    me = (await admin.post("/api/me")).json()
    assert me["is_admin"] is True and me["public_key"] == admin.public_key
    assert me["usage"]["sessions"] == 1
    assert "admin" in me["entitlements"] and me["subscriptions"]

    second = make_client()
    with pytest.raises(LoginPending):
        await second.login()
    assert second.login_answer["approval_required"] is True
    assert "accessToken" not in second.login_answer
    stats = await server.services.storage.auth_stats()
    assert stats["users"] == 2 and stats["refresh_tokens"] == 1

    # An admin approves (what the CLI calls), then the same key logs in.
    user = await find_user(server.services.storage, second.public_key)
    await server.services.storage.set_user_state(user.id, "approved", int(time.time() * 1000))
    answer = await second.login()
    assert answer["is_admin"] is False and answer["accessToken"]
    r = await second.get("/api/")
    assert r.json()["is_admin"] is False and r.json()["license"]["type"] == "selfhosted"


async def test_auto_approve(start_server: StartServer) -> None:
    running = await start_server(auto_approve=True)
    async with HeaperClient(running.url) as a, HeaperClient(running.url) as b:
        await a.login()
        answer = await b.login()
        assert answer["is_admin"] is False and answer["accessToken"]


async def test_rejected_account_cannot_log_in_or_use_tokens(
    admin: HeaperClient, make_client: Callable[..., HeaperClient], server: RunningServer
) -> None:
    storage = server.services.storage
    other = make_client()
    with pytest.raises(LoginPending):
        await other.login()
    user = await find_user(server.services.storage, other.public_key)
    await storage.set_user_state(user.id, "approved", 1)
    await other.login()
    await storage.set_user_state(user.id, "rejected", 2)
    assert_error(await other.post("/api/me"), 401, "token_revoked")
    r = await verify_session(other.http, other.key, await other.challenge())
    assert_error(r, 403, "account_rejected")


async def test_verify_key_and_server_challenge(
    admin: HeaperClient, http: Any, server: RunningServer
) -> None:
    key = KeyPair.generate()
    challenge = await issue_challenge(http, key.public_key)
    r = await verify_session(
        http, key, challenge, route="verify_key", server_challenge="prove-it-42"
    )
    body = r.json()
    assert r.status_code == 200 and body["verified"] is True
    assert body["approval_required"] is True and "access_token" not in body  # not first user
    server_pub = base58.b58decode(body["server_public_key"])
    nacl.signing.VerifyKey(server_pub).verify(
        b"prove-it-42", base58.b58decode(body["server_signature"])
    )


async def test_verify_key_answers_snake_case_tokens(
    make_client: Callable[..., HeaperClient], http: Any
) -> None:
    key = KeyPair.generate()
    challenge = await issue_challenge(http, key.public_key)
    r = await verify_session(http, key, challenge, route="verify_key")
    body = r.json()
    assert body["access_token"] and body["refresh_token"] and body["is_admin"] is True
    c = make_client(key)
    c.access_token = body["access_token"]
    assert (await c.post("/api/me")).status_code == 200


async def test_challenge_reuse_foreign_and_unknown(
    admin: HeaperClient, http: Any, server: RunningServer
) -> None:
    key = KeyPair.generate()
    challenge = await issue_challenge(http, key.public_key)
    assert (await verify_session(http, key, challenge)).status_code == 200
    before = await server.services.storage.auth_stats()
    assert_error(await verify_session(http, key, challenge), 401, "challenge_used")

    # A challenge issued for another key, correctly signed by this one.
    other = KeyPair.generate()
    foreign = await issue_challenge(http, other.public_key)
    assert_error(await verify_session(http, key, foreign), 401, "challenge_foreign")
    r = await verify_session(http, key, "heaper-login:not-issued")
    assert_error(r, 401, "challenge_unknown")
    after = await server.services.storage.auth_stats()
    assert after["users"] == before["users"] and after["refresh_tokens"] == before["refresh_tokens"]
    # The foreign challenge is still usable by its own key: the failure consumed nothing.
    assert (await verify_session(http, other, foreign)).status_code == 200


async def test_expired_challenge(start_server: StartServer) -> None:
    running = await start_server(challenge_ttl=1)
    async with HeaperClient(running.url) as c:
        challenge = await c.challenge()
        await trio.sleep(1.2)
        r = await verify_session(c.http, c.key, challenge)
        assert_error(r, 401, "challenge_expired")
        assert (await running.services.storage.auth_stats())["users"] == 0


async def test_bad_signature_stores_nothing(http: Any, server: RunningServer) -> None:
    key, impostor = KeyPair.generate(), KeyPair.generate()
    challenge = await issue_challenge(http, key.public_key)
    r = await verify_session(http, key, challenge, signer=impostor)
    assert_error(r, 401, "signature_mismatch")
    stats = await server.services.storage.auth_stats()
    assert stats["users"] == 0 and stats["refresh_tokens"] == 0
    # The challenge was not burnt by the failed attempt.
    assert (await verify_session(http, key, challenge)).status_code == 200


async def test_refresh_rotation_and_reuse_detection(
    admin: HeaperClient, server: RunningServer
) -> None:
    first_refresh = admin.refresh_token
    await admin.refresh()
    assert admin.refresh_token != first_refresh
    assert (await admin.post("/api/me")).status_code == 200
    second_refresh = admin.refresh_token

    # Replaying the rotated token revokes the whole family, including the newest token.
    r = await admin.http.post(
        "/api/auth/refresh_token", headers={"Authorization": f"Bearer {first_refresh}"}
    )
    assert_error(r, 401, "refresh_token_reused")
    r = await admin.http.post(
        "/api/auth/refresh_token", headers={"Authorization": f"Bearer {second_refresh}"}
    )
    assert_error(r, 401, "refresh_token_revoked")


async def test_concurrent_refresh_of_one_token_succeeds_once(admin: HeaperClient) -> None:
    token = admin.refresh_token
    statuses: list[int] = []

    async def use() -> None:
        r = await admin.http.post(
            "/api/auth/refresh_token", headers={"Authorization": f"Bearer {token}"}
        )
        statuses.append(r.status_code)

    async with trio.open_nursery() as n:
        for _ in range(4):
            n.start_soon(use)
    assert sorted(statuses) == [200, 401, 401, 401]


async def test_token_kinds_are_not_interchangeable(admin: HeaperClient) -> None:
    r = await admin.http.post("/api/me", headers={"Authorization": f"Bearer {admin.refresh_token}"})
    assert_error(r, 401, "token_wrong_type")
    r = await admin.http.post(
        "/api/auth/refresh_token", headers={"Authorization": f"Bearer {admin.access_token}"}
    )
    assert_error(r, 401, "token_wrong_type")


def _claims(server: RunningServer, user_id: str, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "sub": user_id,
        "typ": "access",
        "iat": now,
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
        "gen": 0,
        "iss": server.services.server_key.public_key,
        "aud": AUDIENCE,
        **over,
    }


async def test_forged_and_expired_tokens(admin: HeaperClient, server: RunningServer) -> None:
    assert admin.user_id
    key = KeyPair.load(server.services.settings.data_path / SERVER_KEY_FILE)
    good = jwt.encode(_claims(server, admin.user_id), key.jwt_private_key(), algorithm="EdDSA")
    assert (
        await admin.http.post("/api/me", headers={"Authorization": f"Bearer {good}"})
    ).status_code == 200

    cases = {
        "expired": (
            jwt.encode(
                _claims(server, admin.user_id, iat=1, exp=100),
                key.jwt_private_key(),
                algorithm="EdDSA",
            ),
            "token_expired",
        ),
        "other key": (
            jwt.encode(
                _claims(server, admin.user_id),
                KeyPair.generate().jwt_private_key(),
                algorithm="EdDSA",
            ),
            "token_invalid",
        ),
        "alg none": (
            jwt.encode(_claims(server, admin.user_id), None, algorithm="none"),
            "token_invalid",
        ),
        "hs256 with public key": (
            jwt.encode(
                _claims(server, admin.user_id),
                server.services.server_key.public_key,
                algorithm="HS256",
            ),
            "token_invalid",
        ),
        "garbage": ("not.a.jwt", "token_invalid"),
        "missing gen": (
            jwt.encode(
                {k: v for k, v in _claims(server, admin.user_id).items() if k != "gen"},
                key.jwt_private_key(),
                algorithm="EdDSA",
            ),
            "token_invalid",
        ),
        "unknown user": (
            jwt.encode(_claims(server, "nobody"), key.jwt_private_key(), algorithm="EdDSA"),
            "token_invalid",
        ),
        "stale generation": (
            jwt.encode(
                _claims(server, admin.user_id, gen=7), key.jwt_private_key(), algorithm="EdDSA"
            ),
            "token_revoked",
        ),
    }
    for name, (token, code) in cases.items():
        r = await admin.http.post("/api/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401, name
        assert r.json()["error"] == code, (name, r.json())
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert_error(await admin.http.post("/api/me"), 401, "token_missing")
    assert_error(
        await admin.http.post("/api/me", headers={"Authorization": "Basic abc"}),
        401,
        "token_missing",
    )


async def test_revoking_tokens_kills_access_and_refresh(
    admin: HeaperClient, server: RunningServer
) -> None:
    assert admin.user_id
    await server.services.storage.revoke_user_tokens(admin.user_id, int(time.time() * 1000))
    assert_error(await admin.post("/api/me"), 401, "token_revoked")
    r = await admin.http.post(
        "/api/auth/refresh_token", headers={"Authorization": f"Bearer {admin.refresh_token}"}
    )
    assert_error(r, 401, "token_revoked")
    await admin.login()  # a fresh login works again
    assert (await admin.post("/api/me")).status_code == 200


async def test_client_refreshes_an_expired_access_token(start_server: StartServer) -> None:
    running = await start_server(access_token_ttl=10)
    async with HeaperClient(running.url) as c:
        await c.login()
        key = running.services.server_key
        assert c.user_id
        c.access_token = jwt.encode(
            _claims(running, c.user_id, iat=1, exp=2), key.jwt_private_key(), algorithm="EdDSA"
        )
        old_refresh = c.refresh_token
        r = await c.post("/api/me")
        assert r.status_code == 200 and c.refresh_token != old_refresh


async def test_optional_auth_on_index(admin: HeaperClient, http: Any) -> None:
    anon = (await http.get("/api/")).json()
    assert "is_admin" not in anon and anon["selfhosted"] is True
    assert (await admin.get("/api/")).json()["is_admin"] is True
    # A bad token on an optional-auth route is treated as no token.
    r = await http.get("/api/", headers={"Authorization": "Bearer nonsense"})
    assert r.status_code == 200 and "is_admin" not in r.json()
