"""On SQLite, ``python -m heaper_trio users revoke-tokens`` (another process writing the
database) reaches the server's open WebSockets within about a second, not at their 30 s
periodic check: the server polls the accounts' marks while sockets are open."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.protocol import messages as m
from heaper_trio.services.live import connection as live_connection
from heaper_trio.services.live.account_watch import moved, watch_accounts_forever

from .live_client import UNCLOSED_SOCKETS, collect_closed_sockets, live_client  # noqa: F401 (autouse)
from .test_admin_cli import run_cli, storage_flags
from .test_sync import ClientBlock, new_heap

pytestmark = [*UNCLOSED_SOCKETS]


def test_moved_names_each_account_whose_mark_changed() -> None:
    before = {"a": (1, "approved", True), "b": (1, "approved", False), "c": (2, "pending", False)}
    now = {"a": (2, "approved", True), "b": (1, "approved", False), "d": (1, "pending", False)}
    assert moved(before, now) == ["a", "c", "d"]
    assert moved(now, now) == []


class _Hub:
    def __init__(self) -> None:
        self.keepalive: set[object] = set()
        self.user_sinks: dict[str, set[object]] = {}
        self.rechecked: list[str] = []

    def recheck_account(self, user_id: str) -> None:
        self.rechecked.append(user_id)


class _Storage:
    """Marks read in turn; an exception in the list is raised by that read."""

    def __init__(self, *reads: Any) -> None:
        self.reads = list(reads)
        self.count = 0

    async def account_marks(self) -> Any:
        self.count += 1
        read = self.reads.pop(0) if len(self.reads) > 1 else self.reads[0]
        if isinstance(read, Exception):
            raise read
        return read


async def test_the_watch_reads_only_while_sockets_are_open_and_outlives_a_failed_read(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    a1, a2 = {"a": (1, "approved", False)}, {"a": (2, "approved", False)}
    storage, hub = _Storage(a1, a1, OSError("disk"), OSError("disk"), a2), _Hub()
    async with trio.open_nursery() as n:
        await n.start(watch_accounts_forever, storage, hub)  # the baseline
        await trio.sleep(10)
        assert storage.count == 1  # nobody connected: no reads
        hub.keepalive.add(object())
        await trio.sleep(4.5)  # a1, two failures, then a2
        n.cancel_scope.cancel()
    assert hub.rechecked == ["a"]
    assert len([r for r in caplog.records if "retrying" in r.getMessage()]) == 1


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
