"""Where verified file bytes live: the data directory's disk, or an S3-compatible bucket
(``files_backend``). ``make_object_store`` is the one place that picks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from heaper_trio.settings import Settings
from heaper_trio.storage.blobs.base import ObjectMissing, ObjectStore, Part, file_key, upload_key

if TYPE_CHECKING:
    from heaper_trio.storage.blobs.s3 import S3Objects

__all__ = ["ObjectMissing", "ObjectStore", "Part", "file_key", "make_object_store", "upload_key"]


def make_object_store(settings: Settings) -> S3Objects | None:
    """The bucket for ``files_backend = "s3"``; None for the local disk (the file service
    writes it itself)."""
    if settings.files_backend != "s3":
        return None
    from heaper_trio.storage.blobs.s3 import S3Objects  # boto3 is imported only when used

    return S3Objects(
        settings.s3_bucket,
        endpoint=settings.s3_endpoint,
        region=settings.s3_region,
        threads=settings.s3_threads,
        bulk_threads=settings.s3_bulk_threads,
    )
