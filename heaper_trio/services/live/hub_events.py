"""The hub's event routing (``LiveHub`` inherits it; split from ``hub.py`` by concern): typed
JSON events of stored changes for the connections watching a heap, coalesced per block and
sent by the hub's flusher, and user events (scan progress, file ready) for every live channel
of a user, in this process and, through ``user_event_hooks``, the others."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import trio

from heaper_trio.protocol import events
from heaper_trio.services.commits import Committed
from heaper_trio.services.live.rooms import EventSink


class HubEvents:
    heap_watchers: dict[str, set[EventSink]]
    user_sinks: dict[str, set[EventSink]]
    user_event_hooks: list[Callable[[str, dict[str, object]], None]]
    _events: dict[tuple[str, str], dict[str, object]]  # coalesced block events
    _wake: trio.Event  # wakes the hub's flusher

    def _queue_event(self, c: Committed) -> None:
        if c.heap_id not in self.heap_watchers:
            return
        kind = events.BLOCK_KINDS[c.kind]
        if kind == "heap.deleted":
            evt = events.event(kind, heap_id=c.heap_id)
        elif kind == "block.purged":
            evt = events.event(
                kind, heap_id=c.heap_id, block_id=c.block_id, deleted_at=c.updated_at
            )
        else:
            evt = events.event(
                kind,
                heap_id=c.heap_id,
                block_id=c.block_id,
                sync_version=c.sync_version,
                updated_at=c.updated_at,
                seq=c.seq,
            )
        key = (c.heap_id, c.block_id)
        previous = self._events.get(key)
        if (
            previous is not None
            and previous["type"] in ("block.created", "block.deleted", "block.restored")
            and kind == "block.changed"
        ):
            evt["type"] = previous["type"]  # a later edit does not hide the transition
        self._events[key] = evt
        self._wake.set()

    def watch_heaps(self, sink: EventSink, heap_ids: Sequence[str]) -> None:
        for heap_id in heap_ids:
            self.heap_watchers.setdefault(heap_id, set()).add(sink)

    def unwatch_heaps(self, sink: EventSink, heap_ids: Sequence[str] | None = None) -> None:
        for heap_id in list(self.heap_watchers) if heap_ids is None else heap_ids:
            watchers = self.heap_watchers.get(heap_id)
            if watchers is not None:
                watchers.discard(sink)
                if not watchers:
                    del self.heap_watchers[heap_id]

    def add_user_sink(self, sink: EventSink) -> None:
        self.user_sinks.setdefault(sink.user_id, set()).add(sink)

    def remove_user_sink(self, sink: EventSink) -> None:
        sinks = self.user_sinks.get(sink.user_id)
        if sinks is not None:
            sinks.discard(sink)
            if not sinks:
                del self.user_sinks[sink.user_id]
        self.unwatch_heaps(sink)

    def publish_user_event(
        self, user_id: str, evt: dict[str, object], *, local_only: bool = False
    ) -> None:
        """A job's event (scan progress, file ready) for every live channel of its owner, in
        this process and (unless ``local_only``) the others on the same database."""
        for sink in list(self.user_sinks.get(user_id, ())):
            sink.send_event(evt)
        if not local_only:
            for hook in list(self.user_event_hooks):
                hook(user_id, evt)
