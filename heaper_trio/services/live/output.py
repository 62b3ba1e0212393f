"""How a ``/ws`` connection (services/live/connection.py) sends: straight to the socket when
nothing is queued before a frame, through its bounded outbox and a writer task otherwise.

Issue 12, item 1: at 1,000 subscribers, waking a writer task per socket per update was most of
what a delivery cost, so a frame goes out from the task that sends it (the hub's fan-out, a
document's reply) when the outbox is empty and the transport can (``Transport.write_now``); a
writer task runs only while frames wait or the transport holds the rest of a frame the socket
took part of, and ends when both are done (an idle connection holds no writer task).
"""

from __future__ import annotations

import trio

from heaper_trio.services.live.context import LiveContext
from heaper_trio.services.live.outbox import Outbox
from heaper_trio.services.live.rooms import BUSY, PARTIAL, Transport


class ConnectionOutput:
    """The sending half of a live connection; the connection sets these up."""

    transport: Transport
    live: LiveContext
    outbox: Outbox
    _nursery: trio.Nursery | None
    _writing: bool  # a writer task runs (or is about to)
    _wrote: bool  # a frame went out since the last tick (the session's ping timer)

    async def _writer(self) -> None:
        """Runs while the outbox holds frames or the transport a frame begun by a direct
        write (which its next write finishes first); ends when both are done."""
        counters = self.live.counters
        outbox, transport = self.outbox, self.transport
        try:
            while True:  # every frame queued since the last turn, in one write (bounded)
                frames = outbox.take_ready()
                if not frames and not transport.holding:
                    return
                await transport.send_many(frames)
                self._wrote = True
                counters.messages_out += len(frames)
                counters.bytes_out += sum(map(len, frames))
                if outbox.frames:  # more at once: yield first (a send to a closed socket
                    await trio.lowlevel.checkpoint()  # does not)
        finally:
            self._writing = False

    def _wake_writer(self) -> None:
        if not self._writing and self._nursery is not None:
            self._writing = True
            self._nursery.start_soon(self._writer)

    def _write_now(self, frame: bytes) -> bool:
        """Out at once, when nothing is queued before it and the transport can: True when
        the frame is on its way (a writer woken for the part the socket did not take)."""
        if self.outbox.frames:
            return False
        done = self.transport.write_now(frame)
        if done == BUSY:
            return False
        counters = self.live.counters
        counters.messages_out += 1
        counters.bytes_out += len(frame)
        self._wrote = True
        if done == PARTIAL:
            self._wake_writer()
        return True

    def _queue(self, frame: bytes) -> bool:
        """Out now, or into the outbox for the writer; False when the outbox is full."""
        if self._write_now(frame):
            return True
        if not self.outbox.offer(frame):
            return False
        self._wake_writer()
        return True

    async def reply(self, frame: bytes) -> None:
        """A document's own reply: waits for room in the outbox (a big initial sync paces
        itself) rather than dropping the connection."""
        if self._write_now(frame):
            return
        await self.outbox.put(frame)
        self._wake_writer()
