"""The content-addressed store and its index: where verified bytes live, recording a file
for a user (the grant and the block's ``files_v0`` entry), who may read what, and forgetting
files no block holds. Uploads (``files.FileService``) build on it; the rules are in the
``files`` module docstring."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

import trio

from heaper_trio import crdt
from heaper_trio.errors import (
    Conflict,
    NotFound,
)
from heaper_trio.protocol import events
from heaper_trio.records import FileRecord, User
from heaper_trio.services.documents import DocumentService
from heaper_trio.services.upload_disk import (  # _write: tests make the disk full there
    _commit,
)
from heaper_trio.settings import Settings
from heaper_trio.storage.base import Storage

log = logging.getLogger(__name__)
HASH = re.compile(r"[0-9a-f]{64}")
PROBE_THREADS = 4  # stat, scandir, mkdir, unlink of uploads: quick, but never the DB's threads
IO_THREADS = 4  # writing, hashing, assembling: long, kept off the probes' limiter


class FileStore:
    def __init__(
        self,
        storage: Storage,
        documents: DocumentService,
        settings: Settings,
        publish: Callable[[str, dict[str, object]], None],
        probe: Callable[[Path, str], Awaitable[Any]] | None = None,
    ) -> None:
        self.storage = storage
        self.probe = probe  # media probe: type from content, width/height/duration
        self.documents = documents
        self.settings = settings
        self.publish = publish  # user events (file.ready) for the live channel
        self.store = settings.data_path / "files" / "sha256"
        # trio.to_thread's default limiter is shared with the database threads (SQLite)
        self._probe_threads = trio.CapacityLimiter(PROBE_THREADS)
        self._io_threads = trio.CapacityLimiter(IO_THREADS)

    async def _probe_fs(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._probe_threads)

    async def _io(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._io_threads)

    # -- paths and access ---------------------------------------------------------------------
    def store_path(self, hash: str) -> Path:
        return self.store / hash[:2] / hash[2:4] / hash

    def path_of(self, record: FileRecord) -> Path:
        return Path(record.source_path) if record.source_path else self.store_path(record.hash)

    async def readable(self, user: User, key: str) -> FileRecord:
        """The file a ``:key`` (file id or hash) names, if a block of the user's holds it and
        the user proved its bytes. Unknown, not-yours and only-claimed answer alike: no
        existence leak."""
        record = await self.storage.get_file(key.lower() if HASH.fullmatch(key.lower()) else key)
        if record is None or not await self.storage.file_readable_by(record.hash, user.id):
            raise NotFound("no such file in your heaps", code="file_not_found")
        return record

    # -- recording a verified file --------------------------------------------------------------
    async def _probe(self, hash: str, name: str, mime_type: str) -> tuple[str, dict[str, Any]]:
        """Type and dimensions from the content (a client's type is a hint only)."""
        if self.probe is None:
            return mime_type, {}
        try:
            info = await self.probe(self.store_path(hash), name)
        except Exception:  # metadata is a bonus: an upload never fails for it
            log.exception("probing %s failed", hash)
            return mime_type, {}
        found = {
            k: v
            for k, v in info.as_dict().items()
            if k in ("width", "height", "duration", "frames", "kind") and v is not None
        }
        if info.mime_type and info.mime_type != "application/octet-stream":
            mime_type = info.mime_type
        return mime_type, found

    async def _record(
        self,
        user: User,
        heap_id: str,
        block_id: str,
        hash: str,
        size: int,
        name: str,
        mime_type: str,
        meta: dict[str, Any] | None = None,
    ) -> FileRecord:
        """Every caller has the bytes verified for this user first (direct and complete hash
        them; init's ``exists`` requires a proof already), so this is where grants come from."""
        if meta is None and await self.storage.get_file(hash) is None:
            mime_type, meta = await self._probe(hash, name, mime_type)
        record = await self.storage.add_file(
            FileRecord(
                hash,
                uuid.uuid4().hex[:16],
                size,
                mime_type,
                name,
                None,
                meta or {},
                int(time.time() * 1000),
            )
        )
        await self.storage.grant_file(hash, user.id)
        # the caller's name only: the stored row keeps the first uploader's, which is theirs
        entry = {
            "hash": hash,
            "name": name,
            "mime_type": record.mime_type,
            "file_size": size,
            "file_id": record.id,
            **{
                k: v
                for k, v in record.meta.items()
                if k in ("width", "height", "duration") and v is not None
            },
        }
        status = await self.documents.server_edit(
            user.id,
            heap_id,
            block_id,
            lambda doc: doc.set_file_entry(f"{hash}:{size}", entry),
            create=lambda: crdt.new_block_document(block_type="file", title=name),
        )
        if status in ("not_found", "conflict"):
            raise Conflict(
                f"the block could not record the file ({status})",
                code="block_unavailable" if status == "not_found" else "conflict",
            )
        self.publish(
            user.id,
            events.event(
                "file.ready", heap_id=heap_id, block_id=block_id, file_hash=hash, file_id=record.id
            ),
        )
        return record

    async def _in_store(self, hash: str) -> bool:
        """The store holds verified bytes of this hash. A scanned copy does not count: it
        lives in somebody's folder, may change or go at any time, and must never be where
        another upload's only copy is."""
        return bool(await self._probe_fs(self.store_path(hash).is_file))

    async def _stored(self, out: BinaryIO | None, temp: Path, hash: str) -> None:
        """Move verified bytes into the store; a file row that pointed at a scanned copy now
        points at the store, so every holder reads the stable copy."""
        if out is not None:
            await self._io(_commit, out, temp, self.store_path(hash))
        record = await self.storage.get_file(hash)
        if record is not None and record.source_path is not None:
            await self.storage.update_file(hash, clear_source=True)

    async def _known(self, hash: str) -> FileRecord | None:
        record = await self.storage.get_file(hash)
        if record is None:
            return None
        if not await self._probe_fs(self.path_of(record).exists):
            return None  # bytes gone (a scanned file moved): take them again
        return record

    async def _check_block(self, user: User, heap_id: str, block_id: str) -> None:
        await self.documents.owned_heap(user, heap_id)
        if await self.storage.tombstones([block_id]):
            raise Conflict("this block was deleted for good", code="block_deleted")
        record = (await self.storage.get_blocks([block_id])).get(block_id)
        if record is not None and record.heap_id != heap_id:
            raise NotFound("no such block in this heap", code="block_not_found")

    async def forget_unreferenced(self, hashes: list[str]) -> int:
        """After blocks are removed for good: files no block holds any more go, bytes too
        (never a scanned file's own bytes: those belong to the user's folder)."""
        dropped = await self.storage.drop_unreferenced_files(hashes)

        def remove() -> None:
            for record in dropped:
                if record.source_path is None:
                    self.store_path(record.hash).unlink(missing_ok=True)

        await self._io(remove)
        return len(dropped)
