"""Issue 9, item 4: nobody can lock a user out by spending the rate limit of their public key.

Public keys are public. The per-key auth budget is counted per (key, client address), so calls
naming the victim's key from an attacker's address spend only the attacker's budget. The
per-address limit still holds for everyone.
"""

from __future__ import annotations

import httpx

from heaper_trio.client import HeaperClient
from heaper_trio.keys import KeyPair

from .conftest import StartServer, assert_error

ATTACKER = {"X-Forwarded-For": "203.0.113.9"}


async def test_a_third_party_cannot_lock_the_victim_out(start_server: StartServer) -> None:
    server = await start_server(auth_rate_limit=60, trust_forwarded_for=True)  # 12 per key
    victim_key = KeyPair.generate()
    async with (
        HeaperClient(server.url, victim_key) as victim,
        httpx.AsyncClient(base_url=server.url, timeout=30) as attacker,
    ):
        await victim.login()  # the victim's account exists (the admin, even)
        statuses = []
        for _ in range(14):
            r = await attacker.post(
                "/api/auth/create_session", headers=ATTACKER, json={"public_key": victim.public_key}
            )
            statuses.append(r.status_code)
        assert statuses == [200] * 12 + [429] * 2  # the attacker's own pair budget is spent
        assert_error(r, 429, "rate_limited")
        # Failed verifications with the victim's key, from the attacker and from many other
        # addresses the attacker claims, do not count against the victim either.
        for i in range(30):
            r = await attacker.post(
                "/api/auth/verify_session",
                headers={"X-Forwarded-For": f"198.51.100.{i}"},
                json={
                    "public_key": victim.public_key,
                    "message": "heaper-login:forged",
                    "signature": "1" * 80,
                },
            )
            assert r.status_code in (400, 401), r.text

        # The victim, from its own address (the TCP peer: no forwarded header), logs in.
        for _ in range(4):
            answer = await victim.login()
            assert answer["accessToken"]
        assert (await victim.post("/api/me")).status_code == 200

        # The attacker is still limited from its address, whichever key it names.
        r = await attacker.post(
            "/api/auth/create_session", headers=ATTACKER, json={"public_key": victim.public_key}
        )
        assert_error(r, 429, "rate_limited")
        assert int(r.headers["Retry-After"]) >= 1


async def test_the_per_address_limit_still_holds(start_server: StartServer) -> None:
    server = await start_server(auth_rate_limit=10, trust_forwarded_for=True)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        codes = []
        for _ in range(12):  # a fresh key each time: only the address limit can stop it
            r = await c.post(
                "/api/auth/create_session",
                headers=ATTACKER,
                json={"public_key": KeyPair.generate().public_key},
            )
            codes.append(r.status_code)
        assert codes == [200] * 10 + [429] * 2
        # Another address is untouched.
        r = await c.post(
            "/api/auth/create_session", json={"public_key": KeyPair.generate().public_key}
        )
        assert r.status_code == 200, r.text
