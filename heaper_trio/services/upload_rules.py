"""What a client may name for a file: its hash, its media type, and how a resumable upload
of it is cut into chunks. Pure checks on plain values (no I/O), shared by the routes, which
refuse bad input before any service runs, and by ``FileService``, which plans the upload; each
refusal is a 4xx with a stable code (``bad_hash``, ``invalid_value``, 413)."""

from __future__ import annotations

import mimetypes

from heaper_trio.errors import BadRequest, PayloadTooLarge
from heaper_trio.services.file_store import HASH

MIN_CHUNK_BYTES = 64 * 1024  # a file smaller than this is one chunk; the last may be shorter
MAX_CHUNKS = 10_000  # bounds the `received` lists and the chunk files of one upload


def check_hash(value: str) -> str:
    value = value.strip().lower()
    if not HASH.fullmatch(value):
        raise BadRequest(
            "a file hash is the lowercase hex SHA-256 of its content (64 chars)", code="bad_hash"
        )
    return value


def guess_mime(name: str, given: str | None = None) -> str:
    if given and "/" in given and len(given) <= 255 and "\n" not in given:
        return given.strip()
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def chunk_plan(size: int, chunk_size: int, max_chunk_bytes: int) -> int:
    """The number of chunks, if the chunking keeps one upload's work bounded.

    A tiny chunk size would make every init, status and complete walk millions of chunks, so
    chunks are at least ``MIN_CHUNK_BYTES`` (a smaller file is simply one chunk) and a file has
    at most ``MAX_CHUNKS``; the details tell a client what would be accepted."""
    min_chunk = min(MIN_CHUNK_BYTES, max_chunk_bytes)
    limits = {
        "field": "chunk_size",
        "min_chunk_size": min_chunk,
        "max_chunk_size": max_chunk_bytes,
        "max_chunks": MAX_CHUNKS,
    }
    if chunk_size > max_chunk_bytes:
        raise PayloadTooLarge("chunk_size exceeds max_chunk_bytes", details=limits)
    if chunk_size < min_chunk:
        raise BadRequest(
            f"chunk_size must be at least {min_chunk} bytes (a smaller file is one chunk)",
            code="invalid_value",
            details=limits,
        )
    total = max(1, -(-size // chunk_size))
    if total > MAX_CHUNKS:
        raise BadRequest(
            f"a file is at most {MAX_CHUNKS} chunks: use a chunk_size of at least "
            f"{-(-size // MAX_CHUNKS)}",
            code="invalid_value",
            details={**limits, "total_chunks": total, "needed_chunk_size": -(-size // MAX_CHUNKS)},
        )
    return total
