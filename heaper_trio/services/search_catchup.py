"""Search rows of live edits, written a little later than the edit.

A live document commits many times a second; re-indexing its lines in every commit cost the
writer as much as the rest of the commit (issue 12, N=100). Live commits therefore only mark
the block (``BlockChange.search_later``, in the same transaction, so a crash loses nothing:
storage re-indexes marked blocks when it opens), and this task re-indexes marked blocks at
most ``DELAY_S`` after a live commit. A search in this process first catches up with what is
pending, so a search after a live edit here finds it at once; another process's live edits
show within ``DELAY_S`` (docs/api.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import trio

from heaper_trio.services.commits import Committed
from heaper_trio.storage.base import Storage

log = logging.getLogger(__name__)
DELAY_S = 2.0


class SearchCatchUp:
    def __init__(self, storage: Storage, delay_s: float = DELAY_S) -> None:
        self.storage = storage
        self.delay_s = delay_s
        self.pending = False  # a live commit marked a block since the last catch-up began
        self._wake = trio.Event()
        # One catch-up at a time: a search that finds one under way waits for its write,
        # since ``pending`` is cleared before that write commits (review finding).
        self._lock = trio.Lock()

    def on_commit(self, committed: Sequence[Committed]) -> None:
        """A commit listener: live commits (they have an origin) leave marks behind."""
        if any(c.origin is not None for c in committed):
            self.pending = True
            self._wake.set()

    async def catch_up(self) -> None:
        """Re-index every marked block (a batch per transaction) if a live commit may have
        left one. A caller that finds another's catch-up under way waits for it to end."""
        async with self._lock:
            while self.pending:
                self.pending = False
                try:
                    more = await self.storage.reindex_marked() > 0
                except BaseException:
                    self.pending = True  # still marked: the next caller tries again
                    raise
                self.pending = self.pending or more

    async def before_search(self) -> None:
        """``catch_up`` for a search about to read the rows. A failure (storage unwritable)
        does not fail the search: it answers from the rows as they are, as it would have
        before the live edit; the marks stay for the next try."""
        try:
            await self.catch_up()
        except Exception:
            log.exception("re-indexing live edits before a search failed")

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Catch up at most ``delay_s`` after a live commit, batching the ones in between."""
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await trio.sleep(self.delay_s)
            try:
                await self.catch_up()
            except Exception:  # the marks stay; the next live commit or the next start retry
                log.exception("re-indexing live edits for search failed")
