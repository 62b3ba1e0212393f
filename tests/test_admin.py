"""Account administration as a service (services/admin.py), in process on both engines.

``test_cli.py`` drives the same actions through ``python -m heaper_trio users`` in a
subprocess; these check the rules themselves, and that the server's container offers them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient, LoginPending
from heaper_trio.errors import NotFound, StartupError
from heaper_trio.services.admin import open_user_admin
from heaper_trio.settings import Settings, load_settings
from tests.conftest import assert_error


async def test_admin_actions_on_a_pending_account(
    server: RunningServer, admin: HeaperClient, make_client: Callable[..., HeaperClient]
) -> None:
    users = server.services.admin
    bob = make_client()
    with pytest.raises(LoginPending):
        await bob.login()
    pending = await users.find(bob.public_key)
    assert pending.state == "pending" and not pending.is_admin
    assert {u.id for u in await users.list_users()} == {admin.user_id, pending.id}

    approved = await users.approve(bob.public_key)  # by public key ...
    assert (approved.id, approved.state) == (pending.id, "approved")
    await bob.login()
    assert (await bob.post("/api/me")).status_code == 200

    rejected = await users.reject(pending.id)  # ... or by id; rejecting logs out
    assert rejected.state == "rejected"
    assert_error(await bob.post("/api/me"), 401, "token_revoked")

    promoted = await users.make_admin(pending.id)  # approves as well
    assert (promoted.state, promoted.is_admin) == ("approved", True)
    await bob.login()
    assert (await bob.post("/api/me")).status_code == 200
    revoked = await users.revoke_tokens(bob.public_key)
    assert (revoked.state, revoked.is_admin) == ("approved", True)
    assert_error(await bob.post("/api/me"), 401, "token_revoked")

    with pytest.raises(NotFound) as unknown:
        await users.approve("nobody")
    assert unknown.value.code == "user_not_found"


async def test_admin_refuses_to_create_a_database(tmp_path: Path) -> None:
    settings: Settings = load_settings(environ={}, overrides={"data_dir": str(tmp_path / "d")})
    with pytest.raises(StartupError, match="no database in"):
        async with open_user_admin(settings):
            pass  # pragma: no cover - never reached
    assert not (tmp_path / "d").exists()
