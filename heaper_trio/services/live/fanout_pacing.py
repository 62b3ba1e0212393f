"""How often a room fans out (``LiveHub`` inherits it; split from ``hub.py`` by concern).

A fan-out to 1,000 sockets is 1,000 ``write`` calls, about 10 ms of the event loop, whether
the frame carries one update or ten. With a writer's updates relayed as they arrive (no longer
held back by its previous commit, ``relay_commits.py``), each would go out alone: at 1,000
subscribers the server spent its time writing one update at a time and delivered fewer
(``bench_ws.py --ns 1000``, closed loop: 11-12 us of CPU per delivery against 3-4; at 100
subscribers 14-16 us against 8-11). So a room whose fan-out took ``COOL_MIN_S`` or more rests for
as long as it took (at least ``REST_MIN_S``) before its next one: what arrives meanwhile waits
in the room, is merged and goes out in one frame per subscriber (as ``_flush_forever`` merges
one turn's commits). A big room's fan-out takes at most about half the loop, a delivery waits
at most one more fan-out's time (or ``REST_MIN_S``), and a room whose fan-out is cheap (a
handful of subscribers) or whose updates come slower than the rest is never held.
"""

from __future__ import annotations

import trio

from heaper_trio.services.live.rooms import Room

COOL_MIN_S = 0.0005  # fan-outs quicker than this never hold the room's next one
REST_MIN_S = 0.005  # a room that rests, rests at least this long
COOL_MAX_S = 0.05  # and at most this (a slow turn of the loop is not the fan-out's cost)
# Only rooms with more subscribers than this rest: smaller ones fan out between their writer's
# commits (relay_commits.PIPELINE_ABOVE_SUBS), which batch what arrives meanwhile already.
PACE_ABOVE_SUBS = 256


class FanoutPacing:
    _nursery: trio.Nursery | None

    def _mark(self, room: Room) -> None:  # the flusher's wake-up (LiveHub)
        raise NotImplementedError

    def _cool(self, room: Room, cost: float) -> None:
        """The room's fan-out took ``cost`` seconds: hold its next one for as long."""
        if (
            cost >= COOL_MIN_S
            and len(room.subs) > PACE_ABOVE_SUBS
            and self._nursery is not None
            and not room.cooling
        ):
            room.cooling = True
            self._nursery.start_soon(self._warm, room, min(max(cost, REST_MIN_S), COOL_MAX_S))

    async def _warm(self, room: Room, rest: float) -> None:
        try:
            await trio.sleep(rest)
        finally:
            room.cooling = False
            if room.pending:
                self._mark(room)
