"""Counters reported under ``diagnostics.realtime`` by ``GET /api/health``.

Plain integers bumped from the event loop (one thread), so no locking. The live-sync layer
owns the updates; health only reads a snapshot. The events that Prometheus counts too
(``services/metrics.py``) go through the methods below, so the live layer names each event
once and never imports the metrics itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from heaper_trio.services import metrics


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

    def document_loaded(self) -> None:
        self.documents_loaded += 1
        metrics.document_loaded()

    def document_dropped(self) -> None:
        self.documents_loaded -= 1
        metrics.document_dropped()

    def dropped_slow_consumer(self) -> None:
        self.dropped_slow_consumers += 1
        metrics.slow_consumer_dropped()

    @staticmethod
    def delivered(frames: int) -> None:
        """The fan-out queued ``frames`` (one per subscriber); counted once per batch."""
        metrics.deliveries(frames)

    @staticmethod
    def coalesced(updates: int) -> None:
        """``updates`` merged into another update's frame."""
        metrics.coalesced(updates)
