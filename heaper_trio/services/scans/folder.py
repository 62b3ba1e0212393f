"""A folder scan, in two phases as Immich does since PR #14456 (files-findings §7.16):

1. A walker (``scans/walk``, in a thread, a few hundred entries per hop) lists the tree; each
   batch is looked up in the scan index at once. A folder gets a folder block (once); a file
   whose identity is unchanged (device, inode, size, mtime, ctime: ``FileIdentity``) is only
   marked seen; any other file (entries from before that identity was kept too) goes to
2. a pool of ``scan_jobs`` hashers (threads; small files many per hop) that also probe its
   type and dimensions, and on to
3. one committer, which writes batches of up to ``BATCH_FILES`` files (or what arrived within
   ``BATCH_SECONDS``) as blocks plus index rows in one transaction each (``scans/commit``).

Once the whole tree was walked (not after an abort), entries of the folder that this scan did
not see are marked missing, in their index row and in their block (``files_v0[...].missing``
or ``meta_v0.missing``); blocks are never deleted, and a file that comes back is un-marked.
Entries below folders that could not be listed are left alone.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from heaper_trio.records import ScanEntry
from heaper_trio.services.documents import DocumentService
from heaper_trio.services.scans.commit import (
    BlockEdit,
    BlockWriter,
    new_block_id,
)
from heaper_trio.services.scans.job import ScanJob
from heaper_trio.services.scans.plan import (
    Back,
    BatchPlanner,
    Found,
    NewFolder,
    Plan,
    Read,
    Reads,
    ToHash,
    Unchanged,
    mark,
    set_file_id,
)
from heaper_trio.services.scans.probe import (
    GROUP_BYTES,
    GROUP_FILES,
    SMALL_FILE,
    hash_files,
    probe_facts,
)
from heaper_trio.services.scans.walk import FolderSeen, FolderWalker
from heaper_trio.storage.base import Storage

if TYPE_CHECKING:
    from heaper_trio.services.media.service import MediaService

log = logging.getLogger(__name__)
BATCH_FILES = 256
BATCH_SECONDS = 0.5
OUT_QUEUE = 4  # groups (of up to GROUP_FILES files) read but not yet planned
MISSING_PAGE = 500


@dataclass
class Pending:
    items: list[Found] = field(default_factory=list)
    files: int = 0
    since: float = 0.0

    def add(self, item: Found | Reads) -> None:
        if not self.items:
            self.since = trio.current_time()
        if isinstance(item, Reads):
            self.items.extend(item.reads)
            self.files += len(item.reads)
        else:
            self.items.append(item)
            self.files += item.files if isinstance(item, Unchanged) else 1


class FolderScan:
    def __init__(
        self,
        job: ScanJob,
        storage: Storage,
        documents: DocumentService,
        media: MediaService | None,
        jobs: int,
        exclude: frozenset[str],
        forget: Callable[[list[str]], Awaitable[Any]] | None = None,
    ) -> None:
        self.job = job
        self.forget = forget  # FileService.forget_unreferenced
        self.storage = storage
        self.media = media
        self.jobs = jobs
        self.writer = BlockWriter(storage, documents, job.user_id, job.heap_id, job.scan_id)
        self.walker = FolderWalker(job.path, exclude)
        self.stop = threading.Event()  # tells hashing threads left behind by a cancel to end
        self.folders: dict[str, str] = {}  # folder path -> its block id
        self.planner = BatchPlanner(storage, job)
        self.completed = False

    async def run(self) -> None:
        out_send, out_recv = trio.open_memory_channel[Found | Reads](OUT_QUEUE)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._produce, out_send)
            with self.job.commit_scope:
                await self._commit_loop(out_recv)
            nursery.cancel_scope.cancel()  # only left running if the commit scope timed out
        self.job.work_scope = trio.CancelScope()  # a scope is entered once; abort cancels this
        if self.completed and not self.job.aborted:
            self.job.state = "finishing"
            with self.job.work_scope:
                await self._mark_missing()

    # -- phase 1 and 2: walk, hash --------------------------------------------------------
    async def _produce(self, out_send: trio.MemorySendChannel[Found | Reads]) -> None:
        async with out_send:
            try:
                with self.job.work_scope:
                    to_hash, hash_recv = trio.open_memory_channel[list[ToHash]](2 * self.jobs)
                    async with trio.open_nursery() as nursery:
                        async with hash_recv:
                            for _ in range(self.jobs):
                                nursery.start_soon(self._hash, hash_recv.clone(), out_send.clone())
                        await self._walk(to_hash, out_send)
                    self.completed = True
            finally:
                self.stop.set()
                self.walker.close()
                self.job.skipped, self.job.errors = (
                    self.walker.skipped,
                    self.job.errors + self.walker.errors,
                )

    async def _walk(
        self,
        to_hash: trio.MemorySendChannel[list[ToHash]],
        out_send: trio.MemorySendChannel[Found | Reads],
    ) -> None:
        async with to_hash:
            while batch := await trio.to_thread.run_sync(self.walker.next_batch):
                known = await self.storage.scan_entries(self.job.heap_id, [i.path for i in batch])
                unchanged: list[str] = []
                group: list[ToHash] = []
                files = size = grouped = 0
                for item in batch:
                    entry = known.get(item.path)
                    if isinstance(item, FolderSeen):
                        await self._folder(item, entry, unchanged, out_send)
                        continue
                    self.job.files_seen += 1
                    self.job.current_path = item.path
                    folder_id = self.folders[item.folder]
                    if (
                        entry is not None
                        and entry.kind == "file"
                        and entry.identity is not None
                        and entry.identity == item.identity
                        and entry.folder_id == folder_id
                    ):
                        if entry.missing:
                            await out_send.send(Back(entry))
                        else:
                            unchanged.append(item.path)
                            files, size = files + 1, size + item.size
                    else:  # small files go to the hashers in groups, one thread hop each
                        group.append(ToHash(item, entry, folder_id))
                        grouped += item.size
                        if (
                            len(group) >= GROUP_FILES
                            or grouped >= GROUP_BYTES
                            or item.size >= SMALL_FILE
                        ):
                            await to_hash.send(group)
                            group, grouped = [], 0
                if group:
                    await to_hash.send(group)
                if unchanged:
                    await out_send.send(Unchanged(tuple(unchanged), files, size))

    async def _folder(
        self,
        item: FolderSeen,
        entry: ScanEntry | None,
        unchanged: list[str],
        out_send: trio.MemorySendChannel[Found | Reads],
    ) -> None:
        self.job.folders += 1
        if entry is not None and entry.kind == "folder":
            self.folders[item.path] = entry.block_id
            if entry.missing:
                await out_send.send(Back(entry))
            else:
                unchanged.append(item.path)
            return
        if item.parent is not None:
            parent_id: str | None = self.folders[item.parent]
        else:  # the scanned folder: tagged with its parent if an earlier scan made that one
            outer = await self.storage.scan_entries(self.job.heap_id, [os.path.dirname(item.path)])
            parent = next(iter(outer.values()), None)
            parent_id = parent.block_id if parent and parent.kind == "folder" else None
        self.folders[item.path] = block_id = new_block_id()
        await out_send.send(NewFolder(item, block_id, parent_id))

    async def _hash(
        self,
        recv: trio.MemoryReceiveChannel[list[ToHash]],
        out_send: trio.MemorySendChannel[Found | Reads],
    ) -> None:
        async with recv, out_send:
            async for group in recv:
                results = await trio.to_thread.run_sync(
                    hash_files, [t.seen.path for t in group], self.stop, abandon_on_cancel=True
                )
                reads = []
                for t, hashed in zip(group, results):
                    if hashed.error is not None:
                        log.info("scan %s: %s: %s", self.job.scan_id, t.seen.path, hashed.error)
                        self.job.errors += 1
                        continue
                    self.job.bytes_hashed += hashed.size
                    facts = await probe_facts(
                        self.media, t.seen.path, t.seen.name, hashed.head, hashed.identity
                    )
                    reads.append(Read(t, hashed, facts))
                await out_send.send(Reads(tuple(reads)))

    # -- phase 3: commit ------------------------------------------------------------------
    async def _commit_loop(self, recv: trio.MemoryReceiveChannel[Found | Reads]) -> None:
        """Batches are planned (looked up, blocks built) while the previous one is written."""
        plans, planned = trio.open_memory_channel[Plan](0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_plans, planned)
            async with plans, recv:
                pending = Pending()
                while True:
                    deadline = pending.since + BATCH_SECONDS if pending.items else float("inf")
                    with trio.move_on_at(deadline):
                        try:
                            pending.add(await recv.receive())
                        except trio.EndOfChannel:
                            break
                        if pending.files < BATCH_FILES:
                            continue
                    await plans.send(await self.planner.plan(pending.items))
                    pending = Pending()
                if pending.items:
                    await plans.send(await self.planner.plan(pending.items))

    async def _write_plans(self, planned: trio.MemoryReceiveChannel[Plan]) -> None:
        async with planned:
            async for plan in planned:
                result = await self.writer.write(
                    plan.new, plan.edits, plan.seen, replaced=plan.replaced
                )
                for item in plan.items:  # counted before any other await: a cancel from
                    self._count(item)  # here on cannot hide what was committed
                self.job.errors += result.gave_up
                if plan.replaced and self.forget is not None:  # rows no block holds now
                    await self.forget(sorted({h for h, _ in plan.replaced}))
                await self._fix_file_ids(plan.ids, result.file_ids, plan.holders)

    def _count(self, item: Found) -> None:
        job = self.job
        if isinstance(item, Unchanged):
            job.files_unchanged += item.files
            job.files_done += item.files
            job.bytes += item.bytes
        elif isinstance(item, Read):
            job.files_done += 1
            job.bytes += item.hashed.size
            if item.task.entry is not None and item.task.entry.kind == "file":
                job.files_changed += 1
            else:
                job.files_new += 1
        elif isinstance(item, Back) and item.entry.kind == "file":
            job.files_done += 1
            job.bytes += item.entry.size

    async def _fix_file_ids(
        self,
        used: dict[str, str],
        stored: dict[str, str],
        holders: dict[str, list[tuple[str, str]]],
    ) -> None:
        """An upload may have stored a hash first, under its own file_id, between our look-up
        and our commit (the insert of ours was then ignored): point the entries at the
        stored id. Rare."""
        edits = [
            BlockEdit(block_id, partial(set_file_id, key, stored[h]))
            for h, file_id in used.items()
            if h in stored and stored[h] != file_id
            for block_id, key in holders.get(h, [])
        ]
        if edits:
            await self.writer.write(edits=edits)

    # -- the missing pass -------------------------------------------------------------------
    async def _mark_missing(self) -> None:
        after = ""
        broken = [p.rstrip("/") for p in self.walker.error_folders]
        while rows := await self.storage.unseen_scan_entries(
            self.job.heap_id, self.job.path, self.job.scan_id, after, MISSING_PAGE
        ):
            after = rows[-1].path
            rows = [
                r
                for r in rows
                if not any(r.path == b or r.path.startswith(b + "/") for b in broken)
            ]
            edits = [BlockEdit(r.block_id, mark(r, True), replace(r, missing=True)) for r in rows]
            await self.writer.write(edits=edits, hashes=[r.hash for r in rows if r.hash])
            self.job.files_missing += sum(1 for r in rows if r.kind == "file")
            if rows:
                self.job.current_path = rows[-1].path
