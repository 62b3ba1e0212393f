"""Heap-level operations beyond sync: delete, statistics, change markers, block history, trash.

Trash follows the contract: being in the trash is ``meta_v0.deleted_at`` in the block's own
document, so restoring is a server-side CRDT edit (stored, projected and answered like any
push), and emptying removes documents for good, leaving tombstones that delta reports. A
client edit setting ``meta_v0.permanently_deleted_at`` purges its block the same way (``purge``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from heaper_trio.errors import Forbidden
from heaper_trio.records import BlockRecord, ChangePage, EncodedChangePage, User
from heaper_trio.records.changes import ChangeKind
from heaper_trio.services.commits import Committed
from heaper_trio.services.documents import DocumentService
from heaper_trio.services.files import FileService
from heaper_trio.services.media.client_thumbnails import ClientThumbnails
from heaper_trio.services.sync_types import EditStatus


@dataclass(frozen=True)
class HeapStats:
    heap_id: str
    name: str
    counts: dict[str, Any]  # blocks, by_type, trash, files, file_bytes, last_change (storage)


@dataclass(frozen=True)
class Restored:
    """One block of a restore request and how its edit ended."""

    block_id: str
    status: EditStatus


class HeapService:
    def __init__(
        self, documents: DocumentService, files: FileService, client_thumbnails: ClientThumbnails
    ) -> None:
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
        self.documents.announce([Committed(heap_id, "", ChangeKind.heap_deleted)])

    async def _forget_files(self, hashes: list[str], block_ids: list[str]) -> None:
        """Bytes no block holds any more, and the removed blocks' client thumbnails."""
        await self.files.forget_unreferenced(hashes)
        for block_id in block_ids:
            await self.client_thumbnails.forget_block(block_id)

    async def stats(self, user: User, heap_id: str) -> HeapStats:
        heap = await self.documents.owned_heap(user, heap_id)
        return HeapStats(heap.id, heap.name, await self.storage.heap_stats(heap_id))

    async def changed_blocks(self, user: User, heap_id: str, marker: int, limit: int) -> ChangePage:
        """The delta feed under its other name: ``marker`` in, ``server_time`` is the next."""
        return await self.documents.delta(user, heap_id, marker, limit)

    async def delta_encoded(
        self, user: User, heap_id: str, since: int, limit: int
    ) -> EncodedChangePage:
        """The delta feed with its rows written as JSON by the database (``GET
        /api/sync/delta``): a walk's page costs no Python object per row (issue 12 item 4),
        and on PostgreSQL one round trip, the ownership check included."""
        page = await self.storage.owned_changes_since_encoded(user.id, heap_id, since, limit)
        if page is None:  # as ``owned_heap`` refuses
            raise Forbidden("this heap does not exist or is not yours", code="heap_forbidden")
        return page

    # -- trash ------------------------------------------------------------------------------
    async def trash(self, user: User, heap_id: str) -> list[BlockRecord]:
        await self.documents.owned_heap(user, heap_id)
        return await self.storage.trashed(heap_id)

    async def empty_trash(self, user: User, heap_id: str, block_ids: list[str] | None) -> list[str]:
        """Remove trashed blocks for good (all of them, or the given ones that are trashed)."""
        await self.documents.owned_heap(user, heap_id)
        if block_ids is None:
            block_ids = [b.id for b in await self.storage.trashed(heap_id)]
        return await self.purge(heap_id, block_ids)

    async def purge(self, heap_id: str, block_ids: list[str]) -> list[str]:
        """Remove those of ``block_ids`` that are in the heap's trash for good, free the files
        no other block holds and announce ``purged``. The one purge path: emptying the trash
        and pushes that set ``meta_v0.permanently_deleted_at`` (the document service calls it
        once their commit is durable); callers have checked that the heap is the user's."""
        now = self.documents._now()
        hashes = await self.storage.file_hashes_of_heap(heap_id, block_ids)
        purged = await self.storage.purge_blocks(heap_id, block_ids, now)
        await self._forget_files(hashes, purged)
        self.documents.announce(
            [Committed(heap_id, b, ChangeKind.purged, updated_at=now) for b in purged]
        )
        return purged

    async def finish_purges(self) -> int:
        """Purge the blocks an edit marked ``permanently_deleted_at`` whose purge did not run
        (the process died between the commit and the purge, or the purge failed); at start."""
        purged = 0
        for heap_id, block_ids in (await self.storage.marked_gone()).items():
            purged += len(await self.purge(heap_id, block_ids))
        return purged

    async def restore(self, user: User, heap_id: str, block_ids: list[str]) -> list[Restored]:
        """Each id once, in the order first given."""
        await self.documents.owned_heap(user, heap_id)
        results = []
        for block_id in dict.fromkeys(block_ids):
            status = await self.documents.server_edit(
                user.id, heap_id, block_id, lambda doc: doc.set_meta("deleted_at", None)
            )
            results.append(Restored(block_id, status))
        return results
