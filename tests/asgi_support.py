"""What the bare ASGI apps of the hypercorn-patch tests share (``test_app_queue``,
``test_h11_writes``, ``test_idle_timer``, ``test_read_size``): those tests serve a bare app,
not ours, so that only hypercorn and the patch under test are between the socket and it."""

from __future__ import annotations

from typing import Any


async def lifespan(receive: Any, send: Any) -> None:
    """hypercorn's lifespan protocol, answered with nothing to start or stop."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})
