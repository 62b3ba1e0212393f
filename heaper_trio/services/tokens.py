"""Access and refresh tokens: EdDSA JWTs signed with the server key.

Claims: ``sub`` (user id), ``typ`` (access | refresh), ``iat``, ``exp``, ``jti``, ``gen`` (the
account's token generation: revoking bumps it, so every older token dies at once), ``iss``
(the server's public key) and ``aud``. Only ``EdDSA`` is accepted, which shuts out ``alg: none``
and HS256-with-the-public-key tricks; PyJWT enforces the list.

A session that must end at a fixed time (an admin link's) carries ``end`` in its refresh
token: a refresh copies it over and issues no token that outlives it, where an ordinary
session's refresh token lasts ``refresh_ttl`` from each rotation. Being signed, ``end`` cannot
be dropped by the holder.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

import jwt

from heaper_trio.errors import Unauthorized
from heaper_trio.keys import KeyPair
from heaper_trio.records import NewRefreshToken

AUDIENCE = "heaper"
LEEWAY_S = 5  # clock skew between processes sharing a database
VERIFIED_CACHE_SIZE = 4096
# The ``typ`` claim. A Literal rather than an enum: it is compared with the claim's string and
# callers name it as one ("access"), which mypy then checks against these two.
TokenType = Literal["access", "refresh"]


@dataclass(frozen=True)
class Claims:
    user_id: str
    typ: TokenType
    jti: str
    generation: int
    issued_at: int  # Unix seconds
    expires_at: int
    session_ends_at: int | None = None  # Unix seconds: the ``end`` claim


@dataclass(frozen=True)
class TokenPair:
    access: str
    refresh: str
    refresh_row: NewRefreshToken
    access_expires_at: int  # Unix seconds


class TokenService:
    def __init__(self, key: KeyPair, *, access_ttl: int, refresh_ttl: int) -> None:
        self._key = key
        self._private = key.jwt_private_key()
        self._public = key.jwt_public_key()
        self.issuer = key.public_key
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        # token -> claims of tokens whose signature already verified. Verifying an Ed25519
        # JWT is the largest per-request cost; a client sends the same token for minutes.
        # Only the signature check is skipped: expiry is re-checked on every use, and
        # revocation is checked against the account by the caller.
        self._verified: OrderedDict[str, Claims] = OrderedDict()

    def _encode(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self._private, algorithm="EdDSA", headers={"kid": self.issuer})

    def new_refresh_row(self, now: float, ends_at: int | None = None) -> NewRefreshToken:
        """The stored half of a refresh token, made before the account is known (login)."""
        expires = int(now) + self.refresh_ttl
        return NewRefreshToken(
            jti=uuid.uuid4().hex,
            family=uuid.uuid4().hex,
            issued_at=int(now * 1000),
            expires_at=(expires if ends_at is None else min(expires, ends_at)) * 1000,
        )

    def issue(
        self,
        user_id: str,
        generation: int,
        now: float,
        row: NewRefreshToken | None = None,
        *,
        ends_at: int | None = None,
    ) -> TokenPair:
        """A token pair; with ``ends_at`` (Unix seconds) neither token outlives it, and the
        refresh token carries it (``end``) so that its rotations do not either."""
        row = row or self.new_refresh_row(now, ends_at)
        iat = int(now)
        access_exp = (
            iat + self.access_ttl if ends_at is None else min(iat + self.access_ttl, ends_at)
        )
        base = {"sub": user_id, "gen": generation, "iat": iat, "iss": self.issuer, "aud": AUDIENCE}
        access = self._encode({**base, "typ": "access", "exp": access_exp, "jti": uuid.uuid4().hex})
        end = {} if ends_at is None else {"end": ends_at}
        refresh = self._encode(
            {**base, **end, "typ": "refresh", "exp": row.expires_at // 1000, "jti": row.jti}
        )
        return TokenPair(access, refresh, row, access_exp)

    def decode(self, token: str, typ: TokenType) -> Claims:
        """Verify signature, expiry, issuer, audience and type; raise Unauthorized if any fail."""
        cached = self._verified.get(token)
        if cached is None:
            cached = self._decode(token)
            self._verified[token] = cached
            if len(self._verified) > VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)
        if cached.expires_at + LEEWAY_S < time.time():
            self._verified.pop(token, None)
            raise Unauthorized("token has expired", code="token_expired")
        if cached.typ != typ:
            raise Unauthorized(
                f"{_article(cached.typ)} token was sent where {_article(typ)} token is needed",
                code="token_wrong_type",
            )
        return cached

    def _decode(self, token: str) -> Claims:
        try:
            claims = jwt.decode(
                token,
                self._public,
                algorithms=["EdDSA"],
                audience=AUDIENCE,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"require": ["sub", "typ", "iat", "exp", "jti", "gen"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token has expired", code="token_expired") from None
        except jwt.InvalidTokenError as e:
            raise Unauthorized(f"token is not valid: {e}", code="token_invalid") from None
        gen, end = claims.get("gen"), claims.get("end")
        if (
            not _is_int(gen)
            or not (end is None or _is_int(end))
            or not isinstance(claims["jti"], str)
            or claims["typ"] not in ("access", "refresh")
        ):
            raise Unauthorized("token claims are malformed", code="token_invalid")
        return Claims(
            user_id=claims["sub"],
            typ=claims["typ"],
            jti=claims["jti"],
            generation=gen,
            issued_at=int(claims["iat"]),
            expires_at=int(claims["exp"]),
            session_ends_at=end,
        )


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _article(word: object) -> str:
    text = str(word)
    return f"an {text}" if text[:1] in "aeiou" else f"a {text}"
