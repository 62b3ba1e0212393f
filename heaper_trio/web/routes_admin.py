"""Admin routes (``/api/admin/...``): accounts with their usage and the actions on them, every
user's jobs, storage use, and the sign-in of an admin link. The admin page (``/admin``) is
their client; the rules are in ``services/admin.py`` (shared with ``python -m heaper_trio
users``) and ``services/admin_console.py``."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, request

from heaper_trio.records import User
from heaper_trio.services.admin_console import ACTIONS, AccountRow
from heaper_trio.services.scans.service import KEEP_FINISHED_PER_USER
from heaper_trio.web.routes_jobs import SCAN
from heaper_trio.web.routing import route, services
from heaper_trio.web.schema import boolean, integer, obj, open_obj, parse_int, string

bp = Blueprint("admin", __name__)

USAGE = open_obj(sessions=integer(), heaps=integer(), blocks=integer(), document_bytes=integer())
ACCOUNT = open_obj(
    id=string(),
    public_key=string(),
    email={"type": ["string", "null"]},
    state=string(enum=["pending", "approved", "rejected"]),
    is_admin=boolean(),
    created_at=integer(),
    approved_at={"type": ["integer", "null"]},
    usage=USAGE,
)
USER_PARAM = {
    "account": string(
        pattern="^[A-Za-z0-9_-]{1,128}$", description="the account's id or base58 public key"
    ),
    "action": string(enum=list(ACTIONS)),
}
JOB = {**SCAN, "properties": {**SCAN["properties"], "user_id": string()}}
JOBS_LIMIT = integer(minimum=1, maximum=1000)


def account_json(row: AccountRow) -> dict[str, Any]:
    u = row.user
    return {
        "id": u.id,
        "public_key": u.public_key,
        "email": u.email,
        "state": u.state,
        "is_admin": u.is_admin,
        "created_at": u.created_at,
        "approved_at": u.approved_at,
        "usage": row.usage,
    }


@route(
    bp,
    "GET",
    "/api/admin/users",
    tag="admin",
    summary="Every account with its state, admin flag and usage (admins only).",
    description="403 not_admin for an account that is not an admin. `usage` is what "
    "POST /api/me shows the account itself: live sessions, heaps, blocks, document bytes.",
    response=open_obj(success=boolean(), users={"type": "array", "items": ACCOUNT}),
)
async def admin_users(user: User) -> dict[str, Any]:
    rows = await services().admin_console.accounts(user)
    return {"success": True, "users": [account_json(r) for r in rows]}


@route(
    bp,
    "POST",
    "/api/admin/users/{account}/{action}",
    tag="admin",
    errors=(404, 409),
    params=USER_PARAM,
    summary="approve, reject, make_admin, remove_admin or revoke_tokens an account (admins only).",
    description="`account` is an id or a base58 public key. approve lets a pending or rejected "
    "account log in; reject refuses it and revokes its tokens; make_admin grants admin "
    "rights (and approves); remove_admin takes them away (the account stays approved); "
    "revoke_tokens ends every session of the account at once (live connections too). "
    "403 not_admin, 404 user_not_found, 409 last_admin (the action would leave no approved "
    "admin), 409 own_account (reject or remove_admin of your own account: another admin or "
    "the command line can).",
    response=open_obj(success=boolean(), user=ACCOUNT),
)
async def admin_act(account: str, action: str, user: User) -> dict[str, Any]:
    row = await services().admin_console.act(user, action, account)
    return {"success": True, "user": account_json(row)}


@route(
    bp,
    "GET",
    "/api/admin/jobs",
    tag="admin",
    query={"limit": JOBS_LIMIT},
    summary="Scan and reindex jobs of every user in this server process, newest first, and "
    "the media (thumbnail) counters (admins only).",
    description=f"Running jobs and those finished in the last day (at most "
    f"{KEEP_FINISHED_PER_USER} per user); each carries its `user_id`. `limit` 1-1000, "
    "default 100. With --workers, each process knows its own jobs.",
    response=open_obj(
        success=boolean(),
        jobs={"type": "array", "items": JOB},
        media=open_obj(
            jobs=integer(), cache_hits=integer(), joined=integer(), failed_fast=integer()
        ),
    ),
)
async def admin_jobs(user: User) -> dict[str, Any]:
    limit = parse_int(request.args.get("limit", "100"), JOBS_LIMIT, "query.limit")
    return {"success": True, **await services().admin_console.jobs(user, limit)}


@route(
    bp,
    "GET",
    "/api/admin/storage",
    tag="admin",
    summary="Storage use: totals over every account and bytes per folder of the data "
    "directory (admins only).",
    description="`totals`: heaps, blocks, document_bytes, sessions summed over accounts; "
    "`data_dir.bytes`: bytes under each top-level entry of the data directory (the database "
    "file on SQLite, files, thumbnails, uploads, ...); `partial` when the walk stopped early "
    "(more than 200,000 entries).",
    response=open_obj(
        success=boolean(),
        engine=string(),
        users=integer(),
        totals=USAGE,
        data_dir=open_obj(
            path=string(),
            bytes={"type": "object", "additionalProperties": integer()},
            partial=boolean(),
        ),
    ),
)
async def admin_storage(user: User) -> dict[str, Any]:
    return {"success": True, **await services().admin_console.storage_use(user)}


@route(
    bp,
    "POST",
    "/api/admin/session",
    tag="admin",
    auth="none",
    rate_limit=True,
    errors=(401, 403),
    summary="Sign in with an admin link (python -m heaper_trio admin-link): answer with an "
    "ordinary token pair of its admin.",
    description="`link` is the secret after `#` in the link. A link signs in once, within "
    "10 minutes of its making: 401 admin_link_unknown, admin_link_used, admin_link_expired; "
    "403 admin_link_not_admin (its account is no longer an approved admin). The tokens "
    "refresh at POST /api/auth/refresh_token, but the session ends 2 hours after the sign-in, "
    "refreshes included: no token it yields outlives that (then 401 token_expired; re-link).",
    body=obj({"link": string(minLength=1, maxLength=256)}),
    response=open_obj(
        success=boolean(),
        user_id=string(),
        public_key=string(),
        accessToken=string(),
        refreshToken=string(),
        expires_at=integer(),
    ),
)
async def admin_session(body: dict[str, Any]) -> dict[str, Any]:
    user, tokens = await services().admin_sign_in.sign_in(body["link"])
    return {
        "success": True,
        "user_id": user.id,
        "public_key": user.public_key,
        "accessToken": tokens.access,
        "refreshToken": tokens.refresh,
        "expires_at": tokens.access_expires_at * 1000,
    }
