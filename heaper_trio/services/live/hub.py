"""Live documents shared by every ``/ws`` connection of this process, and their fan-out.

A room holds one block's document in memory while anyone has it open: loaded once (every
joiner waits for the same load, however many reconnect at the same moment) and dropped when
the last subscriber leaves. The document is a cache of what storage holds; every stored change
reaches it through :meth:`LiveHub.on_commit` (HTTP pushes, live edits, server edits alike), or,
for a change committed by another process, through :meth:`LiveHub.on_remote`, which reads the
stored rows. So a room can be dropped at any moment without losing anything.

Fan-out is coalesced: committed updates are queued per room and one flusher task sends each
subscriber one merged frame per scheduling turn (hocuspocus PR #1130: N writers must not cost
N x N sends); a live batch relayed before its commit goes out at once from the relaying task,
unless its room had one go out within the last millisecond or has hundreds of subscribers.
Sends never block: a subscriber whose queue is full is dropped by its connection (it
reconnects and resyncs by state vector).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import trio
import trio.lowlevel

from heaper_trio import crdt, logs
from heaper_trio.protocol import events, frames
from heaper_trio.protocol.messages import AwarenessEntry, decode_awareness, encode_awareness
from heaper_trio.protocol.presence import Owner
from heaper_trio.protocol.split import split_update
from heaper_trio.protocol.wire import ProtocolError
from heaper_trio.records import StoredBlock
from heaper_trio.services.commits import Committed
from heaper_trio.services.diagnostics import RealtimeCounters
from heaper_trio.services.documents import DocumentService
from heaper_trio.services.live.hub_events import HubEvents
from heaper_trio.services.live.room_rewrites import read_taken_in, removed
from heaper_trio.services.live.rooms import EventSink, Relayed, Room, Subscription
from heaper_trio.storage.errors import BlockInOtherHeap

log = logging.getLogger(__name__)
EXPIRE_EVERY_S = 5.0
MAX_CONCURRENT_LOADS = 8
SPLIT_BYTES = 256 * 1024  # whole states larger than this go out in pieces
SPLIT_IN_THREAD_BYTES = 1024 * 1024
DIRECT_EVERY_S = 0.001  # a room's relayed batches fanned out at once, at most this often
DIRECT_MAX_SUBS = 256  # and only in rooms no larger than this


class LiveHub(HubEvents):
    def __init__(self, documents: DocumentService, counters: RealtimeCounters) -> None:
        self.documents = documents
        self.storage = documents.storage
        self.counters = counters
        self.rooms: dict[str, Room] = {}
        self.heap_watchers: dict[str, set[EventSink]] = {}
        self.user_sinks: dict[str, set[EventSink]] = {}
        self._dirty: dict[Room, None] = {}
        self._events: dict[tuple[str, str], dict[str, object]] = {}  # coalesced block events
        self._wake = trio.Event()
        self._loads = trio.CapacityLimiter(MAX_CONCURRENT_LOADS)
        self._nursery: trio.Nursery | None = None
        self.user_event_hooks: list[Callable[[str, dict[str, object]], None]] = []
        self.account_connections: dict[str, int] = {}  # live connections holding a slot
        self.keepalive: set[Any] = set()  # live connections, ticked together (connection.py)
        self._singletons: set[str] = set()
        # open_services (container._wire) subscribes on_commit and sets user_event_hooks.

    # -- connection slots -----------------------------------------------------------------------
    def claim_connection(self, user_id: str, limit: int) -> bool:
        """A slot for one more live connection of ``user_id``, unless it holds ``limit``.

        Each connection may buffer up to ``ws_outbox_bytes`` for a client that stops reading,
        so without a count per account one account could make the server buffer without
        bound just by opening sockets (issue 9). Synchronous: no other task runs between the
        check and the claim."""
        held = self.account_connections.get(user_id, 0)
        if held >= limit:
            return False
        self.account_connections[user_id] = held + 1
        logs.note_user(user_id)  # called in the connection's task: its log lines name the user
        return True

    def release_connection(self, user_id: str) -> None:
        held = self.account_connections.get(user_id, 0) - 1
        if held > 0:
            self.account_connections[user_id] = held
        else:
            self.account_connections.pop(user_id, None)

    def recheck_account(self, user_id: str) -> None:
        """The account changed (revoked, rejected): its live connections check their tokens
        now, not at the next periodic check; /ws by a tick due at once, /api/ws by its own."""
        for conn in [c for c in self.keepalive if user_id in c.accounts]:
            conn.last_check = -math.inf
            conn.tick(trio.current_time())
        for sink in list(self.user_sinks.get(user_id, ())):
            getattr(sink, "recheck_now", lambda: None)()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The hub's own tasks (flusher, presence expiry, catch-ups); in the supervisor."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._flush_forever)
            nursery.start_soon(self._expire_forever)
            task_status.started()

    def start_once(self, name: str, fn: Callable[[], Awaitable[None]]) -> None:
        """Run ``fn`` among the hub's tasks unless a task of that ``name`` runs already."""
        if name in self._singletons or self._nursery is None:
            return
        self._singletons.add(name)

        async def run() -> None:
            try:
                await fn()
            finally:
                self._singletons.discard(name)

        self._nursery.start_soon(run)

    # -- rooms ----------------------------------------------------------------------------------
    async def join(self, sub: Subscription) -> Room:
        """Subscribe and wait for the room's document (loaded once for every joiner)."""
        while True:
            room = self.rooms.get(sub.name.block_id)
            if room is not None and room.heap_id != sub.name.heap_id:
                # Rooms are per block id (ids are global). One opened under another heap is
                # that heap's document, of which nothing may reach this address (another
                # user's block, issue 9), or a load failing that way, dropped once ready.
                await room.ready.wait()
                if self.rooms.get(sub.name.block_id) is room:
                    raise BlockInOtherHeap()
                continue
            if room is None:
                room = self.rooms[sub.name.block_id] = Room(sub.name.block_id, sub.name.heap_id)
                room.subs.add(sub)
                try:
                    await self._load(room)
                finally:
                    room.ready.set()
            else:
                room.subs.add(sub)
                await room.ready.wait()
            if room.failed is not None:
                self.leave(sub)
                raise BlockInOtherHeap(room.failed)
            if room.doc is not None:
                return room
            # The joiner that was loading it went away (cancelled) first: load it again.
            room.subs.discard(sub)
            self._drop(room)

    async def _load(self, room: Room) -> None:
        async with self._loads:
            stored = await self.storage.load_block(room.block_id)
        if stored is not None and stored.heap_id != room.heap_id:
            room.failed = "block_in_other_heap"
            self._drop(room)
            return
        doc = crdt.BlockDocument.load(
            stored.snapshot if stored else None, stored.updates if stored else ()
        )
        version = stored.sync_version if stored is not None else None
        for update, update_version in room.early:
            if version is None or update_version == version:  # not another history's
                doc.apply(update)
        room.early.clear()
        room.doc, room.exists = doc, stored is not None or room.exists
        if stored is not None:
            room.sync_version = stored.sync_version
            room.last_seq = max(room.last_seq, stored.last_seq)
        self.counters.document_loaded()
        if room.recheck:
            # Another process committed while storage was being read: what it announced may
            # be newer than what was read (issue 9, item 11). An announcement that came
            # before the room existed is older than the read, which saw its commit.
            self.start_catch_up(room)

    def leave(self, sub: Subscription) -> None:
        room = self.rooms.get(sub.name.block_id)
        if room is None or sub not in room.subs:
            return
        room.subs.discard(sub)
        gone = room.presence.remove_owner(sub)
        if gone:
            self._broadcast_awareness(room, gone)
        if not room.subs:
            self._drop(room)

    def _drop(self, room: Room) -> None:
        if self.rooms.get(room.block_id) is room:
            del self.rooms[room.block_id]
            if room.doc is not None:
                self.counters.document_dropped()
        self._dirty.pop(room, None)

    # -- stored changes -------------------------------------------------------------------------
    def on_commit(self, committed: Sequence[Committed]) -> None:
        """Called by the document service after each durable commit in this process."""
        for c in committed:
            self._queue_event(c)
            room = self.rooms.get(c.block_id)
            if removed(self.rooms, c) or room is None:
                continue
            if room.doc is None:
                # Applied once loaded. Not counted in last_seq: a commit of another process
                # may lie between the rows being read and this one, so reread once loaded.
                room.early.extend((u, c.sync_version) for u in c.updates)
                room.exists = room.exists or bool(c.updates)
                room.recheck = True
                continue
            if c.sync_version > room.sync_version and room.exists:
                # The document was replaced (a restore): read it anew, never merge the two
                # histories; the commit is durable, so the read has it.
                self.start_catch_up(room)
                continue
            if not c.updates or (c.sync_version < room.sync_version and room.exists):
                continue  # nothing to send, or the replaced history's (committed before)
            room.exists, room.purged = True, False
            room.sync_version = c.sync_version
            room.unstored = 0  # storage takes this room's updates again
            if c.seq == room.last_seq + len(c.updates):
                room.last_seq = c.seq
            elif c.seq > room.last_seq:
                # Rows in between came from another process and are not here yet (their
                # announcement is on its way, or was lost): read them from storage.
                self.start_catch_up(room)
            origin = c.origin
            if isinstance(origin, Relayed):
                skip = origin.updates if origin.doc is room.doc else frozenset()
                origin = origin.sub
            else:
                skip = frozenset()
            for update in c.updates:
                if update in skip:
                    continue  # applied and sent when it came in (relay)
                try:
                    room.doc.apply(update)
                except crdt.InvalidUpdate:  # stored, so it applied once; never expected
                    log.exception("a stored update did not apply to live block %s", c.block_id)
                room.pending.append((update, origin))
            self._mark(room)

    def relay(self, sub: Subscription, updates: Sequence[bytes]) -> Relayed | None:
        """Apply a live batch of ``sub`` to the room's document and send it to the other
        subscribers at once, before it is stored (Yjs peers keep every update they saw and
        send it again when they reconnect, so a crash before the commit loses nothing; only
        the writer's acknowledgement waits for the commit). Returns the origin to commit the
        batch with, or None when it is not relayed (it then goes out after its commit, as
        every other change does).

        Refused before anything is sent: a batch with an update that is not exactly one Yjs
        v1 update (the commit would refuse it too), one for a purged block or a room the
        subscriber left. An update the document cannot integrate stops the relay there; what
        applied before it was sent."""
        room = self.rooms.get(sub.name.block_id)
        if room is None or room.doc is None or room.purged or room.resetting:
            return None  # resetting: set back to storage after a failed commit (room_resets)
        if sub not in room.subs:
            return None
        try:
            for update in updates:
                crdt.check_update(update)
        except crdt.InvalidUpdate:
            return None
        doc, relayed, any_changed = room.doc, set[bytes](), False
        for update in updates:
            try:
                changed = doc.apply(update)
            except crdt.InvalidUpdate:
                break
            relayed.add(update)
            if changed:
                any_changed = True
                room.pending.append((update, sub))
        if room.pending:
            self._flush_now(room)
        return Relayed(sub, doc, frozenset(relayed), any_changed)

    def _flush_now(self, room: Room) -> None:
        """Fan out what the room holds now, in this task, rather than in the flusher's: that
        was two more scheduling turns between a relayed update's arrival and its fan-out, and
        the commit's own work ran in between (issue 12, item 1). What the room held before
        goes out with it, merged, as the flusher would have sent it (order per document). At
        most once per ``DIRECT_EVERY_S`` per room: writers relaying at the same moment are
        coalesced by the flusher as before (N writers must not cost N x N sends). Not for
        rooms of more than ``DIRECT_MAX_SUBS``: that fan-out takes milliseconds, two turns
        are nothing beside it, and it would hold back the batch's commit (bench_ws.py, N=1000:
        the writer's acknowledgement 28 ms p50 against 18 ms through the flusher)."""
        now = trio.current_time()
        if now - room.flushed_at < DIRECT_EVERY_S or len(room.subs) > DIRECT_MAX_SUBS:
            self._mark(room)
            return
        room.flushed_at = now
        self._dirty.pop(room, None)
        self._flush_room(room)

    def on_remote(self, committed: Committed) -> None:
        """A change committed by another process (a pointer: no update bytes). PostgreSQL
        delivers it only once the commit is visible, so a read of storage from now on has it."""
        self._queue_event(committed)
        room = self.rooms.get(committed.block_id)
        if removed(self.rooms, committed) or room is None:
            return  # a room made later loads from storage, which has this commit
        if (
            room.doc is not None
            and committed.seq <= room.last_seq
            and committed.sync_version <= room.sync_version
        ):
            return  # the room holds every update up to last_seq already
        self.start_catch_up(room)

    def on_remote_updates(
        self, block_id: str, seq: int, sync_version: int, updates: Sequence[bytes]
    ) -> None:
        """The updates of a commit of another process, inline in its announcement (issue 12,
        item 4); its pointer follows. Applied and fanned out as a local commit's are when the
        room holds the log right up to them; otherwise ignored, and the pointer's reread
        does what it always did. Delivered only once the commit is visible, like the pointer."""
        room = self.rooms.get(block_id)
        if (
            room is None
            or room.doc is None
            or room.catching_up
            or not room.exists
            or room.purged
            or sync_version != room.sync_version
            or seq != room.last_seq + len(updates)
        ):
            return
        for update in updates:
            try:
                room.doc.apply(update)
            except crdt.InvalidUpdate:  # stored, so it applied once: reread instead
                self.start_catch_up(room)
                return
            room.pending.append((update, None))
        room.last_seq = seq
        self._mark(room)

    def catch_up_all(self) -> None:
        """Announcements may have been missed (the listener reconnected): reread every room."""
        for room in list(self.rooms.values()):
            self.start_catch_up(room)

    def start_catch_up(self, room: Room) -> None:
        """Reread the room's block from storage; a room still loading does it once loaded."""
        room.recheck = True
        if room.doc is not None and not room.catching_up and self._nursery is not None:
            room.catching_up = True
            self._nursery.start_soon(self._catch_up, room)

    async def _catch_up(self, room: Room) -> None:
        """Read what another process stored and send subscribers what they lack. Runs again
        while announcements keep coming during a read, so none falls between two reads."""
        try:
            while room.recheck and room.doc is not None and self.rooms.get(room.block_id) is room:
                room.recheck = False
                read_taken_in(room)  # the one before (its result is in the room)
                room.reads_begun += 1
                stored = await self.storage.load_block(room.block_id)
                if stored is None or room.doc is None:
                    continue
                if stored.sync_version > room.sync_version and room.exists:
                    await self._replace(room, stored)
                    continue
                if stored.last_seq <= room.last_seq:
                    continue
                fresh = crdt.BlockDocument.load(stored.snapshot, stored.updates)
                missing = fresh.diff(room.doc.state_vector())
                room.doc.apply(missing)
                room.last_seq = max(room.last_seq, stored.last_seq)
                room.sync_version, room.exists = stored.sync_version, True
                room.pending.append((missing, None))
                self._mark(room)
        except Exception:
            log.exception("catching up live block %s failed", room.block_id)
        finally:
            room.catching_up = False
            read_taken_in(room)

    async def _replace(self, room: Room, stored: StoredBlock) -> None:
        """The block's document was replaced (a restore raised its sync_version): hold the
        new one, and send every subscriber what a stale step 1 gets (the whole state, then
        ``sync_version_mismatch``). From then on an address naming the old version is stale
        (``BlockWorker._stale``), and nothing of the old history is sent or merged."""
        doc = crdt.BlockDocument.load(stored.snapshot, stored.updates)
        update = doc.full_state()
        if len(update) > SPLIT_IN_THREAD_BYTES:  # ~100 ms/MB of pure Python: off the loop
            pieces = await trio.to_thread.run_sync(split_update, update, SPLIT_BYTES)
        else:
            pieces = split_update(update, SPLIT_BYTES)
        if self.rooms.get(room.block_id) is not room or room.doc is None:
            return
        # No await from here on: no commit can fall between the swap and the frames.
        room.doc, room.sync_version, room.last_seq = doc, stored.sync_version, stored.last_seq
        room.exists, room.purged = True, False
        room.pending.clear()  # the old history's, not sent
        self._dirty.pop(room, None)
        evt = events.event(
            "sync_version_mismatch", block_id=room.block_id, sync_version=room.sync_version
        )
        for piece in pieces[:-1]:  # updates first: the provider is "synced" on step 2
            self._fan_out(room, frames.sync_update_body(piece))
        self._fan_out(room, frames.sync_step2_body(pieces[-1]))
        stale = [s for s in room.subs if s.name.sync_version != room.sync_version]
        self._fan_out(room, frames.stateless_body(events.to_json(evt)), subs=stale)

    def _mark(self, room: Room) -> None:
        self._dirty[room] = None
        self._wake.set()

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await trio.lowlevel.checkpoint()  # let this turn's other commits join the batch
            dirty, self._dirty = list(self._dirty), {}
            for room in dirty:
                self._flush_room(room)
            pending_events, self._events = list(self._events.values()), {}
            for evt in pending_events:
                for sink in list(self.heap_watchers.get(str(evt["heap_id"]), ())):
                    sink.send_event(evt)

    def _flush_room(self, room: Room) -> None:
        batch, room.pending = room.pending, []
        if not batch or not room.subs:
            return
        try:
            merged = crdt.merge_updates([u for u, _ in batch])
        except Exception:
            log.exception("merging updates of live block %s failed", room.block_id)
            return
        self.counters.coalesced(len(batch) - 1)
        origins = {o for _, o in batch}
        only = next(iter(origins)) if len(origins) == 1 else None
        # only its own updates: that subscriber has them
        self._fan_out(room, frames.sync_update_body(merged), skip=only)

    def _fan_out(
        self,
        room: Room,
        body: bytes,
        skip: object | None = None,
        subs: Iterable[Subscription] | None = None,
    ) -> None:
        """Send ``body`` to every subscriber of ``room`` (but ``skip``), each frame encoded
        once per distinct address: subscribers that opened the document under the same
        address get the very same bytes object, so the transport below can reuse what it
        made of it (the WebSocket frame) by identity. Never waits: each connection queues
        the frame behind what it queued before (or drops itself when its outbox is full)."""
        encoded: dict[bytes, bytes] = {}
        subs = [sub for sub in (room.subs if subs is None else subs) if sub is not skip]
        self.counters.delivered(len(subs))  # once per frame, not per subscriber: a hot path
        for sub in subs:
            frame = encoded.get(sub.prefix)
            if frame is None:
                frame = encoded[sub.prefix] = sub.prefix + body
            sub.sink.send_frame(frame)  # messages/bytes out: counted by the writer that sends

    # -- presence -------------------------------------------------------------------------------
    def awareness(self, sub: Subscription, payload: bytes) -> None:
        room = self.rooms.get(sub.name.block_id)
        if room is None or sub not in room.subs:
            return
        try:
            entries = decode_awareness(payload)
        except ProtocolError:
            return  # a bad presence update is dropped, the document stays open
        accepted = room.presence.apply(entries, Owner(sub.user_id, sub), trio.current_time())
        if accepted:
            self._broadcast_awareness(room, accepted)

    def presence_frame(self, sub: Subscription) -> bytes | None:
        room = self.rooms.get(sub.name.block_id)
        states = room.presence.states() if room else []
        if not states:
            return None
        return sub.prefix + frames.awareness_body(encode_awareness(states))

    def _broadcast_awareness(self, room: Room, entries: list[AwarenessEntry]) -> None:
        # the sender too, as Hocuspocus does: it keeps it alive
        self._fan_out(room, frames.awareness_body(encode_awareness(entries)))

    async def _expire_forever(self) -> None:
        while True:
            await trio.sleep(EXPIRE_EVERY_S)
            now = trio.current_time()  # trio's clock: a test's fake clock moves it
            for room in list(self.rooms.values()):
                gone = room.presence.expire(now)
                if gone:
                    self._broadcast_awareness(room, gone)
