"""What the client raises: an error answer of the server, an account waiting for approval."""

from __future__ import annotations

from typing import Any

import httpx


class LoginPending(Exception):
    """The account exists but waits for an admin's approval."""


class HeaperError(httpx.HTTPStatusError):
    """An error answer of the server: ``status``, the stable ``code`` (``error`` in the
    envelope), ``message`` and the whole ``body``. Branch on ``code``."""

    def __init__(self, response: httpx.Response) -> None:
        body = json_or_none(response)
        self.body: dict[str, Any] = body if isinstance(body, dict) else {}
        self.status = response.status_code
        self.code = str(self.body.get("error") or f"http_{self.status}")
        self.message = str(self.body.get("message") or response.reason_phrase)
        super().__init__(
            f"{response.request.method} {response.request.url.path} answered "
            f"{self.status} {self.code}: {self.message}",
            request=response.request,
            response=response,
        )


def json_or_none(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return None
