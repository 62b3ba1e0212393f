"""Live updates between server processes that share one PostgreSQL database.

Every change committed here is announced as a small pointer (block, log position, kind); the
other processes' hubs read the stored rows and send their subscribers what they lack
(sync-findings 6.8: no lossy side channel, nobody applies another process's step 2). A small
commit's updates go inline just before its pointer (``announce.UpdatesAnnouncement``), so a
hub holding the log right up to them applies them without the reread; the pointer stays the
authority for everyone else. User events (scan progress, file ready) travel the same way, as
they are small, and so do aborts of jobs asked through another process (``scans/registry``).
With SQLite there is one process and no bridge.

Block commits (scan batches' included), purges and heap deletions are announced by the
storage inside their own transaction (``PostgresStorage.announce_commits_as``), so an
acknowledged change is never left unannounced by a process that dies right after its commit;
the bridge skips those (``announced_in_commit``) and announces only what that did not cover
(user events, and commits of a storage without in-transaction announcements). On the
receiving side the hub rereads storage whenever an announcement may have been missed
(listener reconnected or overflowed, a document loading while one came in). The text of an
announcement is ``protocol/announce.py``'s.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence

import trio

from heaper_trio.protocol import announce
from heaper_trio.services.commits import Committed
from heaper_trio.services.live.hub import LiveHub
from heaper_trio.storage.base import Storage

log = logging.getLogger(__name__)
OUTBOX = 10_000
BATCH = 200


class ProcessBridge:
    def __init__(self, storage: Storage, hub: LiveHub) -> None:
        self.storage = storage
        self.hub = hub
        self.process_id = uuid.uuid4().hex[:16]
        self._send, self._receive = trio.open_memory_channel[str](OUTBOX)
        # who hears an abort asked through the database (``container._wire``: the scan jobs)
        self.job_abort_hooks: list[Callable[[str], None]] = []
        # PostgreSQL's engine announces commits in their own transaction (not in Storage)
        announce_commits_as = getattr(storage, "announce_commits_as", None)
        self._announced: Callable[[str, str, str, int], bool] | None = getattr(
            storage, "announced_in_commit", None
        )
        if announce_commits_as is not None:
            announce_commits_as(self.process_id)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self._listen)
            nursery.start_soon(self._announce_forever)
            task_status.started()

    async def _listen(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await self.storage.listen(self._received, task_status=task_status)

    # -- out ----------------------------------------------------------------------------------
    def _queue(self, announcement: announce.Announcement) -> None:
        text = announce.encode(announcement)
        if len(text.encode()) > announce.MAX_PAYLOAD_BYTES:
            log.warning("live announcement too large to send (%d bytes)", len(text))
            return
        try:
            self._send.send_nowait(text)
        except trio.WouldBlock:  # the database is not keeping up; other processes resync
            log.warning("live announcements backed up; one dropped")

    def on_commit(self, committed: Sequence[Committed]) -> None:
        for c in committed:
            if self._announced is not None and self._announced(
                c.kind, c.heap_id, c.block_id, c.seq
            ):
                continue  # its transaction announced it at COMMIT
            self._queue(
                announce.BlockAnnouncement(
                    self.process_id,
                    c.kind,
                    c.heap_id,
                    c.block_id,
                    c.seq,
                    c.sync_version,
                    c.updated_at,
                )
            )

    def on_user_event(self, user_id: str, evt: dict[str, object]) -> None:
        self._queue(announce.UserEventAnnouncement(self.process_id, user_id, evt))

    async def _announce_forever(self) -> None:
        while True:
            batch = [await self._receive.receive()]
            while len(batch) < BATCH:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                await self.storage.announce(batch)
            except Exception:
                log.exception("announcing %d live changes failed", len(batch))

    # -- in -----------------------------------------------------------------------------------
    def _received(self, text: str) -> None:
        if not text:  # the listener reconnected: catch up every live document
            self.hub.catch_up_all()
            return
        try:
            received = announce.decode(text)
        except announce.MalformedAnnouncement as e:
            log.warning("ignoring a malformed live announcement (%s): %.200s", e, text)
            return
        if received.origin == self.process_id:
            return
        if isinstance(received, announce.UserEventAnnouncement):
            self.hub.publish_user_event(received.user_id, dict(received.event), local_only=True)
            return
        if isinstance(received, announce.JobAbortAnnouncement):
            for hook in list(self.job_abort_hooks):
                hook(received.job_id)
            return
        if isinstance(received, announce.UpdatesAnnouncement):
            self.hub.on_remote_updates(
                received.block_id, received.seq, received.sync_version, received.updates
            )
            return
        self.hub.on_remote(
            Committed(
                received.heap_id,
                received.block_id,
                received.kind,
                received.seq,
                received.sync_version,
                received.updated_at,
            )
        )
