"""Presence (awareness) of the hub's rooms (``LiveHub`` inherits it; split from ``hub.py`` by
concern): states relayed to everyone on the document, the sender too, as Hocuspocus does (it
keeps them alive), and expired when their owner stops renewing them."""

from __future__ import annotations

import trio

from heaper_trio.protocol import frames
from heaper_trio.protocol.messages import AwarenessEntry, decode_awareness, encode_awareness
from heaper_trio.protocol.presence import Owner
from heaper_trio.protocol.wire import ProtocolError
from heaper_trio.services.live.rooms import Room, Subscription

EXPIRE_EVERY_S = 5.0


class HubPresence:
    rooms: dict[str, Room]

    def _fan_out(self, room: Room, body: bytes, skip: object | None = None) -> None:
        raise NotImplementedError  # LiveHub's

    def awareness(self, sub: Subscription, payload: bytes) -> None:
        room = self.rooms.get(sub.name.block_id)
        if room is None or sub not in room.subs:
            return
        try:
            entries = decode_awareness(payload)
        except ProtocolError:
            return  # a bad presence update is dropped, the document stays open
        accepted = room.presence.apply(entries, Owner(sub.user_id, sub), trio.current_time())
        if accepted:
            self._broadcast_awareness(room, accepted)

    def presence_frame(self, sub: Subscription) -> bytes | None:
        room = self.rooms.get(sub.name.block_id)
        states = room.presence.states() if room else []
        if not states:
            return None
        return sub.prefix + frames.awareness_body(encode_awareness(states))

    def _broadcast_awareness(self, room: Room, entries: list[AwarenessEntry]) -> None:
        # the sender too, as Hocuspocus does: it keeps it alive
        self._fan_out(room, frames.awareness_body(encode_awareness(entries)))

    async def _expire_forever(self) -> None:
        while True:
            await trio.sleep(EXPIRE_EVERY_S)
            now = trio.current_time()  # trio's clock: a test's fake clock moves it
            for room in list(self.rooms.values()):
                gone = room.presence.expire(now)
                if gone:
                    self._broadcast_awareness(room, gone)
