"""Key-based login (``/api/auth/*``) and the caller's profile (``/api/me``)."""

from __future__ import annotations

from typing import Any

from quart import Blueprint

from heaper_trio.records import User
from heaper_trio.services.accounts import LoginResult, Profile
from heaper_trio.web.routing import route, services
from heaper_trio.web.schema import boolean, integer, obj, open_obj, string

bp = Blueprint("auth", __name__)

# The formats are not JSON Schema's; they name what the handlers check (keys.py): canonical
# base58 of exactly 32 (64) bytes, which no pattern can state. Anything else is a 400.
PUBLIC_KEY = string(
    minLength=1,
    maxLength=64,
    format="base58-ed25519-public-key",
    description="base58 of the raw 32-byte Ed25519 key",
)
SIGNATURE = string(
    minLength=1,
    maxLength=128,
    format="base58-ed25519-signature",
    description="base58 of a 64-byte detached signature",
)
MESSAGE = string(minLength=1, maxLength=512, description="the challenge from create_session")
SERVER_CHALLENGE = string(
    minLength=1,
    maxLength=1024,
    description="any text; the answer carries the server's signature of it",
)
EMAIL = string(maxLength=320)

IDENTITY = {
    "server_public_key": string(),
    "server_signature": string(description="present when server_challenge was sent"),
    "name": string(),
    "public_url": string(),
    "user_id": string(),
    "is_admin": boolean(),
    "approval_required": boolean(),
    "status": string(enum=["approved", "pending"]),
}


def _login_answer(result: LoginResult, *, camel: bool) -> dict[str, Any]:
    s = services()
    out: dict[str, Any] = {
        "success": True,
        "server_public_key": s.server_key.public_key,
        "name": s.settings.name,
        "public_url": s.settings.public_url,
        "user_id": result.user.id,
        "is_admin": result.user.is_admin,
        "status": result.user.state,
        "approval_required": result.tokens is None,
    }
    if result.server_signature is not None:
        out["server_signature"] = result.server_signature
    if result.tokens is not None:
        access, refresh = (
            ("accessToken", "refreshToken") if camel else ("access_token", "refresh_token")
        )
        out[access] = result.tokens.access
        out[refresh] = result.tokens.refresh
        out["expires_at"] = result.tokens.access_expires_at * 1000
    return out


@route(
    bp,
    "POST",
    "/api/auth/create_session",
    tag="auth",
    auth="none",
    rate_limit=True,
    summary="Issue a challenge for a public key to sign.",
    body=obj({"public_key": PUBLIC_KEY}, {"email": EMAIL}),
    response=open_obj(success=boolean(), challenge=string(), expires_at=integer()),
)
async def create_session(body: dict[str, Any]) -> dict[str, Any]:
    challenge = await services().accounts.create_challenge(body["public_key"])
    return {"success": True, "challenge": challenge.text, "expires_at": challenge.expires_at}


@route(
    bp,
    "POST",
    "/api/auth/verify_session",
    tag="auth",
    auth="none",
    rate_limit=True,
    errors=(401, 403),
    summary="Complete a login: answer with accessToken and refreshToken.",
    description="The first account on a fresh server becomes the admin. Later accounts "
    "wait for approval (approval_required: true, no tokens) unless auto_approve is set.",
    body=obj(
        {"public_key": PUBLIC_KEY, "message": MESSAGE, "signature": SIGNATURE},
        {"server_challenge": SERVER_CHALLENGE, "email": EMAIL},
    ),
    response=open_obj(
        success=boolean(),
        accessToken=string(),
        refreshToken=string(),
        expires_at=integer(),
        **IDENTITY,
    ),
)
async def verify_session(body: dict[str, Any]) -> dict[str, Any]:
    result = await services().accounts.login(
        public_key=body["public_key"],
        message=body["message"],
        signature=body["signature"],
        server_challenge=body.get("server_challenge"),
        email=body.get("email"),
    )
    return _login_answer(result, camel=True)


@route(
    bp,
    "POST",
    "/api/auth/verify_key",
    tag="auth",
    auth="none",
    rate_limit=True,
    errors=(401, 403),
    summary="Verify a signed challenge; answer with access_token and refresh_token.",
    body=obj(
        {"public_key": PUBLIC_KEY, "message": MESSAGE, "signed_message": SIGNATURE},
        {"server_challenge": SERVER_CHALLENGE, "email": EMAIL},
    ),
    response=open_obj(
        success=boolean(),
        verified=boolean(),
        access_token=string(),
        refresh_token=string(),
        expires_at=integer(),
        **IDENTITY,
    ),
)
async def verify_key(body: dict[str, Any]) -> dict[str, Any]:
    result = await services().accounts.login(
        public_key=body["public_key"],
        message=body["message"],
        signature=body["signed_message"],
        server_challenge=body.get("server_challenge"),
        email=body.get("email"),
        signature_field="signed_message",
    )
    return {**_login_answer(result, camel=False), "verified": True}


@route(
    bp,
    "POST",
    "/api/auth/refresh_token",
    tag="auth",
    auth="refresh",
    rate_limit=True,
    summary="Rotate a refresh token (sent as the bearer) into a new token pair.",
    description="Presenting a refresh token that was already rotated revokes its whole "
    "family (reuse detection): the client must log in again.",
    response=open_obj(
        success=boolean(), accessToken=string(), refreshToken=string(), expires_at=integer()
    ),
)
async def refresh_token(token: str) -> dict[str, Any]:
    pair = await services().accounts.refresh(token)
    return {
        "success": True,
        "accessToken": pair.access,
        "refreshToken": pair.refresh,
        "expires_at": pair.access_expires_at * 1000,
    }


@route(
    bp,
    "POST",
    "/api/me",
    tag="auth",
    summary="The caller's profile, subscriptions, entitlements, usage and limits.",
    body=obj(),
    response=open_obj(
        success=boolean(),
        id=string(),
        public_key=string(),
        is_admin=boolean(),
        subscriptions={"type": "array"},
        entitlements={"type": "array"},
        usage={"type": "object"},
        limits={"type": "object"},
    ),
)
async def me(user: User, body: dict[str, Any]) -> dict[str, Any]:
    return _profile_answer(await services().accounts.profile(user))


def _profile_answer(profile: Profile) -> dict[str, Any]:
    user, limits = profile.user, profile.limits
    return {
        "success": True,
        "id": user.id,
        "user_id": user.id,
        "public_key": user.public_key,
        "email": user.email,
        "state": user.state,
        "is_admin": user.is_admin,
        "created_at": user.created_at,
        "approved_at": user.approved_at,
        # A self-hosted server has no billing: one plan, everything this server can do.
        "subscriptions": [{"plan": "selfhosted", "status": "active", "renews_at": None}],
        "entitlements": list(profile.entitlements),
        "usage": profile.usage,
        "limits": {
            "max_request_bytes": limits.max_request_bytes,
            "auth_rate_limit_per_minute": limits.auth_rate_limit_per_minute,
            "access_token_ttl_s": limits.access_token_ttl_s,
            "refresh_token_ttl_s": limits.refresh_token_ttl_s,
        },
    }
