"""The asyncio loop that asyncpg needs, run inside trio by trio-asyncio.

It must be opened *around* ``hypercorn.serve`` (stack-pitfalls 7) and around anything else
that touches PostgreSQL (the ``users`` command, storage tests). trio-asyncio's default
exception handler turns any ``loop.call_exception_handler`` report (asyncpg emits some for
harmless situations) into an error that tears the whole loop down; we log them instead.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio_asyncio

log = logging.getLogger("heaper_trio.asyncio")


def _log_report(loop: Any, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    log.warning("asyncio: %s", context.get("message", "unhandled report"), exc_info=exc)


@asynccontextmanager
async def open_asyncio_loop() -> AsyncIterator[Any]:
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(_log_report)
        yield loop
