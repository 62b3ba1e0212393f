"""A live connection's per-document workers: the base (one task per open document, run again
when a message arrives after it ended idle) and the ``events`` channel. The block documents'
worker (``BlockWorker``) lives with the connection (``connection.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from heaper_trio.crdt import EMPTY_UPDATE
from heaper_trio.protocol import events
from heaper_trio.protocol import messages as m
from heaper_trio.services.live.context import Grant
from heaper_trio.services.live.inbox import Inbox
from heaper_trio.storage.errors import BlockInOtherHeap

if TYPE_CHECKING:
    from heaper_trio.services.live.connection import LiveConnection

INBOX_SIZE = 64


class DocumentWorker:
    """One open document's task: messages in the order the client sent them."""

    def __init__(self, conn: LiveConnection, address: str, grant: Grant) -> None:
        self.conn = conn
        self.address = address
        self.grant = grant
        self.inbox = Inbox[m.Message](INBOX_SIZE)
        self.cancel_scope = trio.CancelScope()
        self.running = True  # _open starts the first run
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True
        self.cancel_scope.cancel()

    def wake(self) -> None:
        """A message is in the inbox: a worker whose task ended idle runs again."""
        if not self.running and not self.stopped and self.conn._nursery is not None:
            self.running = True
            self.conn._nursery.start_soon(self.run)

    async def run(self) -> None:
        self.cancel_scope = trio.CancelScope()  # a scope is entered once: one per run
        if self.stopped:
            return
        try:
            with self.cancel_scope:
                try:
                    await self.serve()
                except BlockInOtherHeap as e:
                    await self.conn.perform(self.conn.session.denied(self.address, str(e)))
        finally:
            self.running = False  # (no checkpoint since the inbox was found empty)

    async def serve(self) -> None:
        raise NotImplementedError

    async def empty_sync(self, message: m.Message) -> None:
        """A document without content (the events channel): sync completes at once."""
        if isinstance(message, m.SyncStep1):
            await self.conn.reply(m.encode(m.SyncStep2(self.address, EMPTY_UPDATE)))
        elif isinstance(message, (m.SyncStep2, m.SyncUpdate)):
            await self.conn.reply(m.encode(m.SyncStatus(self.address, False)))


class EventsWorker(DocumentWorker):
    """The per-user ``events`` channel: typed JSON events as stateless messages."""

    @property
    def user_id(self) -> str:
        return self.grant.user.id

    def send_event(self, evt: dict[str, object]) -> bool:
        return self.conn.send_frame(m.encode(m.Stateless(self.address, events.to_json(evt))))

    async def serve(self) -> None:
        hub = self.conn.live.hub
        hub.add_user_sink(self)
        try:
            async for message in self.inbox:
                if isinstance(message, m.Stateless):
                    await self._command(message.payload)
                else:
                    await self.empty_sync(message)
        finally:
            hub.remove_user_sink(self)

    async def _command(self, payload: str) -> None:
        command = events.parse_command(payload)
        if command is None:
            evt = events.event(
                "error",
                error="unknown_command",
                message="expected subscribe or unsubscribe with heap_ids",
            )
            return await self._answer(evt)
        hub, heap_ids = self.conn.live.hub, command["heap_ids"]
        if command["type"] == "unsubscribe":
            hub.unwatch_heaps(self, heap_ids)
            return await self._answer(events.event("unsubscribed", heap_ids=heap_ids))
        mine = []
        for heap_id in heap_ids:
            heap = await self.conn.live.heaps.get_heap(heap_id)
            if heap is not None and heap.owner_id == self.grant.user.id:
                mine.append(heap_id)
        hub.watch_heaps(self, mine)
        await self._answer(events.event("subscribed", heap_ids=mine))

    async def _answer(self, evt: dict[str, object]) -> None:
        await self.conn.reply(m.encode(m.Stateless(self.address, events.to_json(evt))))
