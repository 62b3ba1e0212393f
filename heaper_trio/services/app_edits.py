"""The Heaper app's server-side edits of a block's ``files_v0`` (``POST /api/ydoc/update`` and
``POST /sync/upload-complete``): a file the caller may read recorded in a block of theirs, and
thumbnails recorded on a file a block holds. Each is a CRDT edit made by the server
(``DocumentService.server_edit``), stored, projected and broadcast like any pushed update, as an
upload's record is (``FileStore._record``).

The rules are the upload routes': the block must be the caller's (another user's, unknown and
purged ones answer alike, 404 ``block_not_found``); the file must be one the caller may read
(a block of theirs holds it and they proved its bytes: ``FileStore.readable``), so a hash alone
never attaches anyone else's file. The file row's name is its first uploader's and is never
copied into a block: a new entry takes the caller's ``name`` (else the file id). Edits patch the
entry (``patch_file_entry``): fields a client added stay, and an edit that changes nothing
writes nothing (``unchanged``), so every operation is idempotent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from heaper_trio import crdt
from heaper_trio.errors import Conflict, NotFound
from heaper_trio.protocol import events
from heaper_trio.records import BlockRecord, FileRecord, User
from heaper_trio.services.file_store import FileStore
from heaper_trio.services.sync_types import EditStatus

ENTRY_META = ("width", "height", "duration")  # what probing found, as an upload records it


@dataclass(frozen=True, slots=True)
class FileEdit:
    """How an edit of a block's file entry ended: ``ok`` (written) or ``unchanged``."""

    status: str
    block_id: str
    heap_id: str
    file_hash: str
    file_id: str
    size: int
    thumbnails: Mapping[str, Any] | None = None  # add_thumbnails: the entry's thumbnails now


def entry_key(record: FileRecord) -> str:
    """The contract's ``files_v0`` key: ``"<hash>:<size>"``."""
    return f"{record.hash}:{record.size}"


def entry_fields(record: FileRecord, name: str | None) -> dict[str, Any]:
    """The server-known fields of a file entry, as an upload writes them (``name`` only when
    the caller gave one: None leaves an entry's name as it is)."""
    fields: dict[str, Any] = {
        "hash": record.hash,
        "mime_type": record.mime_type,
        "file_size": record.size,
        "file_id": record.id,
        **{k: v for k, v in record.meta.items() if k in ENTRY_META and v is not None},
    }
    if name is not None:
        fields["name"] = name
    return fields


def thumbnail_fields(thumb: Mapping[str, Any]) -> dict[str, Any]:
    """A thumbnail's entry, named as the thumbnail upload route names one: ``type`` (default
    ``image``) and ``size`` (default its key), plus what the client says of it."""
    fields = {k: v for k, v in thumb.items() if k != "key"}
    return {"type": "image", "size": thumb["key"], **fields}


def _entry_of(doc: crdt.BlockDocument, record: FileRecord) -> tuple[str, dict[str, Any]] | None:
    """The block's entry for this file: the contract's key, else any entry naming the hash."""
    files = doc.project().files
    key = entry_key(record)
    if key in files:
        return key, files[key]
    for other in sorted(files):
        entry = files[other]
        if entry.get("hash") == record.hash or other.split(":", 1)[0] == record.hash:
            return other, entry
    return None


class AppEdits:
    def __init__(self, files: FileStore) -> None:
        self.files = files
        self.storage = files.storage
        self.documents = files.documents

    async def _own_block(self, user: User, block_id: str, heap_id: str | None) -> BlockRecord:
        record = (await self.storage.get_blocks([block_id])).get(block_id)
        heap = await self.storage.get_heap(record.heap_id) if record else None
        if (
            record is None
            or heap is None
            or heap.owner_id != user.id
            or (heap_id is not None and heap_id != record.heap_id)
        ):
            raise NotFound("no such block in your heaps", code="block_not_found")
        return record

    async def _held_file(self, user: User, file_hash: str) -> FileRecord:
        """A file the caller may read whose bytes the server holds now."""
        record = await self.files.readable(user, file_hash)
        if not await self.files.held(record):
            raise NotFound("the file's bytes are gone from the server", code="file_missing")
        return record

    async def _edit(self, user: User, block: BlockRecord, edit: Any) -> EditStatus:
        status = await self.documents.server_edit(user.id, block.heap_id, block.id, edit)
        if status is EditStatus.not_found:  # removed for good meanwhile
            raise NotFound("no such block in your heaps", code="block_not_found")
        if status is EditStatus.conflict:
            raise Conflict("the block kept changing under the edit; send it again", code="conflict")
        return status

    async def add_file(
        self, user: User, block_id: str, file_hash: str, name: str | None, heap_id: str | None
    ) -> FileEdit:
        """Record a readable file in the block's ``files_v0`` (creating or completing the
        entry; a name given replaces the entry's)."""
        block = await self._own_block(user, block_id, heap_id)
        record = await self._held_file(user, file_hash)

        def edit(doc: crdt.BlockDocument) -> bytes:
            found = _entry_of(doc, record)
            key = found[0] if found else entry_key(record)
            given = name if name is not None or found else record.id
            return doc.patch_file_entry(key, entry_fields(record, given))

        status = await self._edit(user, block, edit)
        return FileEdit(
            "unchanged" if status is EditStatus.unchanged else "ok",
            block.id,
            block.heap_id,
            record.hash,
            record.id,
            record.size,
        )

    async def upload_complete(
        self, user: User, block_id: str, file_hash: str, name: str | None, heap_id: str | None
    ) -> FileEdit:
        """The app's notice that an upload ended: the same edit as ``add_file`` (nothing to do
        when the upload already recorded the file), then ``file.ready`` if it wrote anything."""
        done = await self.add_file(user, block_id, file_hash, name, heap_id)
        if done.status == "ok":
            self.files.publish(
                user.id,
                events.event(
                    "file.ready",
                    heap_id=done.heap_id,
                    block_id=done.block_id,
                    file_hash=done.file_hash,
                    file_id=done.file_id,
                ),
            )
        return done

    async def add_thumbnails(
        self,
        user: User,
        block_id: str,
        file_hash: str,
        thumbnails: Sequence[Mapping[str, Any]],
        heap_id: str | None,
    ) -> FileEdit:
        """Record thumbnails (``key`` -> type, size, ...) on the block's entry of a file it
        holds; a key already there is replaced, others stay."""
        block = await self._own_block(user, block_id, heap_id)
        record = await self.files.readable(user, file_hash)
        merged: dict[str, Any] = {}

        def edit(doc: crdt.BlockDocument) -> bytes:
            found = _entry_of(doc, record)
            if found is None:
                raise NotFound("this block holds no such file", code="file_not_found")
            key, entry = found
            now = entry.get("thumbnails")
            merged.clear()
            merged.update(now if isinstance(now, dict) else {})
            for thumb in thumbnails:
                merged[thumb["key"]] = thumbnail_fields(thumb)
            return doc.patch_file_entry(key, {"thumbnails": dict(merged)}, create=False)

        status = await self._edit(user, block, edit)
        return FileEdit(
            "unchanged" if status is EditStatus.unchanged else "ok",
            block.id,
            block.heap_id,
            record.hash,
            record.id,
            record.size,
            dict(merged),
        )
