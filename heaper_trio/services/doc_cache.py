"""Block documents kept in memory between pushes.

Rebuilding a document from its snapshot and log costs more than everything else in a push (a
log of 50 rows is about 1.4 ms of CPU against 0.05 ms to apply one update), and the blocks being
edited are few. So a push leaves its document here and the next push to the block takes it back.
Correctness does not depend on the cache: a push commits with the log position its document was
built from, and storage refuses it if another writer (another process) got there first; the push
then rebuilds from storage. An entry is taken out while a push uses it and put back only after
a successful commit, so a failed or cancelled push never leaves a half-applied document behind.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from heaper_trio import crdt

MAX_ENTRIES = 2000
MAX_BYTES = 64 * 1024 * 1024


@dataclass
class DocumentBase:
    """A document and the stored state it was built from."""

    doc: crdt.BlockDocument
    heap_id: str
    last_seq: int  # log position the document includes
    log_rows: int  # rows after the snapshot (compaction is due at COMPACT_EVERY)
    sync_version: int
    approx_bytes: int
    # ``meta_v0.deleted_at`` was set in this state (None: not known, the document tells):
    # kept from the commit's projection, so the next push need not read the document for it
    deleted: bool | None = None

    def was_deleted(self) -> bool:
        return self.deleted if self.deleted is not None else self.doc.deleted_at() is not None


class DocumentCache:
    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, DocumentBase] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def take(self, block_id: str) -> DocumentBase | None:
        entry = self._entries.pop(block_id, None)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._bytes -= entry.approx_bytes
        return entry

    def put(self, block_id: str, entry: DocumentBase) -> None:
        self.evict(block_id)
        self._entries[block_id] = entry
        self._bytes += entry.approx_bytes
        while self._entries and (
            len(self._entries) > self.max_entries or self._bytes > self.max_bytes
        ):
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.approx_bytes

    def evict(self, block_id: str) -> None:
        old = self._entries.pop(block_id, None)
        if old is not None:
            self._bytes -= old.approx_bytes

    def evict_heap(self, heap_id: str) -> None:
        for block_id in [b for b, e in self._entries.items() if e.heap_id == heap_id]:
            self.evict(block_id)

    def holds(self, block_id: str) -> bool:
        return block_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)
