"""Awareness (presence) states of one document, without I/O.

The y-protocols rules (awareness.js): a state applies when its clock is newer, and a ``null``
state at the same clock removes the client; owners renew every 15 s and states not renewed
for 30 s are dropped. What the Yjs servers leave out, and this table does (sync-findings 6.10):
a client id belongs to the connection that announced it, another account cannot overwrite
it, and a connection's states are removed the moment it goes away. The same account may take
an id over from another of its connections (a provider reconnecting before its old socket is
noticed dead keeps its Y.Doc and so its client id).
"""

from __future__ import annotations

from dataclasses import dataclass

from heaper_trio.protocol.messages import AwarenessEntry

OUTDATED_AFTER_S = 30.0
MAX_STATE_BYTES = 64 * 1024
MAX_CLIENTS_PER_OWNER = 16


@dataclass(frozen=True, slots=True)
class Owner:
    """Who announced a state: a connection (any hashable token) of an account."""

    user_id: str
    connection: object


@dataclass(slots=True)
class _Entry:
    clock: int
    state: str  # JSON text; "null" once removed
    owner: Owner
    seen_at: float


class PresenceTable:
    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}

    def apply(
        self, entries: list[AwarenessEntry], owner: Owner, now: float
    ) -> list[AwarenessEntry]:
        """Apply what a connection sent; return the accepted entries, to relay to everyone
        on the document (renewals included: they keep the other clients' timers alive)."""
        accepted = []
        for e in entries:
            current = self._entries.get(e.client_id)
            if current is not None and current.owner.user_id != owner.user_id:
                continue  # not theirs to change
            if len(e.state) > MAX_STATE_BYTES:
                continue
            if (
                (current is None or current.owner != owner)
                and e.state != "null"
                and self._owned(owner) >= MAX_CLIENTS_PER_OWNER
            ):
                continue
            newer = current is None or e.clock > current.clock
            removal = (
                current is not None
                and e.clock == current.clock
                and e.state == "null"
                and current.state != "null"
            )
            if not (newer or removal):
                continue
            self._entries[e.client_id] = _Entry(e.clock, e.state, owner, now)
            accepted.append(e)
        return accepted

    def _owned(self, owner: Owner) -> int:
        return sum(1 for x in self._entries.values() if x.owner == owner and x.state != "null")

    def remove_owner(self, connection: object) -> list[AwarenessEntry]:
        """A connection went away (or closed the document): its states end now."""
        return self._remove(lambda e: e.owner.connection is connection)

    def expire(self, now: float, timeout: float = OUTDATED_AFTER_S) -> list[AwarenessEntry]:
        return self._remove(lambda e: now - e.seen_at > timeout)

    def _remove(self, which: object) -> list[AwarenessEntry]:
        removed = []
        for client_id, e in self._entries.items():
            if e.state != "null" and which(e):  # type: ignore[operator]
                e.clock += 1
                e.state = "null"
                removed.append(AwarenessEntry(client_id, e.clock, "null"))
        return removed

    def states(self) -> list[AwarenessEntry]:
        """Every present state (what a newcomer or a query-awareness gets)."""
        return [
            AwarenessEntry(c, e.clock, e.state)
            for c, e in self._entries.items()
            if e.state != "null"
        ]

    def __len__(self) -> int:
        return len(self.states())
