"""What the admin page (``/admin``) may ask: accounts with their usage, the actions on them,
the jobs of every user, and what the server stores. Only admins get answers (403
``not_admin``); account rules are ``UserAdmin``'s, shared with the command line.

Usage is read per account (one cheap statement each: the heap rows carry their counters, see
migration 0010), which suits a self-hosted server's tens or hundreds of accounts. Disk use is
a walk of the data directory in a thread, bounded by ``DISK_WALK_ENTRIES`` so a huge file
store answers quickly with ``partial: true`` rather than not at all.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from heaper_trio.errors import Forbidden
from heaper_trio.records import User
from heaper_trio.services.admin import UserAdmin
from heaper_trio.services.media.service import MediaService
from heaper_trio.services.scans.service import ScanService
from heaper_trio.storage import Storage

DISK_WALK_ENTRIES = 200_000


@dataclass(frozen=True)
class AccountRow:
    user: User
    usage: dict[str, Any]


def require_admin(user: User) -> None:
    if not user.is_admin:
        raise Forbidden("this route is for admins", code="not_admin")


class AdminConsole:
    def __init__(
        self,
        admin: UserAdmin,
        storage: Storage,
        scans: ScanService,
        media: MediaService,
        data_dir: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.admin = admin
        self.storage = storage
        self.scans = scans
        self.media = media
        self.data_dir = data_dir
        self.clock = clock

    async def accounts(self, actor: User) -> list[AccountRow]:
        require_admin(actor)
        now = int(self.clock() * 1000)
        return [
            AccountRow(u, await self.storage.usage(u.id, now))
            for u in await self.admin.list_users()
        ]

    async def act(self, actor: User, action: str, ident: str) -> AccountRow:
        """One of ``ACTIONS`` on the account named ``ident`` (id or public key)."""
        require_admin(actor)
        if action == "approve":
            user = await self.admin.approve(ident)
        elif action == "reject":
            user = await self.admin.reject(ident, actor)
        elif action == "make_admin":
            user = await self.admin.make_admin(ident)
        elif action == "remove_admin":
            user = await self.admin.remove_admin(ident, actor)
        else:
            assert action == "revoke_tokens", action
            user = await self.admin.revoke_tokens(ident)
        return AccountRow(user, await self.storage.usage(user.id, int(self.clock() * 1000)))

    async def jobs(self, actor: User, limit: int) -> dict[str, Any]:
        """Scan and reindex jobs of every user on every process (the jobs table), newest
        first, and this process's media (thumbnail) counters."""
        require_admin(actor)
        stats = self.media.stats
        return {
            "jobs": [
                {**j.as_dict(), "user_id": user_id}
                for user_id, j in await self.scans.every_job(limit)
            ],
            "media": {
                "jobs": stats.jobs,
                "cache_hits": stats.cache_hits,
                "joined": stats.joined,
                "failed_fast": stats.failed_fast,
            },
        }

    async def storage_use(self, actor: User) -> dict[str, Any]:
        """Totals over every account, and the bytes under each folder of the data directory."""
        require_admin(actor)
        rows = await self.accounts(actor)
        totals = {
            key: sum(int(r.usage.get(key, 0)) for r in rows)
            for key in ("heaps", "blocks", "document_bytes", "sessions")
        }
        disk, partial = await trio.to_thread.run_sync(_disk_use, self.data_dir, DISK_WALK_ENTRIES)
        return {
            "engine": self.storage.engine,
            "users": len(rows),
            "totals": totals,
            "data_dir": {"path": str(self.data_dir), "bytes": disk, "partial": partial},
        }


ACTIONS = ("approve", "reject", "make_admin", "remove_admin", "revoke_tokens")


def _disk_use(root: Path, max_entries: int) -> tuple[dict[str, int], bool]:
    """Bytes under each top-level entry of ``root`` (files at the top count under ``.``);
    links are not followed. True when the walk stopped at ``max_entries``."""
    out: dict[str, int] = {}
    seen = 0
    for top, dirs, files in os.walk(root, followlinks=False):
        rel = os.path.relpath(top, root)
        bucket = "." if rel == "." else rel.split(os.sep, 1)[0]
        for name in files:
            seen += 1
            if seen > max_entries:
                return out, True
            try:
                size = os.lstat(os.path.join(top, name)).st_size
            except OSError:  # gone meanwhile
                continue
            key = name if bucket == "." else bucket
            out[key] = out.get(key, 0) + size
        seen += len(dirs)
    return out, False
