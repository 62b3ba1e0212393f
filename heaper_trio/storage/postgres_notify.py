"""LISTEN/NOTIFY between server processes sharing one PostgreSQL database.

Notifications are small pointers (a block and its log position, or a user event); receivers
read the stored rows, so the 8,000-byte payload limit never bites and nothing depends on
NOTIFY carrying data. LISTEN gets a connection of its own, never one from the pool (releasing
a pooled connection runs ``UNLISTEN *``; stack-pitfalls 9). If that connection is lost, it is
opened again and ``on_payload("")`` tells the listener to catch up on what it may have missed.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import asyncpg
import trio
from trio_asyncio import aio_as_trio

log = logging.getLogger(__name__)
CHANNEL = "heaper_live"
CHECK_EVERY_S = 2.0
INBOX = 10_000


async def notify(c: asyncpg.Connection, payloads: list[str]) -> None:
    await c.execute("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", CHANNEL, payloads)


async def listen_forever(dsn: str, loop: Any, on_payload: Callable[[str], None],
                         task_status: Any) -> None:
    send, receive = trio.open_memory_channel[str](INBOX)

    def received(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:  # runs in the trio-asyncio loop's task: the non-blocking trio API works here
            send.send_nowait(payload)
        except trio.WouldBlock:
            log.warning("live notifications arrive faster than they are handled; dropped one")

    async def deliver() -> None:
        async for payload in receive:
            on_payload(payload)

    started = False
    async with trio.open_nursery() as nursery:
        nursery.start_soon(deliver)
        while True:
            try:
                conn = await aio_as_trio(asyncpg.connect, loop=loop)(dsn)
            except (OSError, asyncpg.PostgresError) as e:
                log.error("postgres LISTEN connection failed: %s; retrying", e)
                await trio.sleep(CHECK_EVERY_S)
                continue
            try:
                await aio_as_trio(conn.add_listener, loop=loop)(CHANNEL, received)
                if not started:
                    started = True
                    task_status.started()
                else:
                    on_payload("")  # reconnected: what was announced meanwhile is unknown
                while not conn.is_closed():
                    await trio.sleep(CHECK_EVERY_S)
                log.error("postgres LISTEN connection lost; reconnecting")
            finally:
                with trio.CancelScope(shield=True):
                    if not conn.is_closed():
                        await aio_as_trio(conn.close, loop=loop)(timeout=2)
