"""Account changes made outside this process reach its live sockets within about a second,
on an engine that tells no other process anything (SQLite).

PostgreSQL carries a user row's change to every process by NOTIFY (``watch_user_rows``). A
SQLite server is one process, but ``python -m heaper_trio users revoke-tokens`` (or
``reject``, ``remove-admin``) writes the same database from another: without this, its
revoke reached open WebSockets only at their periodic check (``RECHECK_ACCOUNT_S``, 30 s).
So once a second, and only while live sockets are open, the accounts' marks (token
generation, state, admin flag: ``Storage.account_marks``) are read and compared with the last
read; each account whose mark moved is re-checked now (``LiveHub.recheck_account``), which
closes its sockets if the token no longer holds. The cost is one small read a second while
anyone is connected, and nothing while nobody is. A change the server made itself is
re-checked twice, which is harmless: a re-check only verifies a token.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Protocol

import trio

from heaper_trio.storage import Storage

POLL_S = 1.0
log = logging.getLogger(__name__)

Marks = dict[str, tuple[int, str, bool]]


class _Hub(Protocol):
    """What this needs of ``LiveHub``: whether any live socket is open, and the re-check."""

    @property
    def keepalive(self) -> Collection[object]: ...

    @property
    def user_sinks(self) -> Mapping[str, Collection[object]]: ...

    def recheck_account(self, user_id: str) -> None: ...


def moved(before: Marks, now: Marks) -> list[str]:
    """Accounts whose mark changed (or that went away) between two reads."""
    return sorted(uid for uid in before.keys() | now.keys() if before.get(uid) != now.get(uid))


async def watch_accounts_forever(
    storage: Storage,
    hub: _Hub,
    *,
    period: float = POLL_S,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The first read is the baseline, taken before reporting started, so a change made
    between start-up and the first socket is seen as well; marks are kept while idle for
    the same reason (a change then re-checks the account once its socket opens, harmlessly)."""
    failing = False
    marks = await storage.account_marks()
    task_status.started()
    while True:
        await trio.sleep(period)
        if not (hub.keepalive or hub.user_sinks):
            continue
        try:
            now = await storage.account_marks()
        except Exception:  # the database failing must not take the server down; read again
            if not failing:  # once per outage, not once a second
                log.exception("reading the accounts for live re-checks failed; retrying")
            failing = True
            continue
        failing = False
        for user_id in moved(marks, now):
            hub.recheck_account(user_id)
        marks = now
