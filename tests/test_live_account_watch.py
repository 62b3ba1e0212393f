"""On SQLite, ``python -m heaper_trio users revoke-tokens`` (another process writing the
database) reaches the server's open WebSockets within about a second, not at their 30 s
periodic check: the server polls the accounts' marks while sockets are open."""

from __future__ import annotations

import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.protocol import messages as m
from heaper_trio.services.live import connection as live_connection
from heaper_trio.services.live.account_watch import moved

from .live_client import UNCLOSED_SOCKETS, collect_closed_sockets, live_client  # noqa: F401 (autouse)
from .test_admin_cli import run_cli, storage_flags
from .test_sync import ClientBlock, new_heap

pytestmark = [*UNCLOSED_SOCKETS]


def test_moved_names_each_account_whose_mark_changed() -> None:
    before = {"a": (1, "approved", True), "b": (1, "approved", False), "c": (2, "pending", False)}
    now = {"a": (2, "approved", True), "b": (1, "approved", False), "d": (1, "pending", False)}
    assert moved(before, now) == ["a", "c", "d"]
    assert moved(now, now) == []


@pytest.mark.engines("sqlite")  # PostgreSQL hears it by NOTIFY (test_admin_routes.py)
async def test_a_revoke_from_the_command_line_closes_live_documents_within_seconds(
    server: RunningServer, admin: HeaperClient
) -> None:
    assert live_connection.RECHECK_ACCOUNT_S >= 30  # the periodic check would be too late
    heap = await new_heap(admin)
    address = f"{heap['id']}:{ClientBlock().id}"
    async with live_client(server.url) as a:
        await a.sync(address, admin.access_token)
        assert admin.user_id
        code, _, err = await run_cli(
            "users", "revoke-tokens", admin.user_id, *storage_flags(server)
        )
        assert code == 0, err
        start = trio.current_time()
        denied = await a.expect(m.PermissionDenied, timeout=5)
        assert denied.reason == "token_revoked"
        assert trio.current_time() - start < 5
