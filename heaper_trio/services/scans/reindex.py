"""Re-reading what files are: ``regenerate_file`` (one file, at once) and ``reindex_files``
(every file of a heap or of all the caller's heaps, as a background job reported like a scan).

A file is probed again (MIME type, width, height, duration); its row and the ``files_v0``
entries of the caller's blocks holding it are updated where they differ (entries that already
say the same are not written), and cached thumbnails are dropped so they are made again. The
file is read as the file routes read it (``ScanService.open_file``): a scanned file only if it
is still the one hashed (otherwise ``409 file_changed``, and it is rescanned).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from heaper_trio import crdt
from heaper_trio.errors import Conflict, NotFound
from heaper_trio.records import FileRecord, User
from heaper_trio.services.documents import DocumentService
from heaper_trio.services.files import FileService
from heaper_trio.services.scans.commit import file_key
from heaper_trio.services.scans.job import ScanJob
from heaper_trio.services.scans.probe import HEAD_BYTES, FileFacts, probe_facts
from heaper_trio.services.scans.source import OpenFile
from heaper_trio.storage.base import Storage

if TYPE_CHECKING:
    from heaper_trio.services.media.service import MediaService

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Regenerated:
    """One file probed again: what it is now, and how many of the caller's blocks changed."""

    file_hash: str
    file_id: str
    facts: FileFacts
    blocks_changed: int


def _patch(key: str, fields: dict[str, Any], doc: crdt.BlockDocument) -> bytes:
    return doc.patch_file_entry(key, fields, create=False)


class FileReprobe:
    def __init__(
        self,
        storage: Storage,
        documents: DocumentService,
        files: FileService,
        media: MediaService | None,
        open_file: Callable[[FileRecord], Awaitable[OpenFile]],
    ) -> None:
        self.storage = storage
        self.documents = documents
        self.files = files
        self.media = media
        self.open_file = open_file  # ScanService.open_file

    async def file(self, user: User, record: FileRecord) -> tuple[FileFacts, int]:
        """Probe one file again and bring its row and the user's entries up to date; returns
        what it is and how many blocks changed. NotFound if its bytes are gone."""
        try:
            opened = await self.open_file(record)
        except NotFound:
            raise NotFound(
                "the file's content is not on the server any more", code="file_content_missing"
            ) from None
        with opened:
            head = await trio.to_thread.run_sync(os.pread, opened.fd, HEAD_BYTES, 0)
            facts = await probe_facts(self.media, opened.path, record.name, head)
        meta = {
            **{k: v for k, v in record.meta.items() if k not in ("width", "height", "duration")},
            **{k: v for k, v in facts.fields().items() if k != "mime_type" and v is not None},
        }
        if meta != record.meta or facts.mime_type != record.mime_type:
            await self.storage.update_file(record.hash, meta=meta, mime_type=facts.mime_type)
        changed = 0
        edit = partial(_patch, file_key(record.hash, record.size), facts.fields())
        for heap_id, block_id in await self.storage.blocks_holding_file(record.hash, user.id):
            status = await self.documents.server_edit(user.id, heap_id, block_id, edit)
            changed += status == "ok"
        if self.media is not None:
            await trio.to_thread.run_sync(self.media.forget, record.hash)
        await self.files.forget_thumbnails(record.hash)  # the bucket's copies (files_backend s3)
        return facts, changed

    async def regenerate(self, user: User, key: str) -> Regenerated:
        # ``readable``: only a file the user proved, never one a block of theirs just claims
        record = await self.files.readable(user, key)
        facts, changed = await self.file(user, record)
        return Regenerated(record.hash, record.id, facts, changed)

    async def reindex(self, job: ScanJob, user: User, heap_id: str | None, jobs: int) -> None:
        """Every file of the heap (or of all the user's heaps), ``jobs`` at a time."""
        heaps = [heap_id] if heap_id else [h.id for h in await self.storage.list_heaps(user.id)]
        hashes: list[str] = []
        for h in heaps:
            hashes += await self.storage.file_hashes_of_heap(h)
        hashes = sorted(set(hashes))
        job.files_seen = len(hashes)
        send, recv = trio.open_memory_channel[str](0)

        async def worker(recv: trio.MemoryReceiveChannel[str]) -> None:
            async with recv:
                async for h in recv:
                    await self._one(job, user, h)

        with job.work_scope:
            async with trio.open_nursery() as nursery:
                async with recv:
                    for _ in range(jobs):
                        nursery.start_soon(worker, recv.clone())
                async with send:
                    for h in hashes:
                        await send.send(h)

    async def _one(self, job: ScanJob, user: User, file_hash: str) -> None:
        """A hash the user's blocks only claim (pushed in files_v0, bytes never proved) is
        skipped exactly like an unknown one: no probe, no entry written, nothing in the job's
        report (path, bytes) from another user's file (issue 9, item 2)."""
        if not await self.storage.file_readable_by(file_hash, user.id):
            job.skipped += 1
            return
        record = await self.storage.get_file(file_hash)
        if record is None:
            job.skipped += 1
            return
        job.current_path = record.source_path or record.name
        try:
            _, changed = await self.file(user, record)
        except NotFound:
            job.files_missing += 1
            return
        except Conflict:  # a scanned file that changed: its rescan is queued
            job.errors += 1
            return
        except Exception:
            log.exception("reindex %s: %s failed", job.scan_id, file_hash)
            job.errors += 1
            return
        job.files_done += 1
        job.files_changed += changed > 0
        job.files_unchanged += changed == 0
        job.bytes += record.size
