"""The pure parts behind the file routes: outcomes shaped into the contract's JSON, the 416
error, and the one rule for a full disk."""

from __future__ import annotations

import errno
import json

import pytest

from heaper_trio.errors import (
    InsufficientStorage,
    RangeNotSatisfiable,
    disk_full,
    disk_full_is_507,
)
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
from heaper_trio.services.scans.probe import FileFacts
from heaper_trio.services.scans.reindex import Regenerated
from heaper_trio.web.json_files import client_thumbnail_json, regenerated_json, upload_json

H = "ab" * 32

# Each answer exactly as the routes gave it when the service built the dicts itself.
CASES: list[tuple[UploadOutcome, dict[str, object]]] = [
    (
        StoredFile("blk", H, "f" * 16, 10),
        {
            "success": True,
            "status": "complete",
            "block_id": "blk",
            "file_hash": H,
            "file_id": "f" * 16,
            "size": 10,
        },
    ),
    (
        AlreadyStored(65536, 3, H, "f" * 16),
        {
            "success": True,
            "status": "exists",
            "chunk_size": 65536,
            "total_chunks": 3,
            "received": [0, 1, 2],
            "file_hash": H,
            "file_id": "f" * 16,
        },
    ),
    (
        UploadReady(65536, 3, (0, 2), 1700000000000),
        {
            "success": True,
            "status": "ready",
            "chunk_size": 65536,
            "total_chunks": 3,
            "received": [0, 2],
            "expires_at": 1700000000000,
        },
    ),
    (
        UploadProgress(140000, 65536, 3, (2,), 1700000000000, 8928),
        {
            "success": True,
            "status": "uploading",
            "size": 140000,
            "chunk_size": 65536,
            "total_chunks": 3,
            "received": [2],
            "expires_at": 1700000000000,
            "bytes_received": 8928,
        },
    ),
    (
        FileMissing("blk", H),
        {"success": True, "status": "missing", "block_id": "blk", "file_hash": H},
    ),
    (ChunkStored(4, 65536), {"success": True, "status": "ok", "index": 4, "size": 65536}),
]


@pytest.mark.parametrize(("outcome", "expected"), CASES)
def test_upload_outcomes_give_the_contract_json(
    outcome: UploadOutcome, expected: dict[str, object]
) -> None:
    answer = upload_json(outcome)
    assert answer == expected
    assert list(answer) == list(expected)  # the key order the answers always had
    assert json.loads(json.dumps(answer)) == expected  # plain JSON types, no tuples or enums
    assert type(answer["status"]) is str


def test_client_thumbnail_and_regenerated_json() -> None:
    thumb = ClientThumbnail("blk", H, "small", "image", "small", "image/png", 208)
    assert client_thumbnail_json(thumb) == {
        "success": True,
        "status": "ok",
        "block_id": "blk",
        "file_hash": H,
        "thumbnail_key": "small",
        "type": "image",
        "size": "small",
        "mime_type": "image/png",
        "bytes": 208,
    }
    done = Regenerated(H, "f" * 16, FileFacts("audio/mpeg", None, None, 3.5), 2)
    assert regenerated_json(done) == {
        "success": True,
        "file_hash": H,
        "file_id": "f" * 16,
        "mime_type": "audio/mpeg",
        "width": None,
        "height": None,
        "duration": 3.5,
        "blocks_changed": 2,
    }


def test_range_not_satisfiable_carries_the_size() -> None:
    e = RangeNotSatisfiable(1000, headers={"X-Content-Type-Options": "nosniff"})
    assert e.status == 416
    assert e.body() == {
        "success": False,
        "error": "range_not_satisfiable",
        "message": "the requested range is outside the file (1000 bytes)",
    }
    assert e.headers == {
        "Content-Range": "bytes */1000",
        "Accept-Ranges": "bytes",
        "X-Content-Type-Options": "nosniff",
    }


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_507_wherever_it_is_raised(code: int) -> None:
    full = OSError(code, "no space")
    assert isinstance(disk_full(full), InsufficientStorage)
    assert isinstance(
        disk_full(ExceptionGroup("nursery", [ValueError(), full])), InsufficientStorage
    )
    with pytest.raises(InsufficientStorage) as raised, disk_full_is_507("no room for this upload"):
        raise full
    assert raised.value.status == 507 and raised.value.code == "insufficient_storage"
    assert raised.value.message == "no room for this upload"
    assert raised.value.__cause__ is full


def test_other_errors_are_not_a_full_disk() -> None:
    assert disk_full(OSError(errno.EACCES, "denied")) is None
    assert disk_full(ValueError("no errno")) is None
    with pytest.raises(PermissionError), disk_full_is_507():
        raise PermissionError(errno.EACCES, "denied")
