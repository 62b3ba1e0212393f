"""A live batch relayed before its commit, whose commit then failed: the room goes back to
what storage holds, and its subscribers are asked for what storage lacks.

``LiveHub.relay`` applies a writer's batch to the room's document and sends it to the other
subscribers before ``push_live`` commits it. When that commit raises (a database error, a lost
connection, a full disk, a cancel) or refuses the batch, the room's document and every peer
hold updates that were never stored, while the room's state vector says the server has them:
a peer's step 1 is answered from that document, and the server's own step 1 tells every peer
(the writer too, when it reconnects) not to send them. Once the room is dropped and the peers
are gone, the updates are lost.

So the room's document is rebuilt from storage (no relay meanwhile: batches go out after
their commit), and every subscriber is sent a ``SyncStep1`` with the stored state vector. A
Yjs peer (the stock Hocuspocus provider, ``y-protocols``' ``readSyncStep1``) answers it with a
``SyncStep2`` of everything the server lacks, which is stored as any live batch is. A refusal
that repeats (an update storage will never take) must not make that a loop: at most
``MAX_RESYNCS`` requests follow each other with no commit of the room in between (and a
room is reset at most once per ``RESET_EVERY_S``); after that
the room still goes back to storage, but the peers are not asked again (each writer got its
``SyncStatus(false)``; they send it again when they reconnect).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from heaper_trio import crdt
from heaper_trio.protocol import frames
from heaper_trio.services.live.rooms import Relayed, Room

if TYPE_CHECKING:
    from heaper_trio.services.live.hub import LiveHub

log = logging.getLogger(__name__)
MAX_RESYNCS = 3  # requests in a row with no commit of the room between them
RETRY_S = 0.5  # storage unreadable: read again after this, doubling
RETRY_MAX_S = 30.0
# Resets of one room start at most this often: the count of MAX_RESYNCS starts again at any
# commit of the room, so a client alternating a refused batch with a good edit (or others
# typing between refusals) would otherwise make every refusal a whole-document read and a
# request to every subscriber.
RESET_EVERY_S = 1.0


def unstored(hub: LiveHub, relayed: Relayed) -> None:
    """``relayed`` was sent to the others but not stored: set its room back to storage.
    Synchronous (the caller may be cancelled); the read runs among the hub's tasks."""
    room = hub.rooms.get(relayed.sub.name.block_id)
    if room is None or room.doc is not relayed.doc or not relayed.changed:
        return  # dropped or replaced since (nothing of it is held), or it changed nothing
    if not room.resetting and hub._nursery is not None:
        room.resetting = True  # LiveHub.relay relays nothing until the room is reset
        hub._nursery.start_soon(reset, hub, room)


async def reset(hub: LiveHub, room: Room) -> None:
    """Rebuild ``room``'s document from storage, then ask its subscribers for what it lacks.
    Retries while storage cannot be read, as long as the room lives."""
    delay = RETRY_S
    try:
        await trio.sleep_until(room.reset_at + RESET_EVERY_S)  # a refusal repeated on purpose
        room.reset_at = trio.current_time()
        while hub.rooms.get(room.block_id) is room and room.doc is not None:
            version = room.sync_version
            try:
                async with hub._loads:  # after an outage, every failed room reads at once
                    stored = await hub.storage.load_block(room.block_id)
                if room.sync_version != version:
                    # Replaced while storage was read (a catch-up took a restore): the room
                    # already holds a newer stored history than this read, which must not
                    # be swapped back in; nothing of the old history is asked for again.
                    return
                if stored is not None and stored.heap_id != room.heap_id:
                    return  # moved to another heap: the version watch drops the room
                if stored is not None and stored.sync_version > room.sync_version:
                    # A restore: the new document replaces the old history, of which the
                    # failed batch was part; nothing of that history is asked for again.
                    await hub._replace(room, stored)
                    return
                doc = crdt.BlockDocument.load(
                    stored.snapshot if stored else None, stored.updates if stored else ()
                )
            except Exception:
                log.warning(
                    "reading live block %s to undo an unstored relay failed; again in %.1f s",
                    room.block_id,
                    delay,
                    exc_info=True,
                )
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if hub.rooms.get(room.block_id) is not room or room.doc is None:
                return
            # No await from here on: the swap and the requests go together.
            seen, room.doc = room.last_seq, doc
            if stored is not None:
                room.last_seq, room.exists = stored.last_seq, True
                if seen > stored.last_seq:  # committed while storage was read: read it in
                    hub.start_catch_up(room)
            break
    finally:
        room.resetting = False
    if hub.rooms.get(room.block_id) is not room or room.doc is None or room.purged:
        return
    room.unstored += 1
    if room.unstored > MAX_RESYNCS:
        log.warning(
            "live block %s: %d relayed batches in a row were not stored; not asking again",
            room.block_id,
            room.unstored,
        )
        return
    body = frames.sync_step1_body(room.doc.state_vector())
    current = [s for s in room.subs if s.name.sync_version in (None, room.sync_version)]
    hub._fan_out(room, body, subs=current)
