"""The client's session: a key pair, login, token refresh, authenticated requests.

``request`` refreshes the token pair once when the server answers 401 ``token_expired``.
It works under trio (httpx runs on anyio). The parts of the API live on the client as
namespaces: ``heaps``, ``blocks``, ``uploads``, ``live`` (one module each).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from heaper_trio.client.blocks import Blocks
from heaper_trio.client.errors import HeaperError, LoginPending, json_or_none
from heaper_trio.client.heaps import Heaps
from heaper_trio.client.live import Live
from heaper_trio.client.uploads import Uploads
from heaper_trio.keys import KeyPair


def load_or_create_keypair(path: str | Path) -> KeyPair:
    """A client identity kept in a file (hex seed, mode 0600)."""
    p = Path(path)
    if not p.exists():
        KeyPair.generate().save(p)
    return KeyPair.load(p)


class HeaperClient:
    def __init__(
        self,
        base_url: str,
        key: KeyPair | None = None,
        *,
        http: httpx.AsyncClient | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key or KeyPair.generate()
        self.http = http or httpx.AsyncClient(base_url=self.base_url, timeout=timeout)
        self._owns_http = http is None
        self.access_token: str | None = None
        self.refresh_token: str | None = None
        self.user_id: str | None = None
        self.login_answer: dict[str, Any] = {}
        self.heaps = Heaps(self)
        self.blocks = Blocks(self)
        self.uploads = Uploads(self)
        self.live = Live(self)

    async def __aenter__(self) -> HeaperClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self.http.aclose()

    @property
    def public_key(self) -> str:
        return self.key.public_key

    async def challenge(self) -> str:
        r = await self.http.post("/api/auth/create_session", json={"public_key": self.public_key})
        r.raise_for_status()
        return str(r.json()["challenge"])

    async def login(self, *, server_challenge: str | None = None) -> dict[str, Any]:
        """Challenge, sign, verify; keep the tokens. Raises LoginPending if not approved."""
        challenge = await self.challenge()
        body: dict[str, Any] = {
            "public_key": self.public_key,
            "message": challenge,
            "signature": self.key.sign(challenge),
        }
        if server_challenge is not None:
            body["server_challenge"] = server_challenge
        r = await self.http.post("/api/auth/verify_session", json=body)
        r.raise_for_status()
        answer: dict[str, Any] = r.json()
        self.login_answer = answer
        self.user_id = answer.get("user_id")
        if answer.get("approval_required"):
            raise LoginPending(f"account {self.user_id} waits for approval")
        self.access_token = answer["accessToken"]
        self.refresh_token = answer["refreshToken"]
        return answer

    async def refresh(self) -> None:
        if self.refresh_token is None:
            raise RuntimeError("not logged in")
        r = await self.http.post(
            "/api/auth/refresh_token", headers={"Authorization": f"Bearer {self.refresh_token}"}
        )
        r.raise_for_status()
        answer = r.json()
        self.access_token = answer["accessToken"]
        self.refresh_token = answer["refreshToken"]

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"} if self.access_token else {}

    async def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {**self.auth_headers(), **kw.pop("headers", {})}
        r = await self.http.request(method, path, headers=headers, **kw)
        if r.status_code == 401 and self.refresh_token and _error_code(r) == "token_expired":
            await self.refresh()
            headers.update(self.auth_headers())
            r = await self.http.request(method, path, headers=headers, **kw)
        return r

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, json: Any = None, **kw: Any) -> httpx.Response:
        return await self.request("POST", path, json=json, **kw)

    async def put(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("PUT", path, **kw)

    async def delete(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("DELETE", path, **kw)

    async def call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        """``request``, then the JSON answer; an error answer raises :class:`HeaperError`."""
        r = await self.request(method, path, **kw)
        if r.status_code >= 400:
            raise HeaperError(r)
        answer = r.json()
        if not isinstance(answer, dict):
            raise HeaperError(r)
        return answer


def _error_code(r: httpx.Response) -> str | None:
    body = json_or_none(r)
    return body.get("error") if isinstance(body, dict) else None
