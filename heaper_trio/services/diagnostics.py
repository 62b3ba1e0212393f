"""Counters reported under ``diagnostics.realtime`` by ``GET /api/health``.

Plain integers bumped from the event loop (one thread), so no locking. The live-sync layer
owns the updates; health only reads a snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RealtimeCounters:
    connections: int = 0  # open WebSocket connections now
    connections_total: int = 0  # accepted since start
    documents_loaded: int = 0
    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    dropped_slow_consumers: int = 0
    refused_connection_limit: int = 0  # over ws_max_connections_per_user: 4429

    def snapshot(self) -> dict[str, int]:
        # A shallow copy of the fields (all ints): dataclasses.asdict deep-copies, which
        # cost more than the rest of building the health answer.
        return dict(vars(self))
