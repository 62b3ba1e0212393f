"""The commits of live batches already relayed to a big room, owned by the hub (issue 12).

A block worker relays each batch of its writer's updates to the room's other subscribers as it
arrives (``LiveHub.relay``: Yjs peers keep every update they saw and send it again when they
reconnect, so a relay before the commit loses nothing if the server dies), and only the
writer's ``SyncStatus`` waits for the durable commit. While the worker waited for each commit
before it read the next message, a writer was relayed no faster than the database committed:
at 1,000 subscribers (``bench_ws.py``, a closed loop of 8 updates in flight) the server sat at
a third of a core and delivered 8 updates per commit round trip. In rooms of more than
``PIPELINE_ABOVE_SUBS`` the worker therefore hands each relayed batch to its room's queue here
and goes on reading.

Why the hub owns the queue, not the connection (the review of the first try, branch h/live):
once relayed, the others hold the updates and the room's state vector says it has them, so no
resync would ever bring them back to the server: their commit must happen whatever the writer
does next. A writer that leaves (closes the document, disconnects, is dropped) ends its
connection's tasks, not the hub's, so every queued batch is still committed, in order.

Bounded in updates and in bytes per room (``MAX_QUEUED_UPDATES``, ``MAX_QUEUED_BYTES``): a
worker whose batch does not fit waits (its inbox, then the writer's socket, fills), and a batch
larger than the bound goes alone into an empty queue. Empty updates never come here (the
worker acknowledges them behind the commits it waits for, counted in its own bound).

One hub task per room drains its queue; consecutive batches of the same writer, document and
version share one commit (what arrived during the previous commit, as the worker's own
batching did), up to ``MAX_COMMIT`` updates. Each batch's :class:`CommitJob` then holds its
outcome, and its ``done`` event is set; the writer's connection sends the acknowledgements in
the order its batches were queued (``connection.py``, ``BlockWorker._send_acks``).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from heaper_trio.records import User
from heaper_trio.services.live.rooms import Relayed

if TYPE_CHECKING:  # (context imports the hub, which imports this)
    from heaper_trio.services.live.context import PushLive, PushResult

log = logging.getLogger(__name__)
# Rooms with more subscribers than this queue their commits here; smaller ones commit in the
# worker between relays. h/live (session 10, 9 interleaved runs of bench_ws.py N=100):
# pipelining a room of 100 cost 1.25x the CPU per delivery (each update fanned out alone).
PIPELINE_ABOVE_SUBS = 256
MAX_COMMIT = 256  # updates in one commit (the worker's batch bound)
MAX_QUEUED_UPDATES = 1024  # per room, relayed and not yet committed
MAX_QUEUED_BYTES = 4 * 1024 * 1024


@dataclass(eq=False, slots=True)
class CommitJob:
    """One relayed batch of one writer, to store; ``outcome`` once ``done`` is set (None: the
    commit raised, and ``error`` says what)."""

    push: PushLive
    user: User
    heap_id: str
    block_id: str
    updates: list[bytes]
    sync_version: int | None
    relayed: Relayed
    unchecked: bool
    size: int = 0
    done: trio.Event = field(default_factory=trio.Event)
    outcome: PushResult | None = None
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.size = sum(map(len, self.updates))

    def joins(self, other: CommitJob) -> bool:
        """Whether ``other`` may share this job's commit: the same writer, document,
        version and path, so that one outcome holds for both as it would for each."""
        return (
            other.relayed.sub is self.relayed.sub
            and other.relayed.doc is self.relayed.doc
            and other.sync_version == self.sync_version
            and other.unchecked == self.unchecked
            and other.user is self.user
        )


class RoomCommits:
    """A room's queue of relayed batches waiting for their commit, and its bound."""

    __slots__ = ("_changed", "jobs", "queued_bytes", "queued_updates", "running")

    def __init__(self) -> None:
        self.jobs: deque[CommitJob] = deque()
        self.queued_updates = 0  # queued or being committed
        self.queued_bytes = 0
        self.running = False  # a hub task drains the queue
        self._changed: trio.Event | None = None  # set when a commit ends

    @property
    def idle(self) -> bool:
        return not self.running and not self.jobs

    def fits(self, job: CommitJob) -> bool:
        if not self.queued_updates:
            return True  # alone, whatever its size: it cannot wait for a smaller queue
        return (
            self.queued_updates + len(job.updates) <= MAX_QUEUED_UPDATES
            and self.queued_bytes + job.size <= MAX_QUEUED_BYTES
        )

    async def wait_for_room(self, job: CommitJob) -> None:
        while not self.fits(job):
            if self._changed is None:
                self._changed = trio.Event()
            await self._changed.wait()

    def push(self, job: CommitJob) -> None:
        """Queue ``job`` (the caller waited for room, with no checkpoint since)."""
        self.jobs.append(job)
        self.queued_updates += len(job.updates)
        self.queued_bytes += job.size

    def take(self) -> list[CommitJob]:
        """The first job and those right behind it that may share its commit."""
        first = self.jobs.popleft()
        group, total = [first], len(first.updates)
        while self.jobs and first.joins(self.jobs[0]):
            if total + len(self.jobs[0].updates) > MAX_COMMIT:
                break
            job = self.jobs.popleft()
            group.append(job)
            total += len(job.updates)
        return group

    async def run(self) -> None:
        """Commit every queued job, in order; runs among the hub's tasks."""
        try:
            while self.jobs:
                group = self.take()
                try:
                    await commit_group(group)
                finally:
                    for job in group:
                        self.queued_updates -= len(job.updates)
                        self.queued_bytes -= job.size
                        job.done.set()
                    if self._changed is not None:
                        self._changed.set()
                        self._changed = None
        finally:
            self.running = False


async def commit_group(group: list[CommitJob]) -> None:
    """One commit for the jobs of ``group`` (they join: see :meth:`CommitJob.joins`)."""
    first = group[0]
    updates = [u for job in group for u in job.updates]
    origin = first.relayed
    if len(group) > 1:
        relayed = frozenset(u for job in group for u in job.relayed.updates)
        origin = Relayed(first.relayed.sub, first.relayed.doc, relayed)
    try:
        outcome = await first.push(
            first.user,
            first.heap_id,
            first.block_id,
            updates,
            first.sync_version,
            origin=origin,
            unchecked=first.unchecked,
        )
    except Exception as e:  # told to the writer (its acks); the next jobs still commit
        log.exception("committing relayed live updates of block %s failed", first.block_id)
        for job in group:
            job.error = e
        return
    for job in group:
        job.outcome = outcome
