"""The admin routes (``/api/admin/...``) and the admin page's files, over HTTP, both engines:
admins only (403 ``not_admin``), unknown accounts 404, bad input 400, the last-admin and
own-account guards, admin links (single use, expiry), and a revocation that reaches an open
WebSocket at once rather than at the next periodic check."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
import trio
from trio_websocket import ConnectionClosed

from heaper_trio.aio import open_asyncio_loop
from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient, LoginPending
from heaper_trio.errors import Conflict
from heaper_trio.keys import SERVER_KEY_FILE
from heaper_trio.protocol import messages as m
from heaper_trio.services.admin import open_user_admin
from heaper_trio.services.admin_links import create_admin_link
from heaper_trio.web.routes_docs import CSP
from tests.conftest import StartServer, assert_error

from .live_client import UNCLOSED_SOCKETS, collect_closed_sockets, live_client  # noqa: F401
from .test_sync import ClientBlock, new_heap

pytestmark = [*UNCLOSED_SOCKETS]

ACTION = "/api/admin/users/{}/{}"


async def pending(make_client: Callable[..., HeaperClient]) -> HeaperClient:
    client = make_client()
    with pytest.raises(LoginPending):
        await client.login()
    return client


async def test_admin_routes_refuse_non_admins_and_bad_input(
    server: RunningServer, admin: HeaperClient, eve: HeaperClient, http: httpx.AsyncClient
) -> None:
    routes = [
        ("GET", "/api/admin/users"),
        ("GET", "/api/admin/jobs"),
        ("GET", "/api/admin/storage"),
        ("POST", ACTION.format(admin.user_id, "reject")),
        ("POST", ACTION.format(eve.user_id, "make_admin")),
    ]
    for method, path in routes:
        assert_error(await eve.request(method, path), 403, "not_admin")
        assert_error(await http.request(method, path), 401, "token_missing")
    users = await server.services.admin.list_users()
    assert [(u.id, u.is_admin, u.state) for u in users] == [
        (admin.user_id, True, "approved"),
        (eve.user_id, False, "approved"),
    ]

    assert_error(await admin.post(ACTION.format("nobody", "approve")), 404, "user_not_found")
    assert_error(await admin.post(ACTION.format(admin.user_id, "delete")), 400, "invalid_value")
    assert_error(await admin.post(ACTION.format("x" * 129, "approve")), 400, "invalid_value")
    assert_error(await admin.post(ACTION.format("a%00b", "approve")), 400, "invalid_value")
    assert_error(await admin.get("/api/admin/users/x/approve"), 405)
    for limit in ("0", "1001", "x", "-1"):
        assert_error(await admin.get(f"/api/admin/jobs?limit={limit}"), 400, "invalid_value")
    jobs = (await admin.get("/api/admin/jobs?limit=5")).json()
    users_jobs = [j for j in jobs["jobs"] if j["kind"] != "upload_expiry"]  # the system's
    assert users_jobs == [] and set(jobs["media"]) >= {"jobs", "cache_hits"}
    storage = (await admin.get("/api/admin/storage")).json()
    assert storage["users"] == 2 and storage["totals"]["sessions"] >= 2
    assert storage["data_dir"]["partial"] is False
    assert storage["data_dir"]["bytes"][SERVER_KEY_FILE] > 0
    if storage["engine"] == "sqlite":
        assert storage["data_dir"]["bytes"]["heaper.sqlite3"] > 0
    for body in (None, {}, {"link": ""}, {"link": 5}, {"link": "x", "more": 1}):
        r = await admin.http.post("/api/admin/session", json=body)
        assert r.status_code == 400, (body, r.text)

    # Two admins demoting each other at once leave one (the guard takes turns).
    await server.services.admin.make_admin(eve.public_key)
    statuses: dict[str, int] = {}

    async def demote(actor: HeaperClient, other: HeaperClient) -> None:
        r = await actor.post(ACTION.format(other.user_id, "remove_admin"))
        statuses[actor.public_key] = r.status_code

    async with trio.open_nursery() as n:
        n.start_soon(demote, admin, eve)
        n.start_soon(demote, eve, admin)
    assert sorted(statuses.values()) in ([200, 403], [200, 409])  # the loser: no admin, or last
    users = await server.services.admin.list_users()
    assert [u.is_admin for u in users].count(True) == 1


async def test_admin_lists_and_acts_on_accounts(
    server: RunningServer, admin: HeaperClient, make_client: Callable[..., HeaperClient]
) -> None:
    await new_heap(admin)
    bob = await pending(make_client)
    r = await admin.get("/api/admin/users")
    assert r.status_code == 200, r.text
    rows = {u["public_key"]: u for u in r.json()["users"]}
    me, row = rows[admin.public_key], rows[bob.public_key]
    assert (me["is_admin"], me["state"], me["usage"]["heaps"]) == (True, "approved", 1)
    assert me["usage"]["blocks"] >= 1 and me["usage"]["sessions"] >= 1
    assert (row["state"], row["is_admin"], row["usage"]["heaps"]) == ("pending", False, 0)

    answer = (await admin.post(ACTION.format(bob.public_key, "approve"))).json()  # by key
    assert (answer["user"]["id"], answer["user"]["state"]) == (row["id"], "approved")
    await bob.login()
    assert (await bob.post("/api/me")).status_code == 200

    answer = (await admin.post(ACTION.format(row["id"], "revoke_tokens"))).json()  # by id
    assert answer["user"]["state"] == "approved"
    assert_error(await bob.post("/api/me"), 401, "token_revoked")
    await bob.login()
    assert (await admin.post(ACTION.format(row["id"], "reject"))).json()["user"]["state"] == (
        "rejected"
    )
    assert_error(await bob.post("/api/me"), 401, "token_revoked")

    promoted = (await admin.post(ACTION.format(row["id"], "make_admin"))).json()["user"]
    assert (promoted["state"], promoted["is_admin"]) == ("approved", True)
    await bob.login()
    assert (await bob.get("/api/admin/users")).status_code == 200  # an admin now
    demoted = (await bob.post(ACTION.format(admin.user_id, "remove_admin"))).json()["user"]
    assert (demoted["is_admin"], demoted["state"]) == (False, "approved")
    assert_error(await admin.get("/api/admin/users"), 403, "not_admin")  # at once

    # bob is the last admin now: nobody can take that away, bob least of all
    assert_error(await bob.post(ACTION.format(row["id"], "remove_admin")), 409, "own_account")
    assert_error(await bob.post(ACTION.format(row["id"], "reject")), 409, "own_account")
    with pytest.raises(Conflict) as last:  # the command line's way: no actor
        await server.services.admin.remove_admin(row["id"])
    assert last.value.code == "last_admin"
    with pytest.raises(Conflict):
        await server.services.admin.reject(bob.public_key)
    assert (await bob.post(ACTION.format(row["id"], "approve"))).status_code == 200  # no-op
    assert (await bob.post(ACTION.format(row["id"], "revoke_tokens"))).status_code == 200
    assert_error(await bob.get("/api/admin/users"), 401, "token_revoked")  # own: allowed


async def test_an_admin_link_signs_in_once(
    server: RunningServer, admin: HeaperClient, eve: HeaperClient, http: httpx.AsyncClient
) -> None:
    services = server.services
    link = await create_admin_link(services.storage, services.settings)
    assert link.user.id == admin.user_id and "/admin#" in link.url
    secret = link.url.split("#", 1)[1]

    r = await http.post("/api/admin/session", json={"link": secret})
    assert r.status_code == 200, r.text
    signed_in = r.json()
    assert signed_in["user_id"] == admin.user_id
    bearer = {"Authorization": f"Bearer {signed_in['accessToken']}"}
    assert (await http.get("/api/admin/users", headers=bearer)).status_code == 200
    refreshed = await http.post(
        "/api/auth/refresh_token", headers={"Authorization": f"Bearer {signed_in['refreshToken']}"}
    )
    assert refreshed.status_code == 200, refreshed.text

    assert_error(
        await http.post("/api/admin/session", json={"link": secret}), 401, "admin_link_used"
    )
    assert_error(
        await http.post("/api/admin/session", json={"link": "nope"}), 401, "admin_link_unknown"
    )
    old = await create_admin_link(services.storage, services.settings, clock=lambda: 1000.0)
    expired = await http.post("/api/admin/session", json={"link": old.url.split("#", 1)[1]})
    assert "expired" in assert_error(expired, 401, "admin_link_expired")["message"]

    with pytest.raises(Exception) as not_admin:  # only admins get links
        await create_admin_link(services.storage, services.settings, eve.public_key)
    assert getattr(not_admin.value, "code", None) == "not_admin"
    await services.admin.make_admin(eve.public_key)
    eves = await create_admin_link(services.storage, services.settings, eve.user_id)
    await services.admin.remove_admin(eve.user_id)
    r = await http.post("/api/admin/session", json={"link": eves.url.split("#", 1)[1]})
    assert_error(r, 403, "admin_link_not_admin")


def _claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


async def test_an_admin_link_session_ends_within_hours_refreshes_included(
    server: RunningServer,
    admin: HeaperClient,
    http: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = server.services
    session_s = services.settings.admin_session_ttl
    assert session_s == 2 * 3600  # the default

    async def sign_in(at: float) -> dict[str, Any]:
        monkeypatch.setattr(services.admin_sign_in, "clock", lambda: at)
        link = await create_admin_link(services.storage, services.settings)
        r = await http.post("/api/admin/session", json={"link": link.url.split("#", 1)[1]})
        assert r.status_code == 200, r.text
        return dict(r.json())

    # Signed in long enough ago that a minute of the session is left.
    at = time.time() - session_s + 60
    end = int(at) + session_s
    tokens = await sign_in(at)
    refresh = _claims(tokens["refreshToken"])
    assert refresh["end"] == end and refresh["exp"] <= end
    assert _claims(tokens["accessToken"])["exp"] <= end
    r = await http.post(
        "/api/auth/refresh_token", headers={"Authorization": f"Bearer {tokens['refreshToken']}"}
    )
    assert r.status_code == 200, r.text
    rotated = _claims(r.json()["refreshToken"])
    assert rotated["end"] == end and rotated["exp"] <= end  # a refresh does not extend it
    assert _claims(r.json()["accessToken"])["exp"] <= end
    # An ordinary login's refresh token lasts its whole refresh_ttl and has no end.
    ordinary = _claims(admin.refresh_token or "")
    assert "end" not in ordinary and ordinary["exp"] > end + 3600

    # Past its end, neither token is taken.
    over = await sign_in(time.time() - session_s - 60)
    bearer = {"Authorization": f"Bearer {over['accessToken']}"}
    assert_error(await http.get("/api/admin/users", headers=bearer), 401, "token_expired")
    r = await http.post(
        "/api/auth/refresh_token", headers={"Authorization": f"Bearer {over['refreshToken']}"}
    )
    assert_error(r, 401, "token_expired")


@pytest.mark.engines("sqlite")  # a setting read once; the session's storage is tested above
async def test_the_admin_session_length_is_a_setting(start_server: StartServer) -> None:
    server = await start_server(admin_session_ttl=600)
    async with HeaperClient(server.url) as first, httpx.AsyncClient(base_url=server.url) as http:
        await first.login()  # the first account: the admin
        link = await create_admin_link(server.services.storage, server.services.settings)
        r = await http.post("/api/admin/session", json={"link": link.url.split("#", 1)[1]})
        assert r.status_code == 200, r.text
    refresh = _claims(r.json()["refreshToken"])
    assert refresh["end"] - 600 <= time.time() <= refresh["end"] - 590
    assert refresh["exp"] <= refresh["end"]


@pytest.mark.engines("sqlite")  # static files: no storage involved
async def test_the_admin_page_ships_its_files_under_a_strict_policy(
    http: httpx.AsyncClient,
) -> None:
    page = await http.get("/admin")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
    assert '<script type="module" src="admin/admin.mjs">' in page.text
    for name, media_type in (("admin.mjs", "text/javascript"), ("admin.css", "text/css")):
        r = await http.get(f"/admin/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(media_type)
        assert "innerHTML" not in r.text  # every server string goes in as text
        again = await http.get(f"/admin/{name}", headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304


@pytest.mark.engines("sqlite")  # the hub; on PostgreSQL the NOTIFY path is tested below
async def test_revoking_reaches_an_open_websocket_at_once(
    server: RunningServer, admin: HeaperClient, eve: HeaperClient
) -> None:
    """Without the hub's re-check the socket would keep its document until the periodic
    check (RECHECK_ACCOUNT_S, 30 s)."""
    heap = await new_heap(eve)
    address = f"{heap['id']}:{ClientBlock().id}"
    async with live_client(server.url) as a, live_client(server.url, "/api/ws") as legacy:
        assert eve.access_token
        await a.sync(address, eve.access_token)
        await legacy.send_raw(json.dumps({"token": eve.access_token}))
        assert json.loads(await legacy.ws.get_message())["type"] == "authenticated"
        r = await admin.post(ACTION.format(eve.user_id, "revoke_tokens"))
        assert r.status_code == 200
        with trio.fail_after(3):
            denied = await a.expect(m.PermissionDenied)
        assert denied.reason == "token_revoked"
        with trio.fail_after(3), pytest.raises(ConnectionClosed) as closed:
            await legacy.ws.get_message()  # the deprecated /api/ws: closed, 4401
        assert (closed.value.reason.code, closed.value.reason.reason) == (4401, "token_revoked")


@pytest.mark.engines("postgres")  # SQLite: one server process, and no notification
async def test_a_revocation_by_the_command_line_reaches_open_websockets(
    server: RunningServer, eve: HeaperClient
) -> None:
    """``users revoke-tokens`` runs in a process of its own: the server hears the user row
    change by NOTIFY and re-checks eve's sockets then, not 30 s later."""
    heap = await new_heap(eve)
    address = f"{heap['id']}:{ClientBlock().id}"
    async with live_client(server.url) as a:
        assert eve.access_token and eve.user_id
        await a.sync(address, eve.access_token)
        async with open_asyncio_loop(), open_user_admin(server.services.settings) as cli_admin:
            await cli_admin.revoke_tokens(eve.user_id)
        with trio.fail_after(3):
            denied = await a.expect(m.PermissionDenied)
        assert denied.reason == "token_revoked"
