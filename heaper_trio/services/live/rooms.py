"""What the hub holds per live document: its room (the shared document and who has it open),
the subscriptions, and the sinks the hub sends through (and the transport below them)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from heaper_trio import crdt
from heaper_trio.protocol import frames
from heaper_trio.protocol.names import BlockName
from heaper_trio.protocol.presence import PresenceTable

# Transport.write_now's answers
WRITTEN = 0  # on the wire (or dropped: the connection is closed, as hypercorn drops it)
PARTIAL = 1  # begun: the transport holds the rest (``holding``) for the next send_many
BUSY = 2  # nothing written (a write in progress, or no direct path): queue it


class Transport(Protocol):
    """A live connection's socket (``web/ws_transport.py``); ``send_many`` writes several
    frames at once (and first the rest of a frame ``write_now`` began), ``write_now`` one
    frame without waiting when it can."""

    async def receive(self) -> bytes | str | None: ...
    async def send(self, data: bytes | str) -> None: ...
    async def send_many(self, frames: Iterable[bytes | str]) -> None: ...
    def write_now(self, data: bytes | str) -> int: ...
    @property
    def holding(self) -> bool: ...
    async def close(self, code: int, reason: str) -> None: ...


class FrameSink(Protocol):
    """A connection, as the hub sees it: a non-blocking send that may refuse (queue full)."""

    def send_frame(self, frame: bytes) -> bool: ...


class EventSink(Protocol):
    """A user's event channel (``events`` on /ws, or the legacy /api/ws)."""

    @property
    def user_id(self) -> str: ...

    def send_event(self, evt: dict[str, object]) -> bool: ...


@dataclass(eq=False)
class Subscription:
    """One open block document on one connection (one address: name or name + session)."""

    sink: FrameSink
    address: str
    name: BlockName
    user_id: str
    prefix: bytes = b""  # the frame's address field, encoded once

    def __post_init__(self) -> None:
        self.prefix = frames.address_prefix(self.address)


@dataclass(frozen=True, eq=False)
class Relayed:
    """The origin of a live batch sent to the other subscribers before it was stored
    (:meth:`LiveHub.relay`): its commit must not apply or send those updates again, as long
    as the room still holds the document they were applied to."""

    sub: Subscription
    doc: crdt.BlockDocument
    updates: frozenset[bytes]
    changed: bool = True  # the document took something new from it (room_resets.unstored)


@dataclass(eq=False)
class Room:
    block_id: str
    heap_id: str
    subs: set[Subscription] = field(default_factory=set)
    presence: PresenceTable = field(default_factory=PresenceTable)
    ready: trio.Event = field(default_factory=trio.Event)
    doc: crdt.BlockDocument | None = None
    exists: bool = False
    sync_version: int = 1
    last_seq: int = 0
    failed: str | None = None
    purged: bool = False  # gone for good: nothing more is relayed before it is stored
    early: list[tuple[bytes, int]] = field(default_factory=list)  # (update, sync_version)
    pending: list[tuple[bytes, object | None]] = field(default_factory=list)
    flushed_at: float = -math.inf  # the last fan-out straight from a relay (LiveHub.relay)
    catching_up: bool = False
    # Reads of storage by the catch-up, begun and taken in (room_rewrites.VersionWatch waits
    # for one begun after it asked); ``read_done`` is set, then dropped, at each one taken in.
    reads_begun: int = 0
    reads_done: int = 0
    read_done: trio.Event | None = None
    # Another process announced a change this room may lack: reread storage (again) before
    # the catch-up ends, or once loaded.
    recheck: bool = False
    # Resets that asked the subscribers for unstored relayed batches since the room's last
    # commit, and whether the room is being set back to storage (room_resets): nothing is
    # relayed meanwhile.
    unstored: int = 0
    resetting: bool = False
    reset_at: float = -math.inf  # trio time the last reset began (room_resets)
