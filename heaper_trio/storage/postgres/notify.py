"""LISTEN/NOTIFY between server processes sharing one PostgreSQL database.

Notifications are small pointers (a block and its log position, or a user event); receivers
read the stored rows, so the 8,000-byte payload limit never bites and nothing depends on
NOTIFY carrying data. LISTEN gets a connection of its own, never one from the pool (releasing
a pooled connection runs ``UNLISTEN *``; stack-pitfalls 9). If that connection is lost, it is
opened again and ``on_payload("")`` tells the listener to catch up on what it may have missed;
so does a notification dropped because the receiver fell behind.

Block commits are announced by ``pg_notify`` inside the committing transaction
(:func:`block_pointer`, used by ``documents``): PostgreSQL queues the notification with
the transaction and delivers it only at commit, so a change is announced exactly when it becomes
visible, even if the process that made it dies right after (issue 9, item 11: announcing after
the commit left a gap in which a kill -9 hid acknowledged updates from the other processes).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
import trio
from trio_asyncio import aio_as_trio

from heaper_trio.protocol import announce
from heaper_trio.storage.postgres.outage import DatabaseOutage

log = logging.getLogger(__name__)
CHANNEL = "heaper_live"
CHECK_EVERY_S = 2.0
INBOX = 10_000


async def notify(c: asyncpg.Connection, payloads: list[str]) -> None:
    """Inside a transaction the notifications go out at its COMMIT, and not at all on ROLLBACK."""
    await c.execute("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", CHANNEL, payloads)


def block_pointer(
    origin: str,
    kind: str,
    heap_id: str,
    block_id: str = "",
    seq: int = 0,
    sync_version: int = 1,
    updated_at: int = 0,
) -> str:
    """The announcement of one stored change, as ``services/live/bridge.py`` reads it."""
    return announce.encode(
        announce.BlockAnnouncement(origin, kind, heap_id, block_id, seq, sync_version, updated_at)
    )


def own_prefixes(origin: str | None) -> tuple[str, ...]:
    """How this process's own announcements begin: as ``announce.encode`` writes them and as
    ``json_build_object`` does in ``heaper_push_batch`` (0023/0024), which puts spaces around
    the colon. The receiver skips its own announcements anyway (``ProcessBridge``); these are
    dropped as they arrive, before the hop into trio and the JSON (and base64) decoding: with
    two workers, half of every worker's notifications are its own, two per pushed update."""
    if origin is None:
        return ()
    quoted = json.dumps(origin)
    return (f'{{"o":{quoted},', f'{{"o" : {quoted}, ')


async def listen_forever(
    dsn: str,
    loop: Any,
    on_payload: Callable[[str], None],
    task_status: Any,
    outage: DatabaseOutage,
    origin: Callable[[], str | None] = lambda: None,
) -> None:
    """``on_payload`` gets every notification but those that begin as announcements of
    ``origin()`` (:func:`own_prefixes`)."""
    send, receive = trio.open_memory_channel[str](INBOX)
    overflowed = False
    own: tuple[str | None, tuple[str, ...]] = (None, ())

    def received(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        nonlocal overflowed, own
        mine = origin()
        if mine != own[0]:
            own = (mine, own_prefixes(mine))
        if own[1] and payload.startswith(own[1]):
            return
        try:  # runs in the trio-asyncio loop's task: the non-blocking trio API works here
            send.send_nowait(payload)
        except trio.WouldBlock:
            if not overflowed:
                log.warning(
                    "live notifications arrive faster than they are handled; "
                    "dropping them, then rereading every open document"
                )
            overflowed = True

    async def deliver() -> None:
        nonlocal overflowed
        async for payload in receive:
            on_payload(payload)
            if overflowed and receive.statistics().current_buffer_used == 0:
                overflowed = False
                on_payload("")  # some were dropped: what they announced is unknown

    started = False
    async with trio.open_nursery() as nursery:
        nursery.start_soon(deliver)
        while True:
            try:
                conn = await aio_as_trio(asyncpg.connect, loop=loop)(dsn)
            except (OSError, asyncpg.PostgresError) as e:
                outage.failed(e, "live LISTEN")
                await trio.sleep(CHECK_EVERY_S)
                continue
            lost = trio.Event()  # set from the loop's callback: non-blocking trio API, as above
            conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
            try:
                await aio_as_trio(conn.add_listener, loop=loop)(CHANNEL, received)
                outage.succeeded()
                if not started:
                    started = True
                    task_status.started()
                else:
                    on_payload("")  # reconnected: what was announced meanwhile is unknown
                # asyncpg calls termination listeners when the connection is lost, so a
                # lost LISTEN is noticed (and reported) during the outage, not up to
                # CHECK_EVERY_S later, maybe after it; is_closed() is checked as well.
                while not conn.is_closed():
                    with trio.move_on_after(CHECK_EVERY_S):
                        await lost.wait()
                outage.failed("connection lost", "live LISTEN")
            finally:
                with trio.CancelScope(shield=True):
                    if not conn.is_closed():
                        await aio_as_trio(conn.close, loop=loop)(timeout=2)
