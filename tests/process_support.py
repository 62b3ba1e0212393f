"""Waiting for a server started as a separate process (``python -m heaper_trio``)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import httpx
import trio


async def wait_healthy(
    url: str, proc: subprocess.Popen[bytes] | subprocess.Popen[str], output: Callable[[], object]
) -> None:
    """Until ``url``'s health route answers 200; a process that exits first fails the test
    with ``output()`` (its log), so a start-up error is read, not guessed at."""
    with trio.fail_after(30):
        async with httpx.AsyncClient() as c:
            while True:
                assert proc.poll() is None, output()
                try:
                    if (await c.get(url + "/api/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)
