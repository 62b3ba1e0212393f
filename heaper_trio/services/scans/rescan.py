"""Rescanning one scanned file that a request found changed on disk.

The file routes refuse to serve a scanned file whose bytes are no longer those hashed
(``409 file_changed``) and queue its path here. A rescan hashes the file again (no link
followed, ``scans/probe.hash_file``) and updates every heap's entry at that path as a folder
scan would have: new content becomes the block's new ``files_v0`` entry under its new hash and
the old hash's row is pointed at another present copy or at none; a link, folder or special
file there now marks the entry missing (a scan would skip it). A path that is simply gone is
left to the next folder scan (its whole folder may be offline, not deleted).

Bounded: a path is queued once at a time, at most ``MAX_QUEUED`` paths wait, and
``RESCANS_AT_ONCE`` run together; the work runs in the scan service's nursery, never in the
request. A heap with a folder scan running over the path is left to that scan, and the entry
keeps its last scan's id, so no folder scan's missing pass mistakes it for unseen.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from heaper_trio.records import ScanEntry
from heaper_trio.services.documents import DocumentService
from heaper_trio.services.scans.commit import BlockEdit, BlockWriter
from heaper_trio.services.scans.job import ScanJob
from heaper_trio.services.scans.plan import BatchPlanner, Read, ToHash, mark, set_file_id
from heaper_trio.services.scans.probe import (
    NOT_A_FILE,
    FileFacts,
    Hashed,
    hash_file,
    probe_facts,
)
from heaper_trio.services.scans.walk import FileSeen, allowed_bases
from heaper_trio.settings import Settings
from heaper_trio.storage.base import Storage

if TYPE_CHECKING:
    from heaper_trio.services.media.service import MediaService

log = logging.getLogger(__name__)
MAX_QUEUED = 256
RESCANS_AT_ONCE = 2


def _inside(path: str, base: str) -> bool:
    return os.path.commonpath([path, base]) == base


class FileRescans:
    def __init__(
        self,
        storage: Storage,
        documents: DocumentService,
        media: MediaService | None,
        settings: Settings,
        forget: Callable[[list[str]], Awaitable[Any]],
        running: Callable[[], Iterable[ScanJob]],
    ) -> None:
        self.storage = storage
        self.documents = documents
        self.media = media
        self.settings = settings
        self.forget = forget  # FileService.forget_unreferenced
        self.running = running  # the scan service's running jobs
        self.queued: set[str] = set()
        self.done = 0  # rescans finished (tests wait on it)
        self.limiter = trio.CapacityLimiter(RESCANS_AT_ONCE)

    def queue(self, nursery: trio.Nursery | None, path: str) -> bool:
        """Rescan ``path`` soon, in ``nursery``; False if it is queued already, too many are,
        or the server is stopping."""
        if nursery is None or path in self.queued or len(self.queued) >= MAX_QUEUED:
            return False
        self.queued.add(path)
        nursery.start_soon(self._run, path)
        return True

    async def _run(self, path: str) -> None:
        try:
            async with self.limiter:
                await self.rescan(path)
        except Exception:  # this rescan failed; the server and the other jobs go on
            log.exception("rescan of %s failed", path)
        finally:
            self.queued.discard(path)
            self.done += 1

    async def rescan(self, path: str) -> int:
        """Hash ``path`` again and bring its present entries up to date; how many changed."""
        entries = [e for e in await self.storage.scan_entries_at(path) if not e.missing]
        if not entries:
            return 0
        stop = threading.Event()
        try:
            hashed = await trio.to_thread.run_sync(hash_file, path, stop, abandon_on_cancel=True)
        finally:
            stop.set()
        if hashed.error is not None and hashed.failure != NOT_A_FILE:
            log.info("rescan of %s: %s; left for the next scan", path, hashed.error)
            return 0
        facts = None
        if hashed.error is None:
            facts = await probe_facts(
                self.media, path, os.path.basename(path), hashed.head, hashed.identity
            )
        changed = 0
        for entry in entries:
            if (
                hashed.error is None
                and entry.hash == hashed.hash
                and entry.identity == hashed.identity
            ):
                continue  # already up to date (a rescan or a scan got there first)
            owner = await self._owner_if_allowed(entry)
            if owner is None:
                continue
            writer = BlockWriter(self.storage, self.documents, owner, entry.heap_id, entry.scan_id)
            if hashed.error is not None:
                log.info(
                    "rescan of %s: %s; marked missing in heap %s", path, hashed.error, entry.heap_id
                )
                await writer.write(
                    edits=[
                        BlockEdit(entry.block_id, mark(entry, True), replace(entry, missing=True))
                    ],
                    hashes=[entry.hash],
                )
            else:
                assert facts is not None
                await self._update(writer, owner, entry, hashed, facts)
            changed += 1
        return changed

    async def _owner_if_allowed(self, entry: ScanEntry) -> str | None:
        """The heap's owner, if the path is still one they may scan and no folder scan of
        theirs over it is running (that scan sees the file itself)."""
        if entry.folder_id is None:
            return None
        heap = await self.storage.get_heap(entry.heap_id)
        owner = await self.storage.get_user(heap.owner_id) if heap is not None else None
        if heap is None or owner is None:
            return None
        bases = allowed_bases(self.settings.scan_root_paths, owner.id, owner.is_admin)
        data = await trio.to_thread.run_sync(os.path.realpath, self.settings.data_path)
        if not any(_inside(entry.path, b) for b in bases) or _inside(entry.path, data):
            log.info(
                "rescan of %s: outside what the owner of heap %s may scan now; left as is",
                entry.path,
                entry.heap_id,
            )
            return None
        for job in self.running():
            if (
                job.running
                and job.kind == "scan"
                and job.heap_id == entry.heap_id
                and _inside(entry.path, job.path)
            ):
                return None
        return owner.id

    async def _update(
        self, writer: BlockWriter, owner: str, entry: ScanEntry, hashed: Hashed, facts: FileFacts
    ) -> None:
        """What a folder scan does with a changed file, for this one entry."""
        job = ScanJob(
            owner, entry.heap_id, os.path.dirname(entry.path), kind="rescan", scan_id=entry.scan_id
        )
        seen = FileSeen(
            entry.path,
            os.path.dirname(entry.path),
            os.path.basename(entry.path),
            hashed.size,
            hashed.mtime_ns,
            hashed.identity,
        )
        assert entry.folder_id is not None
        plan = await BatchPlanner(self.storage, job).plan(
            [Read(ToHash(seen, entry, entry.folder_id), hashed, facts)]
        )
        result = await writer.write(plan.new, plan.edits, plan.seen, replaced=plan.replaced)
        if plan.replaced:  # the old content's row, if no block holds it now
            await self.forget(sorted({h for h, _ in plan.replaced}))
        fixes = [
            BlockEdit(block_id, partial(set_file_id, key, result.file_ids[h]))
            for h, file_id in plan.ids.items()
            if h in result.file_ids and result.file_ids[h] != file_id
            for block_id, key in plan.holders.get(h, [])
        ]
        if fixes:  # an upload stored the hash first, under its own file_id
            await writer.write(edits=fixes)
