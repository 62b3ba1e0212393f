"""One ``/ws`` connection at run time: the I/O around the pure :class:`LiveSession`.

The connection owns a nursery: the reader (this task), a writer draining a bounded outbox while
it holds frames, and one worker per open document; its timers are ticked by one task for all
(:func:`tick_all`). A frame with nothing queued before it goes straight to the socket from
whoever sends it (``write_now``); only what the socket cannot take at once waits for a writer
task (issue 12, item 1: a writer's wake-up per socket per update was most of a delivery's cost).
Closing the socket, a protocol error, a slow consumer or server shutdown cancels that nursery,
so everything the connection started ends with it (stack-pitfalls 1.).

Per document, the worker keeps the client's order: sync step 1 is answered from the shared
room; updates waiting in its inbox are stored together in one commit and each is acknowledged
with ``SyncStatus(true)`` only once durable (the contract's ack rule; Hocuspocus acks from
memory); the others get them after that commit, or before it with ``RELAY_BEFORE_COMMIT``
(``LiveHub.relay``). The worker is the only writer of its document's replies, the hub the
only writer of fan-out, and both go through the outbox (straight to the socket when it is empty).

What a connection may use of the services is its :class:`LiveContext`. The timers (idle, auth,
ping) are the session's, fed ``trio.current_time()``; token expiry is wall time, read through
the context. Under a test's fake clock every timer moves with it.
"""

from __future__ import annotations

import logging
from functools import partial

import trio

from heaper_trio.crdt import EMPTY_UPDATE
from heaper_trio.errors import HeaperError
from heaper_trio.protocol import events
from heaper_trio.protocol import messages as m
from heaper_trio.protocol import session as s
from heaper_trio.protocol.close_codes import (
    CLOSE_GOING_AWAY,
    CLOSE_TOO_MANY_CONNECTIONS,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNSUPPORTED_DATA,
)
from heaper_trio.protocol.names import BlockName, EventsName, parse_document_name
from heaper_trio.protocol.split import split_update
from heaper_trio.records import User
from heaper_trio.services.live import room_resets
from heaper_trio.services.live.context import Grant, LiveContext
from heaper_trio.services.live.doc_workers import DocumentWorker, EventsWorker
from heaper_trio.services.live.hub import LiveHub, Room, Subscription
from heaper_trio.services.live.outbox import Outbox
from heaper_trio.services.live.output import ConnectionOutput
from heaper_trio.services.live.room_rewrites import VersionWatch
from heaper_trio.services.live.rooms import BUSY, PARTIAL, Transport
from heaper_trio.services.live_push import LIVE_UNCHECKED_MAX_SUBS

log = logging.getLogger(__name__)
KEEPALIVE_TICK_S = 2.0  # how often the timers (trio's clock) and the grants are looked at
RECHECK_ACCOUNT_S = 30.0
TOKEN_RENEW_BEFORE_S = 60.0
MAX_BATCH = 256
SPLIT_BYTES = 256 * 1024  # initial states larger than this go out in pieces
SPLIT_IN_THREAD_BYTES = 1024 * 1024
# Fan-out before the commit (hub.relay) or after it. bench_ws.py, N=100 at 50 Hz, against
# Hocuspocus in the same run: session 5 (9 pairs, loaded) favoured after; with the batched
# writer (session 6, 4 interleaved pairs, load 10-14) before gave p99 0.4-1.7x of Hocuspocus
# (one outlier 11x) against 1.9-4.0x after, p50 1.2-3.9x against 4.0-6.6x, CPU per delivery
# under load 1.9-3.2x against 3.2-4.0x: before, by the numbers (docs/protocol.md).
RELAY_BEFORE_COMMIT = True


class LiveConnection(ConnectionOutput):
    def __init__(
        self, transport: Transport, live: LiveContext, connection_token: str | None
    ) -> None:
        self.transport = transport
        self.live = live
        self.connection_token = connection_token
        self.session = s.LiveSession(
            connection_token=connection_token is not None, now=trio.current_time()
        )
        self.outbox = Outbox(live.outbox_bytes)
        self.grants: dict[str, Grant] = {}
        self.workers: dict[str, DocumentWorker] = {}
        self.accounts: list[str] = []  # accounts this connection holds a slot of (a set: +150 B)
        self.close_code: tuple[int, str] | None = None
        self._nursery: trio.Nursery | None = None  # None again once it is closing
        self._scope: trio.CancelScope | None = None
        self.last_check = trio.current_time()  # of every grant's account (RECHECK_ACCOUNT_S)
        self._checking = False
        self._writing = False  # a writer task runs (or is about to)
        self._wrote = False  # a frame went out since the last tick (session.wrote)

    # -- lifetime ---------------------------------------------------------------------------------
    async def run(self) -> None:
        counters = self.live.counters
        counters.connections += 1
        counters.connections_total += 1
        hub = self.live.hub
        try:
            async with trio.open_nursery() as nursery:
                self._nursery, self._scope = nursery, nursery.cancel_scope
                try:
                    # Timers and shutdown: one task ticks every connection (a task of its
                    # own cost each connection ~3 KiB; issue 12, memory per idle WebSocket).
                    hub.keepalive.add(self)
                    hub.start_once("keepalive", partial(tick_all, hub, self.live.shutdown))
                    await self._reader()
                    nursery.cancel_scope.cancel()
                finally:
                    # The nursery now only waits for its tasks (a write finishing its frame
                    # may take seconds): nothing new may start in it. A tick that tried
                    # (grant checks) crashed the hub's keepalive task, and the server with it.
                    self._nursery = None
        finally:
            hub.keepalive.discard(self)
            counters.connections -= 1
            for worker in list(self.workers.values()):
                worker.stop()
            self.workers.clear()
            for user_id in self.accounts:
                self.live.hub.release_connection(user_id)
            self.accounts.clear()
        if self.close_code is not None:
            # 1 s for the close frame; a frame the fan-out left half-written gets its own
            # shielded grace first (web/ws_transport.FINISH_FRAME_S), so this can take longer.
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await self.transport.close(*self.close_code)

    def disconnect(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code = (code, reason)
        self.session.disconnect(code, reason)
        if self._scope is not None:
            self._scope.cancel()

    # -- I/O ----------------------------------------------------------------------------------
    async def _reader(self) -> None:
        counters = self.live.counters
        while True:
            data = await self.transport.receive()
            self.session.heard(trio.current_time())
            counters.messages_in += 1
            if isinstance(data, str):
                await self.perform(
                    self.session.disconnect(CLOSE_UNSUPPORTED_DATA, "binary frames only")
                )
                return
            data = data or b""  # quart-trio hands an empty binary frame over as None
            counters.bytes_in += len(data)
            await self.perform(self.session.receive(data))
            if self.session.closed:
                return

    def send_frame(self, frame: bytes) -> bool:
        """Fan-out from the hub: never waits. A consumer too slow for its outbox is dropped;
        it reconnects and resyncs by state vector, losing nothing."""
        if self.session.closed:
            return False
        if not self.outbox.frames:  # _write_now inline: the hot path of a fan-out
            done = self.transport.write_now(frame)
            if done != BUSY:
                counters = self.live.counters
                counters.messages_out += 1
                counters.bytes_out += len(frame)
                self._wrote = True
                if done == PARTIAL:
                    self._wake_writer()
                return True
        if self.outbox.offer(frame):
            self._wake_writer()
            return True
        self.live.counters.dropped_slow_consumer()
        self.disconnect(CLOSE_TRY_AGAIN_LATER, "too slow to keep up; resync")
        return False

    # -- actions ------------------------------------------------------------------------------
    async def perform(self, actions: list[s.Action]) -> None:
        for action in actions:
            if isinstance(action, s.Send):
                await self.reply(action.frame)
            elif isinstance(action, s.Authorize):
                await self.perform(await self._authorize(action))
            elif isinstance(action, s.OpenDocument):
                self._open(action.address)
            elif isinstance(action, s.Deliver):
                worker = self.workers.get(action.address)
                if worker is not None:
                    await worker.inbox.send(action.message)
                    worker.wake()
            elif isinstance(action, s.CloseDocument):
                worker = self.workers.pop(action.address, None)
                if worker is not None:
                    worker.stop()
                self.grants.pop(action.address, None)
            elif isinstance(action, s.Disconnect):
                self.disconnect(action.code, action.reason)

    async def _authorize(self, action: s.Authorize) -> list[s.Action]:
        address = action.address
        token = action.token or self.connection_token
        if not token:
            return self.session.denied(address, "unauthorized")
        try:
            verified = await self.live.verify_token(token)
        except HeaperError as e:
            return self.session.denied(address, e.code)
        user = verified.user
        grant = Grant(user, token, verified.expires_at)
        if action.renewal:
            old = self.grants.get(address)
            if old is None or old.user.id != user.id:
                return self.session.denied(address, "token_for_another_account")
            self.grants[address] = grant
            return self.session.authorized(address)
        name = parse_document_name(address)
        if name is None:
            return self.session.denied(address, "invalid_document_name")
        if isinstance(name, BlockName):
            refusal = await self._block_refusal(user, name)
            if refusal:
                return self.session.denied(address, refusal)
        if not self._hold_slot(user.id):
            return self.session.disconnect(
                CLOSE_TOO_MANY_CONNECTIONS, "too many connections for this account"
            )
        self.grants[address] = grant
        return self.session.authorized(address)

    def _hold_slot(self, user_id: str) -> bool:
        """Count this connection against the account once its first document is granted:
        only then is the account known (tokens travel per document). Until then nothing fans
        out to the connection, so it buffers only its own bounded pending-auth queue."""
        if user_id in self.accounts:
            return True
        if not self.live.hub.claim_connection(user_id, self.live.max_connections_per_user):
            self.live.counters.refused_connection_limit += 1
            return False
        self.accounts.append(user_id)
        return True

    async def _block_refusal(self, user: User, name: BlockName) -> str | None:
        heaps = self.live.heaps
        heap = await heaps.get_heap(name.heap_id)
        if heap is None or heap.owner_id != user.id:
            return "forbidden"
        gone = (await heaps.tombstones([name.block_id])).get(name.block_id)
        if gone is not None:  # another heap's deleted block: say nothing of it, as push does
            return "block_deleted" if gone[0] == name.heap_id else "block_in_other_heap"
        return None

    def _open(self, address: str) -> None:
        grant = self.grants[address]
        name = parse_document_name(address)
        assert name is not None
        if self._nursery is None:
            return  # the connection is ending
        worker: DocumentWorker
        if isinstance(name, EventsName):
            worker = EventsWorker(self, address, grant)
        else:
            worker = BlockWorker(self, address, grant, name)
        self.workers[address] = worker
        self._nursery.start_soon(worker.run)

    # -- keepalive --------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """The timers, every ``KEEPALIVE_TICK_S`` (:func:`tick_all`): idle and auth timeouts,
        pings, and the grants, checked in a task of their own only when one is due."""
        if self.session.closed or self._nursery is None:
            return
        if self._wrote:  # per tick, not per frame: fan-out is the hot path
            self._wrote = False
            self.session.wrote(now)
        for action in self.session.tick(now):
            if isinstance(action, s.Disconnect):
                return self.disconnect(action.code, action.reason)
            if isinstance(action, s.Send):
                self._queue(action.frame)  # a ping: pointless behind a full outbox
        recheck = now - self.last_check > RECHECK_ACCOUNT_S
        if self._checking or not (recheck or self._grant_due()):
            return
        if recheck:
            self.last_check = now
        self._checking = True
        self._nursery.start_soon(self._check_grants_once, recheck)

    def _grant_due(self) -> bool:  # expired, or in its renewal window (checked every tick)
        wall = self.live.wall_clock()
        return any(wall + TOKEN_RENEW_BEFORE_S > g.expires_at for g in self.grants.values())

    async def _check_grants_once(self, recheck: bool) -> None:
        try:
            await self._check_grants(recheck)
        finally:
            self._checking = False

    async def _check_grants(self, recheck: bool) -> None:
        """Live auth: a token about to expire is asked for again (Hocuspocus token sync);
        an expired one, or an account revoked meanwhile, loses its documents."""
        wall = self.live.wall_clock()
        for address, grant in list(self.grants.items()):
            reason = None
            if wall > grant.expires_at:
                reason = "token_expired"
            elif recheck:
                try:
                    await self.live.verify_token(grant.token)
                except HeaperError as e:
                    reason = e.code
            if reason is not None:
                await self.perform(self.session.denied(address, reason))
            elif wall > grant.expires_at - TOKEN_RENEW_BEFORE_S and not grant.renewal_asked:
                grant.renewal_asked = True
                self._queue(m.encode(m.TokenRequest(address)))


async def tick_all(hub: LiveHub, shutdown: trio.Event) -> None:
    """Tick every live connection of ``hub`` (:meth:`LiveConnection.tick`); at shutdown,
    close them all with 1001 (a connection that comes later starts this again, and is
    closed at once)."""
    while True:
        with trio.move_on_after(KEEPALIVE_TICK_S):
            await shutdown.wait()
            for conn in list(hub.keepalive):
                conn.disconnect(CLOSE_GOING_AWAY, "server shutting down")
            return
        now = trio.current_time()
        for conn in list(hub.keepalive):
            try:
                conn.tick(now)
            except Exception:  # one connection's fault must not end every connection's timers
                log.exception("ticking a live connection failed")


class BlockWorker(DocumentWorker):
    def __init__(self, conn: LiveConnection, address: str, grant: Grant, name: BlockName) -> None:
        super().__init__(conn, address, grant)
        self.name = name
        self.sub = Subscription(conn, address, name, grant.user.id)
        self._held: m.Message | None = None
        self.room: Room | None = None
        self._versions = VersionWatch()  # a version newer than the room's: reread first

    def stop(self) -> None:
        super().stop()
        if self.room is not None:
            self.room = None
            self.conn.live.hub.leave(self.sub)

    async def serve(self) -> None:
        """Serves what the inbox holds, then ends: an idle open document holds no task (about
        2 KiB each; issue 12, memory per idle WebSocket) and ``wake`` starts it again. The
        subscription outlives the task: it ends with :meth:`stop`."""
        hub = self.conn.live.hub
        room = self.room
        if room is None:
            try:
                room = self.room = await hub.join(self.sub)
            except BaseException:
                hub.leave(self.sub)
                raise
            presence = hub.presence_frame(self.sub)
            if presence is not None:
                await self.conn.reply(presence)
        while True:
            message = self._held
            if message is None:
                try:
                    message = self.inbox.receive_nowait()
                except trio.WouldBlock:
                    return
            self._held = None
            await self._handle(room, message)

    def _stale(self, room: Room) -> bool:
        version = self.name.sync_version
        return version is not None and room.exists and version != room.sync_version

    async def _handle(self, room: Room, message: m.Message) -> None:
        version = self.name.sync_version  # newer than the room's: check storage first
        if (
            version is not None
            and version > room.sync_version
            and isinstance(message, (m.SyncStep1, m.SyncStep2, m.SyncUpdate))
        ):
            await self._versions.catch_up_to(self.conn.live.hub, room, version)
        if isinstance(message, m.SyncStep1):
            await self._answer_step1(room, message)
        elif isinstance(message, (m.SyncStep2, m.SyncUpdate)):
            await self._store(room, self._batch(message))
        elif isinstance(message, m.Awareness):
            self.conn.live.hub.awareness(self.sub, message.payload)
        elif isinstance(message, m.QueryAwareness):
            frame = self.conn.live.hub.presence_frame(self.sub)
            if frame is not None:
                await self.conn.reply(frame)
        # Stateless messages on a block document have no meaning here: ignored.

    async def _answer_step1(self, room: Room, message: m.SyncStep1) -> None:
        assert room.doc is not None
        stale = self._stale(room)
        try:
            update = room.doc.full_state() if stale else room.doc.diff(message.state_vector)
        except HeaperError:  # a state vector that does not decode: everything
            update = room.doc.full_state()
        if len(update) > SPLIT_IN_THREAD_BYTES:  # ~100 ms/MB of pure Python: off the loop
            pieces = await trio.to_thread.run_sync(split_update, update, SPLIT_BYTES)
        else:
            pieces = split_update(update, SPLIT_BYTES)
        for piece in pieces[:-1]:  # updates first: the provider is "synced" on step 2
            await self.conn.reply(m.encode(m.SyncUpdate(self.address, piece)))
        await self.conn.reply(m.encode(m.SyncStep2(self.address, pieces[-1])))
        if stale:
            evt = events.event(
                "sync_version_mismatch", block_id=room.block_id, sync_version=room.sync_version
            )
            await self.conn.reply(m.encode(m.Stateless(self.address, events.to_json(evt))))
        if not message.reply:
            await self.conn.reply(m.encode(m.SyncStep1(self.address, room.doc.state_vector())))

    def _batch(self, first: m.SyncStep2 | m.SyncUpdate) -> list[bytes]:
        """This update and those right behind it in the inbox: one commit for all."""
        updates = [first.update]
        while len(updates) < MAX_BATCH:
            try:
                nxt = self.inbox.receive_nowait()
            except trio.WouldBlock:
                break
            if isinstance(nxt, (m.SyncStep2, m.SyncUpdate)):
                updates.append(nxt.update)
            else:
                self._held = nxt
                break
        return updates

    async def _store(self, room: Room, updates: list[bytes]) -> None:
        real = [u for u in updates if u != EMPTY_UPDATE]  # "nothing new": no block from it
        ok = True
        if real and self._stale(room):
            ok = False
        elif real:
            # With RELAY_BEFORE_COMMIT the others get the batch now; only the writer's
            # SyncStatus waits for the commit (docs/protocol.md).
            # A batch relayed but not stored (the commit raised, was cancelled or refused it)
            # sets the room back to storage and asks its subscribers for the rest
            # (room_resets): the room must never claim updates storage does not hold.
            hub = self.conn.live.hub
            relayed = hub.relay(self.sub, real) if RELAY_BEFORE_COMMIT else None
            try:
                item = await self.conn.live.push_live(
                    self.grant.user,
                    self.name.heap_id,
                    self.name.block_id,
                    real,
                    self.name.sync_version if room.exists else None,
                    origin=relayed or self.sub,
                    unchecked=len(room.subs) <= LIVE_UNCHECKED_MAX_SUBS,
                )
            except BaseException:
                if relayed is not None:
                    room_resets.unstored(hub, relayed)
                raise
            ok = item.status in ("ok", "created")
            if not ok and relayed is not None:
                room_resets.unstored(hub, relayed)
            if item.status in ("forbidden", "deleted"):
                await self.conn.perform(
                    self.conn.session.denied(self.address, item.error or item.status)
                )
                return
            if not ok:
                log.info(
                    "live update refused for block %s: %s",
                    self.name.block_id,
                    item.error or item.status,
                )
        frame = m.encode(m.SyncStatus(self.address, ok))
        for _ in updates:
            await self.conn.reply(frame)
