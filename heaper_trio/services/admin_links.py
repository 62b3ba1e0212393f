"""Admin links: ``python -m heaper_trio admin-link`` prints a URL that opens the admin page
signed in, once, for a few minutes.

An admin logs in with a key, which a browser does not hold; the command line (run by whoever
runs the server) can vouch for an admin instead. The link's secret travels in the URL's
fragment (``/admin#<secret>``), which browsers send to no server: it stays out of access logs
and Referer headers. Storage keeps only its SHA-256, and using it consumes it in the same
transaction that stores the session's refresh token (``Storage.use_admin_link``), so a link
signs in exactly once, however many tabs race for it.

The session a link opens is short: it ends ``admin_session_ttl`` (2 hours by default) after
the sign-in, refreshes included (the tokens' ``end`` claim, ``services/tokens.py``). A browser
tab left signed in as an admin is worth more to whoever finds it than an ordinary session, and
re-linking is one command for whoever runs the server.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from heaper_trio.errors import Forbidden, Unauthorized
from heaper_trio.records import User
from heaper_trio.records.admin_links import AdminLinkProblem
from heaper_trio.services.accounts import find_user
from heaper_trio.services.tokens import TokenPair, TokenService
from heaper_trio.settings import Settings
from heaper_trio.storage import Storage

LINK_TTL_S = 600
SECRET_BYTES = 32
PAGE_PATH = "/admin"


def link_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AdminLink:
    url: str
    user: User
    expires_at: int  # Unix ms


def base_url(settings: Settings) -> str:
    """Where a browser reaches this server: ``public_url``, else the address it listens on."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = settings.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


async def create_admin_link(
    storage: Storage,
    settings: Settings,
    ident: str | None = None,
    *,
    ttl_s: int = LINK_TTL_S,
    clock: Callable[[], float] = time.time,
) -> AdminLink:
    """A new link for the admin named ``ident``, or the oldest approved admin."""
    if ident is not None:
        user = await find_user(storage, ident)
        if not (user.is_admin and user.state == "approved"):
            raise Forbidden(
                f"{user.id} is not an approved admin (python -m heaper_trio users make-admin)",
                code="not_admin",
            )
    else:
        admins = [u for u in await storage.list_users() if u.is_admin and u.state == "approved"]
        if not admins:
            raise Forbidden(
                "no admin yet: the first account to log in becomes the admin", code="not_admin"
            )
        user = admins[0]
    secret = secrets.token_urlsafe(SECRET_BYTES)
    now = int(clock() * 1000)
    expires_at = now + ttl_s * 1000
    await storage.create_admin_link(link_hash(secret), user.id, now, expires_at)
    return AdminLink(f"{base_url(settings)}{PAGE_PATH}#{secret}", user, expires_at)


_PROBLEM_TEXT = {
    AdminLinkProblem.unknown: "this admin link is not known to this server",
    AdminLinkProblem.used: "this admin link was used already; run `python -m heaper_trio "
    "admin-link` for a new one",
    AdminLinkProblem.expired: "this admin link has expired; run `python -m heaper_trio "
    "admin-link` for a new one",
    AdminLinkProblem.not_admin: "the account of this admin link is no longer an admin",
}


class AdminSignIn:
    """Turns an admin link into a token pair of its admin, for ``session_s`` at most."""

    def __init__(
        self,
        storage: Storage,
        tokens: TokenService,
        session_s: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.tokens = tokens
        self.session_s = session_s
        self.clock = clock

    async def sign_in(self, secret: str) -> tuple[User, TokenPair]:
        now_s = self.clock()
        ends_at = int(now_s) + self.session_s
        row = self.tokens.new_refresh_row(now_s, ends_at)
        outcome = await self.storage.use_admin_link(link_hash(secret), int(now_s * 1000), row)
        if outcome.problem is AdminLinkProblem.not_admin:
            raise Forbidden(_PROBLEM_TEXT[outcome.problem], code=outcome.problem.value)
        if outcome.problem is not None:
            raise Unauthorized(_PROBLEM_TEXT[outcome.problem], code=outcome.problem.value)
        user = outcome.user
        assert user is not None
        return user, self.tokens.issue(user.id, user.token_generation, now_s, row, ends_at=ends_at)
