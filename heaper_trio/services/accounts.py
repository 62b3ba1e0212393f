"""Key-based accounts: challenges, login, refresh rotation, authentication, profile.

Order matters for "bad input stores nothing": everything that can be checked without the
database (key and signature encodings, the signature itself) is checked before the one
storage call that consumes the challenge.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from heaper_trio.errors import Forbidden, NotFound, Unauthorized
from heaper_trio.keys import KeyPair, b58decode_exact, canonical_public_key, verify_signature
from heaper_trio.records import RefreshOutcome, User
from heaper_trio.services.tokens import TokenPair, TokenService
from heaper_trio.settings import Settings
from heaper_trio.storage.base import Storage


@dataclass(frozen=True)
class LoginResult:
    user: User
    tokens: TokenPair | None  # None while the account waits for approval
    created: bool
    server_signature: str | None


@dataclass(frozen=True, slots=True)
class Challenge:
    text: str  # what the client signs
    expires_at: int  # Unix ms


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits in force for the caller (one set per server: no plans)."""

    max_request_bytes: int
    auth_rate_limit_per_minute: int
    access_token_ttl_s: int
    refresh_token_ttl_s: int


@dataclass(frozen=True, slots=True)
class Profile:
    user: User
    usage: dict[str, Any]  # real counts of what the user holds (``Storage.usage``)
    entitlements: tuple[str, ...]  # capabilities this server implements for this account
    limits: Limits


class AccountService:
    def __init__(
        self,
        storage: Storage,
        tokens: TokenService,
        server_key: KeyPair,
        settings: Settings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.tokens = tokens
        self.server_key = server_key
        self.settings = settings
        self.clock = clock

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def create_challenge(self, public_key: str) -> Challenge:
        """A fresh challenge for ``public_key``, with its expiry."""
        key = canonical_public_key(public_key)
        now = self._now_ms()
        challenge = f"heaper-login:{secrets.token_urlsafe(32)}"
        expires_at = now + self.settings.challenge_ttl * 1000
        await self.storage.create_challenge(challenge, key, now, expires_at)
        return Challenge(challenge, expires_at)

    async def login(
        self,
        *,
        public_key: str,
        message: str,
        signature: str,
        server_challenge: str | None,
        email: str | None,
        signature_field: str = "signature",
    ) -> LoginResult:
        key = canonical_public_key(public_key)
        sig = b58decode_exact(signature, 64, "signature", signature_field)
        if not verify_signature(b58decode_exact(key, 32, "public_key"), message, sig):
            raise Unauthorized("signature does not verify for this key", code="signature_mismatch")
        now_s = self.clock()
        row = self.tokens.new_refresh_row(now_s)
        outcome = await self.storage.complete_login(
            challenge=message,
            public_key=key,
            now=int(now_s * 1000),
            new_user_id=uuid.uuid4().hex,
            email=email,
            auto_approve=self.settings.auto_approve,
            refresh=row,
        )
        if outcome.problem is not None:
            raise Unauthorized(_CHALLENGE_TEXT[outcome.problem.value], code=outcome.problem.value)
        user = outcome.user
        assert user is not None
        if user.state == "rejected":
            raise Forbidden("this account was rejected by an admin", code="account_rejected")
        tokens = None
        if outcome.token_issued:
            tokens = self.tokens.issue(user.id, user.token_generation, now_s, row)
        server_sig = self.server_key.sign(server_challenge) if server_challenge else None
        return LoginResult(user, tokens, outcome.created, server_sig)

    async def refresh(self, refresh_token: str) -> TokenPair:
        claims = self.tokens.decode(refresh_token, "refresh")
        user = await self._live_user(claims.user_id, claims.generation)
        now_s = self.clock()
        pair = self.tokens.issue(
            user.id, user.token_generation, now_s, ends_at=claims.session_ends_at
        )
        result = await self.storage.rotate_refresh_token(
            jti=claims.jti, user_id=user.id, now=int(now_s * 1000), new=pair.refresh_row
        )
        if result.outcome is not RefreshOutcome.ok:
            raise Unauthorized(_REFRESH_TEXT[result.outcome], code=result.outcome.value)
        return pair

    async def authenticate(self, access_token: str) -> User:
        claims = self.tokens.decode(access_token, "access")
        return await self._live_user(claims.user_id, claims.generation)

    async def _live_user(self, user_id: str, generation: int) -> User:
        user = await self.storage.get_user(user_id)
        if user is None:
            raise Unauthorized("the account of this token no longer exists", code="token_invalid")
        if user.token_generation != generation:
            raise Unauthorized("this token was revoked", code="token_revoked")
        if user.state != "approved":
            raise Forbidden(f"the account is {user.state}", code=f"account_{user.state}")
        return user

    async def profile(self, user: User) -> Profile:
        """``POST /api/me``: identity, real usage counts, entitlements and the limits in force."""
        usage = await self.storage.usage(user.id, self._now_ms())
        return Profile(
            user,
            usage,
            # Only what this server implements; each capability adds its name when it lands.
            ENTITLEMENTS + (("admin",) if user.is_admin else ()),
            Limits(
                self.settings.max_request_bytes,
                self.settings.auth_rate_limit,
                self.settings.access_token_ttl,
                self.settings.refresh_token_ttl,
            ),
        )


async def find_user(storage: Storage, ident: str) -> User:
    """A user named by id or by base58 public key (the CLI's way of naming accounts)."""
    user = await storage.get_user(ident) or await storage.get_user_by_key(ident)
    if user is None:
        raise NotFound(f"no user with id or public key {ident!r}", code="user_not_found")
    return user


ENTITLEMENTS = ("selfhosted", "key_login")

_CHALLENGE_TEXT = {
    "challenge_unknown": "this challenge was not issued by this server; call create_session",
    "challenge_foreign": "this challenge was issued for another public key",
    "challenge_expired": "this challenge has expired; call create_session again",
    "challenge_used": "this challenge was already used; call create_session again",
}
_REFRESH_TEXT = {
    RefreshOutcome.unknown: "refresh token is not known to this server",
    RefreshOutcome.reused: (
        "refresh token was already used; every refresh token of this login is revoked"
    ),
    RefreshOutcome.revoked: "refresh token was revoked",
    RefreshOutcome.expired: "refresh token has expired",
}
