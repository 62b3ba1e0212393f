"""Files in an S3-compatible object store (AWS S3, MinIO, Garage, Ceph RGW), through boto3.

Why boto3: it is the reference client, kept by AWS, and it has every call this store needs,
low-level and by name: ranged GETs, multipart uploads driven part by part from any process
(CreateMultipartUpload, UploadPart, ListParts, ListMultipartUploads, Complete/Abort), server-
side copies that switch to UploadPartCopy past 5 GiB (``client.copy``), and presigned URLs.
``obstore`` is faster for whole-object transfers, but its multipart writer lives inside one
process, with no way to list or take over the parts another process uploaded, which resumable
uploads across processes need. boto3 is synchronous: every call runs in a worker thread under
one ``CapacityLimiter`` (as many as the client's HTTP pool), so the event loop never blocks
and a burst of downloads cannot open unbounded connections.

Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, an instance role); nothing here logs them or a presigned URL. Checksums are
computed only where a request requires them (``when_required``): the CRC32 headers newer
botocore adds by default are refused by several S3-compatible stores; our own SHA-256 checks
every byte anyway.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import boto3
import trio
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from heaper_trio.errors import StartupError
from heaper_trio.storage.blobs.base import ObjectChanged, ObjectMissing, ObjectStore, Part

THREADS = 8  # the limiter and the HTTP pool: one connection per thread
READ_SIZE = 1 << 20  # per thread hop, as file_response reads the disk (files-findings §5a)
MISSING = {"NoSuchKey", "NoSuchUpload", "404", "NotFound"}
T = TypeVar("T")
# whole-file PUTs switch to multipart past this; 16 MiB parts keep a 20 GiB file < 10,000 parts
TRANSFER = TransferConfig(
    multipart_threshold=64 * 1024**2, multipart_chunksize=16 * 1024**2, max_concurrency=4
)


# botocore's debug lines carry signed request headers and presigned URLs: never logged, even
# at log_level = debug
for _name in ("botocore", "boto3", "s3transfer", "urllib3"):
    logging.getLogger(_name).setLevel(logging.INFO)
_session: Any = None


def _shared_session() -> Any:
    """One boto3 session per process: a new one loads botocore's service models again
    (~0.7 s; a client from a session that has them takes ~0.1 s). Clients are made on the
    event loop's thread only, as sessions are not thread-safe."""
    global _session
    if _session is None:
        _session = boto3.session.Session()
    return _session


def _missing(e: ClientError) -> bool:
    return str(e.response.get("Error", {}).get("Code")) in MISSING


class S3Objects(ObjectStore):
    name = "s3"

    def __init__(self, bucket: str, *, endpoint: str = "", region: str = "us-east-1") -> None:
        self.bucket = bucket
        self.client: Any = _shared_session().client(
            "s3",
            endpoint_url=endpoint or None,
            region_name=region or None,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path" if endpoint else "auto"},
                max_pool_connections=THREADS,
                retries={"max_attempts": 4, "mode": "standard"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        self._threads = trio.CapacityLimiter(THREADS)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(
            lambda: fn(*args, **kwargs), limiter=self._threads, abandon_on_cancel=False
        )

    async def check(self) -> None:
        """At start: the bucket answers (a wrong endpoint, bucket or key fails in one line)."""
        try:
            await self._call(self.client.head_bucket, Bucket=self.bucket)
        except Exception as e:  # botocore's connection and client errors alike
            raise StartupError(f"s3_bucket: {self.bucket!r} is not reachable: {e}") from None

    # -- whole objects ----------------------------------------------------------------------
    async def size(self, key: str) -> int | None:
        try:
            head = await self._call(self.client.head_object, Bucket=self.bucket, Key=key)
        except ClientError as e:
            if _missing(e):
                return None
            raise
        return int(head["ContentLength"])

    async def put_file(self, key: str, path: Path) -> None:
        await self._call(self.client.upload_file, str(path), self.bucket, key, Config=TRANSFER)

    async def _get(self, key: str, **extra: Any) -> Any:
        return (await self._get_object(key, **extra))["Body"]

    async def _get_object(self, key: str, **extra: Any) -> Any:
        try:
            return await self._call(self.client.get_object, Bucket=self.bucket, Key=key, **extra)
        except ClientError as e:
            if _missing(e):
                raise ObjectMissing(key) from None
            raise

    async def read_range(self, key: str, first: int, length: int) -> AsyncIterator[bytes]:
        body = await self._get(key, Range=f"bytes={first}-{first + length - 1}")
        return self._stream(body)

    async def _stream(self, body: Any) -> AsyncIterator[bytes]:
        try:
            while data := await self._call(body.read, READ_SIZE):
                yield data
        finally:
            body.close()

    async def read_into(self, key: str, out: BinaryIO) -> str:
        return (await self.read_into_tagged(key, out))[0]

    async def read_into_tagged(self, key: str, out: BinaryIO) -> tuple[str, str]:
        """``read_into`` plus the ETag of the version read: a later ``copy(if_match=...)``
        then copies exactly the bytes that were hashed, not whatever the key holds by then."""
        found = await self._get_object(key)
        body, etag = found["Body"], str(found["ETag"])

        def copy() -> str:
            digest = hashlib.sha256()
            try:
                while data := body.read(READ_SIZE):
                    digest.update(data)
                    out.write(data)
            finally:
                body.close()
            out.flush()
            return digest.hexdigest()

        return await self._call(copy), etag

    async def delete(self, key: str) -> None:
        await self._call(self.client.delete_object, Bucket=self.bucket, Key=key)

    async def listing(self, prefix: str) -> list[tuple[str, int]]:
        """(key, size) of the objects under ``prefix``; the first 1,000 (a file's thumbnails
        are a handful)."""
        found = await self._call(self.client.list_objects_v2, Bucket=self.bucket, Prefix=prefix)
        return [(o["Key"], int(o["Size"])) for o in found.get("Contents", [])]

    async def delete_prefix(self, prefix: str) -> int:
        """Every object whose key starts with ``prefix`` (a file's thumbnails)."""
        objects = [{"Key": key} for key, _ in await self.listing(prefix)]
        if objects:
            await self._call(
                self.client.delete_objects, Bucket=self.bucket, Delete={"Objects": objects}
            )
        return len(objects)

    async def copy(self, source: str, target: str, *, if_match: str | None = None) -> None:
        """Server-side: no byte passes through us (UploadPartCopy past 5 GiB). With
        ``if_match`` the store copies only that version of ``source``; another one raises
        ``ObjectChanged``."""
        extra = {"CopySourceIfMatch": if_match} if if_match is not None else {}
        try:
            await self._call(
                self.client.copy,
                {"Bucket": self.bucket, "Key": source},
                self.bucket,
                target,
                ExtraArgs=extra,
                Config=TRANSFER,
            )
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if if_match is not None and code in ("PreconditionFailed", "412"):
                raise ObjectChanged(source) from None
            raise

    def presign(self, key: str, ttl: int, *, content_type: str, disposition: str) -> str:
        """A GET URL valid ``ttl`` seconds; the store answers Range on it itself."""
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": key,
                "ResponseContentType": content_type,
                "ResponseContentDisposition": disposition,
            },
            ExpiresIn=ttl,
        )
        return url

    # -- multipart uploads: any process may add a part or finish ----------------------------
    async def multipart_ids(self, key: str) -> list[str]:
        """The unfinished multipart uploads of exactly ``key``, oldest first (ties by id, so
        every process orders them alike)."""
        found = await self._call(self.client.list_multipart_uploads, Bucket=self.bucket, Prefix=key)
        uploads = [u for u in found.get("Uploads", []) if u["Key"] == key]
        uploads.sort(key=lambda u: (u["Initiated"], u["UploadId"]))
        return [u["UploadId"] for u in uploads]

    async def stale_multiparts(self, prefix: str, before_s: float) -> list[tuple[str, str]]:
        """(key, upload id) of unfinished multipart uploads under ``prefix`` started before
        ``before_s`` (Unix seconds); the first 1,000 (the rest at the next sweep)."""
        found = await self._call(
            self.client.list_multipart_uploads, Bucket=self.bucket, Prefix=prefix
        )
        return [
            (u["Key"], u["UploadId"])
            for u in found.get("Uploads", [])
            if u["Initiated"].timestamp() < before_s
        ]

    async def start_multipart(self, key: str) -> str:
        made = await self._call(self.client.create_multipart_upload, Bucket=self.bucket, Key=key)
        return str(made["UploadId"])

    async def put_part(self, key: str, upload_id: str, number: int, source: Path) -> None:
        """One part from a file (streamed from disk: never whole in memory)."""

        def put() -> None:
            with open(source, "rb") as body:
                self.client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
                )

        try:
            await self._call(put)
        except ClientError as e:
            if _missing(e):
                raise ObjectMissing(key) from None
            raise

    async def parts(self, key: str, upload_id: str) -> list[Part]:
        out: list[Part] = []
        marker = 0
        while True:
            try:
                page = await self._call(
                    self.client.list_parts,
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumberMarker=marker,
                )
            except ClientError as e:
                if _missing(e):
                    raise ObjectMissing(key) from None
                raise
            out += [Part(p["PartNumber"], p["Size"], p["ETag"]) for p in page.get("Parts", [])]
            if not page.get("IsTruncated"):
                return out
            marker = int(page["NextPartNumberMarker"])

    async def finish_multipart(self, key: str, upload_id: str, parts: list[Part]) -> None:
        try:
            await self._call(
                self.client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]
                },
            )
        except ClientError as e:
            if _missing(e):
                raise ObjectMissing(key) from None
            raise

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            await self._call(
                self.client.abort_multipart_upload, Bucket=self.bucket, Key=key, UploadId=upload_id
            )
        except ClientError as e:
            if not _missing(e):
                raise

    async def aclose(self) -> None:
        self.client.close()
