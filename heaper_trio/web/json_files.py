"""The contract's JSON for what the file services answer (uploads, client thumbnails,
regenerated files).

The services return frozen outcomes (``services/file_outcomes.py`` and friends) and know no
key names; the wire's names, the ``success`` flag and lists instead of tuples are written here
only, in the key order the answers always had.
"""

from __future__ import annotations

from typing import Any

from heaper_trio.services.file_outcomes import (
    AlreadyStored,
    ChunkStored,
    FileMissing,
    StoredFile,
    UploadOutcome,
    UploadProgress,
    UploadReady,
)
from heaper_trio.services.media.client_thumbnails import ClientThumbnail
from heaper_trio.services.scans.reindex import Regenerated


def upload_json(outcome: UploadOutcome) -> dict[str, Any]:
    """Every answer of the upload and file-status routes."""
    out: dict[str, Any] = {"success": True, "status": outcome.status.value}
    match outcome:
        case StoredFile():
            out.update(
                block_id=outcome.block_id,
                file_hash=outcome.file_hash,
                file_id=outcome.file_id,
                size=outcome.size,
            )
        case AlreadyStored():
            out.update(
                chunk_size=outcome.chunk_size,
                total_chunks=outcome.total_chunks,
                received=list(outcome.received),
                file_hash=outcome.file_hash,
                file_id=outcome.file_id,
            )
        case UploadReady():
            out.update(
                chunk_size=outcome.chunk_size,
                total_chunks=outcome.total_chunks,
                received=list(outcome.received),
                expires_at=outcome.expires_at,
            )
        case UploadProgress():
            out.update(
                size=outcome.size,
                chunk_size=outcome.chunk_size,
                total_chunks=outcome.total_chunks,
                received=list(outcome.received),
                expires_at=outcome.expires_at,
                bytes_received=outcome.bytes_received,
            )
        case FileMissing():
            out.update(block_id=outcome.block_id, file_hash=outcome.file_hash)
        case ChunkStored():
            out.update(index=outcome.index, size=outcome.size)
    return out


def client_thumbnail_json(thumb: ClientThumbnail) -> dict[str, Any]:
    return {
        "success": True,
        "status": "ok",
        "block_id": thumb.block_id,
        "file_hash": thumb.file_hash,
        "thumbnail_key": thumb.thumbnail_key,
        "type": thumb.kind,
        "size": thumb.size,
        "mime_type": thumb.mime_type,
        "bytes": thumb.length,
    }


def regenerated_json(result: Regenerated) -> dict[str, Any]:
    """``facts.fields()`` keeps its None values here (width null for audio, ...), as the
    answer always did; only files_v0 entries drop them."""
    return {
        "success": True,
        "file_hash": result.file_hash,
        "file_id": result.file_id,
        **result.facts.fields(),
        "blocks_changed": result.blocks_changed,
    }
