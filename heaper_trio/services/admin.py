"""Account administration: what ``python -m heaper_trio users ...`` does, as a service.

The command line parses and prints; the rules (how a user is named, that making an admin also
approves, one timestamp per action) live here, next to the other account rules, so a future
admin API gets the same behaviour rather than a second copy. ``open_user_admin`` opens just
storage, not the whole server: administering accounts must work while no server runs, and
must not claim the server key or start background work.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

from heaper_trio.errors import Conflict, NotFound, StartupError
from heaper_trio.records import User
from heaper_trio.services.accounts import find_user
from heaper_trio.settings import Settings
from heaper_trio.storage import Storage, database_exists
from heaper_trio.storage.errors import LastAdmin


class UserAdmin:
    """Approve, reject, promote, demote and log out accounts named by id or base58 public key.

    Two guards keep a server administrable. An action that would leave no approved admin is
    refused (409 ``last_admin``), from the command line too. An admin acting through the admin
    page (``actor``) cannot reject or demote their own account (409 ``own_account``): that
    takes another admin, or the command line, so nobody locks themselves out by a misclick.
    The last-admin check is storage's (``keep_an_admin``), in the transaction that writes,
    so two admins demoting each other at the same instant leave one admin, through one
    process or several, or the command line, on either engine.
    """

    def __init__(
        self,
        storage: Storage,
        clock: Callable[[], float] = time.time,
        on_revoked: Callable[[str], None] | None = None,
    ) -> None:
        self.storage = storage
        self.clock = clock
        # Told the id of an account whose tokens just died, so open WebSockets of it in this
        # process re-check at once (the hub) instead of at their next periodic check.
        self.on_revoked = on_revoked

    def _now(self) -> int:
        return int(self.clock() * 1000)

    async def list_users(self) -> list[User]:
        return await self.storage.list_users()

    async def find(self, ident: str) -> User:
        """The account named ``ident`` (id or public key); ``NotFound`` (user_not_found)."""
        return await find_user(self.storage, ident)

    async def approve(self, ident: str) -> User:
        user = await self.find(ident)
        return _still_there(
            await self.storage.set_user_state(user.id, "approved", self._now()), ident
        )

    async def reject(self, ident: str, actor: User | None = None) -> User:
        """Refuse the account; storage also revokes every token it holds."""
        user = await self.find(ident)
        self._not_own(user, actor, "reject")
        with _last_admin_refused():
            done = await self.storage.set_user_state(
                user.id, "rejected", self._now(), keep_an_admin=True
            )
        done = _still_there(done, ident)
        self._revoked(done.id)
        return done

    async def make_admin(self, ident: str) -> User:
        """Grant admin rights; an admin who cannot log in would be no admin, so approve too."""
        user = await self.find(ident)
        await self.storage.set_user_state(user.id, "approved", self._now())
        return _still_there(await self.storage.set_admin(user.id, True), ident)

    async def remove_admin(self, ident: str, actor: User | None = None) -> User:
        """Take admin rights away; the account stays approved and keeps its tokens."""
        user = await self.find(ident)
        self._not_own(user, actor, "remove the admin rights of")
        with _last_admin_refused():
            done = await self.storage.set_admin(user.id, False, keep_an_admin=True)
        return _still_there(done, ident)

    async def revoke_tokens(self, ident: str) -> User:
        user = await self.find(ident)
        done = _still_there(await self.storage.revoke_user_tokens(user.id, self._now()), ident)
        self._revoked(done.id)
        return done

    def _revoked(self, user_id: str) -> None:
        if self.on_revoked is not None:
            self.on_revoked(user_id)

    @staticmethod
    def _not_own(user: User, actor: User | None, what: str) -> None:
        if actor is not None and actor.id == user.id:
            raise Conflict(
                f"you cannot {what} your own account here; another admin, or the command "
                "line (python -m heaper_trio users), can",
                code="own_account",
            )


@contextmanager
def _last_admin_refused() -> Iterator[None]:
    try:
        yield
    except LastAdmin as e:
        raise Conflict(
            f"{e.user_id} is the last admin; make another account admin first",
            code="last_admin",
        ) from None


def _still_there(user: User | None, ident: str) -> User:
    """Storage answers None when the row vanished between lookup and update."""
    if user is None:
        raise NotFound(f"no user with id or public key {ident!r}", code="user_not_found")
    return user


@asynccontextmanager
async def open_user_admin(settings: Settings) -> AsyncIterator[UserAdmin]:
    """A ``UserAdmin`` over the configured database, refusing to create one: an admin command
    pointed at the wrong directory should say so, not leave an empty database behind.
    PostgreSQL needs a trio-asyncio loop open around the caller, as for the server."""
    from heaper_trio.services.container import open_storage  # container holds a UserAdmin

    if not database_exists(settings):
        raise StartupError(
            f"data_dir: no database in {settings.data_path}; pass the server's "
            "--data-dir (or start the server once first)"
        )
    async with open_storage(settings) as storage:
        yield UserAdmin(storage)
