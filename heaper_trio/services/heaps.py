"""Heap-level operations beyond sync: delete, statistics, change markers, block history, trash.

Trash follows the contract: being in the trash is ``meta_v0.deleted_at`` in the block's own
document, so restoring is a server-side CRDT edit (stored, projected and answered like any
push), and emptying removes documents for good, leaving tombstones that delta reports.
"""

from __future__ import annotations

from typing import Any

from heaper_trio import crdt
from heaper_trio.errors import NotFound
from heaper_trio.services.documents import Committed, DocumentService
from heaper_trio.services.media.client_thumbnails import ClientThumbnails
from heaper_trio.services.files import FileService
from heaper_trio.records import BlockRecord, User


def trashed_json(b: BlockRecord) -> dict[str, Any]:
    return {"block_id": b.id, "id": b.id, "type": b.type, "title": b.title,
            "deleted_at": b.deleted_at, "updated_at": b.updated_at,
            "sync_version": b.sync_version}


class HeapService:
    def __init__(self, documents: DocumentService, files: FileService,
                 client_thumbnails: ClientThumbnails) -> None:
        self.documents = documents
        self.storage = documents.storage
        self.files = files  # files no block holds any more are removed
        self.client_thumbnails = client_thumbnails

    async def delete(self, user: User, heap_id: str) -> None:
        await self.documents.owned_heap(user, heap_id)
        hashes = await self.storage.file_hashes_of_heap(heap_id)
        holders = await self.storage.blocks_holding_files(heap_id)
        await self.storage.delete_heap(heap_id)
        await self._forget_files(hashes, holders)
        self.documents.announce([Committed(heap_id, "", "heap_deleted")])

    async def _forget_files(self, hashes: list[str], block_ids: list[str]) -> None:
        """Bytes no block holds any more, and the removed blocks' client thumbnails."""
        await self.files.forget_unreferenced(hashes)
        for block_id in block_ids:
            await self.client_thumbnails.forget_block(block_id)

    async def stats(self, user: User, heap_id: str) -> dict[str, Any]:
        heap = await self.documents.owned_heap(user, heap_id)
        return {"heap_id": heap.id, "name": heap.name, **await self.storage.heap_stats(heap_id)}

    async def changed_blocks(self, user: User, heap_id: str, marker: int, limit: int
                             ) -> dict[str, Any]:
        """The delta feed under its other name: ``marker`` in, ``next_marker`` out."""
        out = await self.documents.delta(user, heap_id, marker, limit)
        return {**out, "marker": marker, "next_marker": out["server_time"]}

    async def history(self, user: User, block_id: str) -> dict[str, Any]:
        stored = await self.storage.load_block(block_id)
        heap = await self.storage.get_heap(stored.heap_id) if stored else None
        if stored is None or heap is None or heap.owner_id != user.id:
            raise NotFound("no such block in your heaps", code="block_not_found")
        snapshot_seq, rows = await self.storage.block_history(block_id)
        doc = crdt.BlockDocument.load(stored.snapshot, stored.updates)
        return {
            "success": True, "block_id": block_id, "sync_version": stored.sync_version,
            "compacted_through": snapshot_seq,
            "updates": [{"seq": r.seq, "created_at": r.created_at, "author_id": r.author_id,
                         "size": r.size} for r in rows],
            "state": crdt.encode_b64(doc.full_state()),
            "state_vector": crdt.encode_b64(doc.state_vector()),
        }

    # -- trash ------------------------------------------------------------------------------
    async def trash(self, user: User, heap_id: str) -> list[dict[str, Any]]:
        await self.documents.owned_heap(user, heap_id)
        return [trashed_json(b) for b in await self.storage.trashed(heap_id)]

    async def empty_trash(self, user: User, heap_id: str, block_ids: list[str] | None
                          ) -> list[str]:
        """Remove trashed blocks for good (all of them, or the given ones that are trashed)."""
        await self.documents.owned_heap(user, heap_id)
        if block_ids is None:
            block_ids = [b.id for b in await self.storage.trashed(heap_id)]
        now = self.documents._now()
        hashes = await self.storage.file_hashes_of_heap(heap_id, block_ids)
        purged = await self.storage.purge_blocks(heap_id, block_ids, now)
        await self._forget_files(hashes, purged)
        self.documents.announce([Committed(heap_id, b, "purged", updated_at=now) for b in purged])
        return purged

    async def restore(self, user: User, heap_id: str, block_ids: list[str]
                      ) -> list[dict[str, str]]:
        await self.documents.owned_heap(user, heap_id)
        results = []
        for block_id in dict.fromkeys(block_ids):
            status = await self.documents.server_edit(
                user.id, heap_id, block_id, lambda doc: doc.set_meta("deleted_at", None))
            results.append({"block_id": block_id, "status": status})
        return results
