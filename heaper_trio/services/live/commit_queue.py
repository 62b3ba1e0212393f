"""The commits of one open block document's live updates, behind their relay (issue 12).

A block worker relays each batch of updates to the room's other subscribers as it arrives
(``LiveHub.relay``, before the commit: Yjs peers keep what they saw and send it again), and
only the writer's ``SyncStatus`` waits for the durable commit. While the worker waited for
each commit before it read the next message, a writer was relayed no faster than the database
committed: at 1,000 subscribers (``bench_ws.py``, a closed loop of 8 updates in flight) max
deliveries followed the commit latency of the moment (58 ms acks gave 0.37x Hocuspocus, 24 ms
2.3x, the same build, minutes apart). So the worker hands each relayed batch to this queue and
goes on reading; one task per document commits what waits, in order, batches relayed from the
same room document together (one commit for every update that arrived meanwhile, as the
worker's own batching did), and acknowledges every update in the client's order.

What a client sees is unchanged: one ``SyncStatus`` per update, in order, each sent once its
update is durable (or refused); a refusal for the document (forbidden, deleted) closes it and
nothing queued behind it is committed. The worker waits for the queue to drain before it
answers a step 1, so the step 2 follows every acknowledgement owed before it, and it relays no
further ahead than ``MAX_UNCOMMITTED`` updates. Presence does not wait (an editor sends it
with every keystroke; the others have every update relayed before it already).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from heaper_trio.protocol import messages as m
from heaper_trio.services.live.rooms import Relayed, Room
from heaper_trio.storage.errors import BlockInOtherHeap

if TYPE_CHECKING:
    from heaper_trio.services.live.connection import BlockWorker

log = logging.getLogger(__name__)
MAX_COMMIT = 256  # updates in one commit (the worker's batch bound)
MAX_UNCOMMITTED = 1024  # relayed updates not yet committed before the worker waits
# Only rooms with more subscribers than this queue their commits; smaller ones commit in the
# worker, between relays (``CommitQueue.commit_now``). bench_ws.py N=100 (9 interleaved runs,
# session 10): pipelining there cost 1.25x main's CPU per delivery (each update fanned out
# alone, and the fan-out overlapping the SQLite writer's commit); at N=1000 it is what lets
# max deliveries outrun the commit latency.
PIPELINE_ABOVE_SUBS = 256


@dataclass(eq=False, slots=True)
class Batch:
    """One relay's updates: ``acks`` SyncStatus frames owed, ``real`` to store."""

    acks: int
    real: list[bytes]
    relayed: Relayed | None
    stale: bool

    def joinable(self) -> bool:
        """Whether it may share a commit: every update relayed (so checked and applied), none
        refused, so one outcome holds for all of them as it held for the batch alone."""
        relayed = self.relayed
        return (
            relayed is not None
            and not self.stale
            and bool(self.real)
            and relayed.updates.issuperset(self.real)
        )


class CommitQueue:
    """Batches relayed and not yet committed, in order, and the one task committing them."""

    __slots__ = ("_batches", "_changed", "_running", "_scope", "uncommitted", "worker")

    def __init__(self, worker: BlockWorker) -> None:
        self.worker = worker
        # Made on the first batch and dropped once drained: an idle open document holds
        # none (a deque is ~760 bytes; issue 12, memory per idle WebSocket).
        self._batches: deque[Batch] | None = None
        self._running = False
        self._scope: trio.CancelScope | None = None
        self._changed: trio.Event | None = None  # set when a commit ends (waiters look again)
        self.uncommitted = 0  # updates queued or being committed

    @property
    def idle(self) -> bool:
        return not self._running and not self._batches

    async def put(self, room: Room, batch: Batch) -> None:
        """Queue ``batch`` behind the others; its commit runs in a task of its own, or here
        when the connection is closing (no task can start then)."""
        if self._batches is None:
            self._batches = deque()
        self._batches.append(batch)
        self.uncommitted += len(batch.real)
        if self._running:
            return
        self._running = True
        nursery = self.worker.conn._nursery
        if nursery is None:
            await self._run(room)
        else:
            nursery.start_soon(self._run, room)

    async def commit_now(self, room: Room, batch: Batch) -> None:
        """Commit ``batch`` in the caller's task (the worker: a small room, nothing queued),
        as the worker always did before the queue: its next message waits for this commit,
        and what arrives meanwhile is batched into the next one."""
        await self._commit(room, [batch])

    def cancel(self) -> None:
        """The document was closed: nothing more is committed or acknowledged."""
        self._batches = None
        if self._scope is not None:
            self._scope.cancel()

    async def wait(self, most: int) -> None:
        """Until at most ``most`` updates wait for their commit (0: none, and none running)."""
        while self.uncommitted > most or (most == 0 and not self.idle):
            if self._changed is None:
                self._changed = trio.Event()
            await self._changed.wait()

    async def _run(self, room: Room) -> None:
        try:
            with trio.CancelScope() as self._scope:
                while self._batches and not self.worker.stopped:
                    group = self._take(self._batches)
                    try:
                        go_on = await self._commit(room, group)
                    finally:
                        self.uncommitted -= sum(len(b.real) for b in group)
                        self._wake()
                    if not go_on:
                        self._batches = None
        finally:
            self._scope = None
            self._running = False
            left = self._batches
            self.uncommitted = sum(len(b.real) for b in left) if left else 0
            if not left:
                self._batches = None
            self._wake()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    @staticmethod
    def _take(batches: deque[Batch]) -> list[Batch]:
        """The first batch, and those behind it that may share its commit."""
        first = batches.popleft()
        group = [first]
        if not first.joinable():
            return group
        assert first.relayed is not None
        doc, total = first.relayed.doc, len(first.real)
        while batches:
            nxt = batches[0]
            if not nxt.joinable() or nxt.relayed is None or nxt.relayed.doc is not doc:
                break
            if total + len(nxt.real) > MAX_COMMIT:
                break
            group.append(batches.popleft())
            total += len(nxt.real)
        return group

    async def _commit(self, room: Room, group: list[Batch]) -> bool:
        """Commit ``group`` as one batch and acknowledge its updates; False when the
        document was refused (it is closed, and nothing behind it is committed)."""
        worker = self.worker
        conn = worker.conn
        real = [u for b in group for u in b.real]
        acks = sum(b.acks for b in group)
        ok = True
        if group[0].stale and real:
            ok = False
        elif real:
            origin: object
            if len(group) == 1:
                origin = group[0].relayed or worker.sub
            else:
                first = group[0].relayed
                assert first is not None
                updates = frozenset(u for b in group if b.relayed for u in b.relayed.updates)
                origin = Relayed(worker.sub, first.doc, updates)
            name = worker.name
            try:
                item = await conn.live.push_live(
                    worker.grant.user,
                    name.heap_id,
                    name.block_id,
                    real,
                    name.sync_version if room.exists else None,
                    origin=origin,
                )
            except BlockInOtherHeap as e:
                await conn.perform(conn.session.denied(worker.address, str(e)))
                return False
            ok = item.status in ("ok", "created")
            if item.status in ("forbidden", "deleted"):
                await conn.perform(conn.session.denied(worker.address, item.error or item.status))
                return False
            if not ok:
                log.info(
                    "live update refused for block %s: %s", name.block_id, item.error or item.status
                )
        await conn.reply_many(m.encode(m.SyncStatus(worker.address, ok)), acks)
        return True
