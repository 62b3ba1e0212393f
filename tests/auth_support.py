"""The login handshake written out by hand, for tests that must see or bend one of its steps
(a foreign challenge, a wrong signer, ``verify_key``'s field names, an email on a pending
account). ``HeaperClient.login`` is the client's own path; these are the raw requests, once."""

from __future__ import annotations

from typing import Any

import httpx

from heaper_trio.client import KeyPair


async def issue_challenge(http: httpx.AsyncClient, public_key: str) -> str:
    """``create_session``: the challenge the server issued for ``public_key``."""
    r = await http.post("/api/auth/create_session", json={"public_key": public_key})
    assert r.status_code == 200, r.text
    return str(r.json()["challenge"])


async def verify_session(
    http: httpx.AsyncClient,
    key: KeyPair,
    challenge: str,
    *,
    signer: KeyPair | None = None,
    route: str = "verify_session",
    **extra: Any,
) -> httpx.Response:
    """``verify_session`` (or ``verify_key``, whose signature field is named differently) for
    ``key`` answering ``challenge``, signed by ``signer`` (``key`` unless a test forges it)."""
    signature = (signer or key).sign(challenge)
    field = "signed_message" if route == "verify_key" else "signature"
    body = {"public_key": key.public_key, "message": challenge, field: signature, **extra}
    return await http.post(f"/api/auth/{route}", json=body)


async def register_pending(url: str, email: str) -> KeyPair:
    """A new account left pending (not the first one, so not approved), whose email (a
    user-supplied string) is ``email``."""
    key = KeyPair.generate()
    async with httpx.AsyncClient(base_url=url) as http:
        challenge = await issue_challenge(http, key.public_key)
        r = await verify_session(http, key, challenge, email=email)
        assert r.json()["approval_required"] is True, r.text
    return key
