"""Files in an S3-compatible object store (AWS S3, MinIO, Garage, Ceph RGW), through boto3.

Why boto3: it is the reference client, kept by AWS, and it has every call this store needs,
low-level and by name: ranged GETs, multipart uploads driven part by part from any process
(CreateMultipartUpload, UploadPart, ListParts, ListMultipartUploads, Complete/Abort), server-
side copies that switch to UploadPartCopy past 5 GiB (``client.copy``), and presigned URLs.
``obstore`` is faster for whole-object transfers, but its multipart writer lives inside one
process, with no way to list or take over the parts another process uploaded, which resumable
uploads across processes need.

boto3 is synchronous: every call runs in a worker thread, so the event loop never blocks,
under one of two ``CapacityLimiter``s (together as many as the client's HTTP pool):
``threads`` for interactive calls (HEAD, a Range read's GETs, small PUTs, listings) and
``bulk_threads`` for whole-object transfers (staging a file for a thumbnail, hashing an
assembled upload, large PUTs, copies, multipart parts). Whole objects move in bounded pieces
(``pieces``): no thread call holds a slot longer than one piece, a cancel ends a transfer
within one, and interactive calls never queue behind a bulk transfer.

Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, an instance role); nothing here logs them or a presigned URL. Checksums are
computed only where a request requires them (``when_required``): the CRC32 headers newer
botocore adds by default are refused by several S3-compatible stores; our own SHA-256 checks
every byte anyway.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import boto3
import trio
from botocore.config import Config
from botocore.exceptions import ClientError

from heaper_trio.errors import StartupError
from heaper_trio.storage.blobs.base import ObjectChanged, ObjectMissing, ObjectStore, Part
from heaper_trio.storage.blobs.pieces import (
    BULK_PIECE,
    FIRST_PIECE,
    RANGE_PIECE,
    Ahead,
    PieceBody,
    empty,
    part_size,
    spans,
)

THREADS = 8  # interactive calls at once (settings: s3_threads)
BULK_THREADS = 4  # whole-object transfers' pieces at once (s3_bulk_threads)
COPY_PIECE = 64 * 1024**2  # a server-side copy past this goes part by part (UploadPartCopy)
ABORT_WITHIN_S = 30.0  # a cancelled multipart write still aborts its parts, shielded this long
MISSING = {"NoSuchKey", "NoSuchUpload", "404", "NotFound"}
CHANGED = {"PreconditionFailed", "412"}
T = TypeVar("T")


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


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _missing(e: ClientError) -> bool:
    return _code(e) in MISSING


def _write_hashing(
    digest: Any, out: BinaryIO | None, data: bytes, at: int, total: int, keep: int | None
) -> None:
    """``data`` (bytes ``at``.. of ``total``) hashed, and written to ``out``: all of it, or
    with ``keep`` only what falls in the first or the last ``keep`` bytes, at its offset."""
    digest.update(data)  # hashlib lets go of the GIL for large buffers
    if out is None:
        return
    if keep is None:
        out.write(data)
        return
    end = at + len(data)
    if at < keep:
        out.seek(at)
        out.write(data[: keep - at])
    tail = max(keep, total - keep)
    if end > tail:
        start = max(at, tail)
        out.seek(start)
        out.write(data[start - at :])


class S3Objects(ObjectStore):
    name = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        endpoint: str = "",
        region: str = "us-east-1",
        threads: int = THREADS,
        bulk_threads: int = BULK_THREADS,
    ) -> None:
        self.bucket = bucket
        self.client: Any = _shared_session().client(
            "s3",
            endpoint_url=endpoint or None,
            region_name=region or None,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path" if endpoint else "auto"},
                max_pool_connections=threads + bulk_threads,  # one connection per thread
                retries={"max_attempts": 4, "mode": "standard"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        self._threads = trio.CapacityLimiter(threads)
        self._bulk = trio.CapacityLimiter(bulk_threads)
        self._local = trio.CapacityLimiter(bulk_threads)  # hashing and writing pieces here
        self.piece = BULK_PIECE  # tests make these small to see many pieces
        self.copy_piece = COPY_PIECE

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One interactive request."""
        return await trio.to_thread.run_sync(
            lambda: fn(*args, **kwargs), limiter=self._threads, abandon_on_cancel=False
        )

    async def _bulk_call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One piece of a bulk transfer."""
        return await trio.to_thread.run_sync(
            lambda: fn(*args, **kwargs), limiter=self._bulk, abandon_on_cancel=False
        )

    async def check(self) -> None:
        """At start: the bucket answers (a wrong endpoint, bucket or key fails in one line)."""
        try:
            await self._call(self.client.head_bucket, Bucket=self.bucket)
        except Exception as e:  # botocore's connection and client errors alike
            raise StartupError(f"s3_bucket: {self.bucket!r} is not reachable: {e}") from None

    # -- whole objects ----------------------------------------------------------------------
    async def _head(self, key: str, *, bulk: bool = False, if_match: str | None = None) -> Any:
        extra = {"IfMatch": if_match} if if_match is not None else {}
        call = self._bulk_call if bulk else self._call
        try:
            return await call(self.client.head_object, Bucket=self.bucket, Key=key, **extra)
        except ClientError as e:
            if _missing(e):
                raise ObjectMissing(key) from None
            if _code(e) in CHANGED:
                raise ObjectChanged(key) from None
            raise

    async def size(self, key: str) -> int | None:
        try:
            return int((await self._head(key))["ContentLength"])
        except ObjectMissing:
            return None

    async def put_file(self, key: str, path: Path) -> None:
        """One PUT up to a piece (interactive: thumbnails, small files); past that a multipart
        upload, one part-sized piece per thread call, its parts aborted if it fails or is
        cancelled."""
        size = (await trio.to_thread.run_sync(os.stat, path)).st_size
        if size <= self.piece:

            def put() -> None:
                with open(path, "rb") as body:
                    self.client.put_object(Bucket=self.bucket, Key=key, Body=body)

            await self._call(put)
            return
        made = await self._bulk_call(
            self.client.create_multipart_upload, Bucket=self.bucket, Key=key
        )
        upload_id, step = str(made["UploadId"]), part_size(size, self.piece)

        def part(number: int, at: int) -> dict[str, Any]:
            with open(path, "rb") as source:
                source.seek(at)
                data = source.read(step)
            done = self.client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
            )
            return {"PartNumber": number, "ETag": done["ETag"]}

        try:
            parts = [
                await self._bulk_call(part, n, at) for n, at in enumerate(range(0, size, step), 1)
            ]
            await self._bulk_call(
                self.client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + ABORT_WITHIN_S):
                await self.abort_multipart(key, upload_id)
            raise

    async def _open(self, limiter: trio.CapacityLimiter, key: str, **extra: Any) -> Any:
        """A GET whose body is then read in pieces; the request is made here (a missing
        object raises ``ObjectMissing`` before any header of ours is sent)."""
        try:
            return await trio.to_thread.run_sync(
                lambda: self.client.get_object(Bucket=self.bucket, Key=key, **extra),
                limiter=limiter,
                abandon_on_cancel=False,
            )
        except ClientError as e:
            if _missing(e):
                raise ObjectMissing(key) from None
            raise

    async def _stream(
        self, limiter: trio.CapacityLimiter, body: PieceBody, sizes: Iterator[int]
    ) -> AsyncIterator[bytes]:
        """The body in pieces of ``sizes``, each one read (one thread call) while the one
        before is used: at most two pieces held. Closing this (a cancel, the client gone)
        closes the body, after the read in flight if there is one."""
        reads = [partial(body.read, n) for n in sizes]
        try:
            ahead = await Ahead.start(limiter, reads[0]) if reads else None
            for read in reads[1:]:
                assert ahead is not None
                data = await ahead.result()
                ahead = await Ahead.start(limiter, read) if data else None
                if not data:
                    return
                yield data
            if ahead is not None and (data := await ahead.result()):
                yield data
        finally:
            body.close()

    async def read_range(self, key: str, first: int, length: int) -> AsyncIterator[bytes]:
        """Interactive: one ranged GET, read in pieces that start small (the first byte
        soon) and double."""
        if length <= 0:
            await self._head(key)
            return empty()
        found = await self._open(self._threads, key, Range=f"bytes={first}-{first + length - 1}")
        plan = spans(first, length, start=FIRST_PIECE, most=RANGE_PIECE)
        return self._stream(self._threads, PieceBody(found["Body"]), (n for _, n in plan))

    async def pieces(self, key: str, *, bulk: bool = True) -> tuple[str, int, AsyncIterator[bytes]]:
        """The whole object in pieces of ``piece`` bytes, the ETag of the version they are
        of (one GET: one version) and its size. The request is made before this returns."""
        limiter = self._bulk if bulk else self._threads
        found = await self._open(limiter, key)
        total = int(found["ContentLength"])
        plan = spans(0, total, start=self.piece, most=self.piece)
        stream = self._stream(limiter, PieceBody(found["Body"]), (n for _, n in plan))
        return str(found["ETag"]), total, stream

    async def read_into(self, key: str, out: BinaryIO, *, bulk: bool = False) -> str:
        return (await self.read_into_tagged(key, out, bulk=bulk))[0]

    async def read_into_tagged(
        self, key: str, out: BinaryIO | None, *, bulk: bool = True, keep: int | None = None
    ) -> tuple[str, str]:
        """The object's SHA-256 and the ETag of the version read: a later
        ``copy(if_match=...)`` then copies exactly the bytes that were hashed, not whatever
        the key holds by then. The bytes are written to ``out`` on the way; with ``keep``,
        only its first and last ``keep`` bytes, at their offsets: a sparse file of the
        object's size that takes at most 2 x ``keep`` of disk, where a media probe finds
        the headers and indexes formats keep at either end, and the true file size."""
        etag, total, stream = await self.pieces(key, bulk=bulk)
        digest, at = hashlib.sha256(), 0
        async with aclosing(stream):  # type: ignore[type-var]
            async for data in stream:
                await trio.to_thread.run_sync(
                    _write_hashing, digest, out, data, at, total, keep, limiter=self._local
                )
                at += len(data)
        if out is not None:
            await trio.to_thread.run_sync(out.flush, limiter=self._local)
        return digest.hexdigest(), etag

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
        """Server-side: no byte passes through us. One CopyObject up to ``copy_piece``, else
        UploadPartCopy part by part (bulk pieces). With ``if_match`` the store copies only
        that version of ``source`` (every request says so, the HEAD first); another one
        raises ``ObjectChanged``."""
        size = int((await self._head(source, bulk=True, if_match=if_match))["ContentLength"])
        cond = {"CopySourceIfMatch": if_match} if if_match is not None else {}
        origin = {"Bucket": self.bucket, "Key": source}
        try:
            if size <= self.copy_piece:
                await self._bulk_call(
                    self.client.copy_object,
                    Bucket=self.bucket,
                    Key=target,
                    CopySource=origin,
                    **cond,
                )
                return
            await self._copy_parts(origin, target, size, cond)
        except ClientError as e:
            if if_match is not None and _code(e) in CHANGED:
                raise ObjectChanged(source) from None
            raise

    async def _copy_parts(
        self, origin: dict[str, str], target: str, size: int, cond: dict[str, str]
    ) -> None:
        made = await self._bulk_call(
            self.client.create_multipart_upload, Bucket=self.bucket, Key=target
        )
        upload_id, step = str(made["UploadId"]), part_size(size, self.copy_piece)
        try:
            parts = []
            for number, at in enumerate(range(0, size, step), 1):
                done = await self._bulk_call(
                    self.client.upload_part_copy,
                    Bucket=self.bucket,
                    Key=target,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource=origin,
                    CopySourceRange=f"bytes={at}-{min(at + step, size) - 1}",
                    **cond,
                )
                parts.append({"PartNumber": number, "ETag": done["CopyPartResult"]["ETag"]})
            await self._bulk_call(
                self.client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=target,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + ABORT_WITHIN_S):
                await self.abort_multipart(target, upload_id)
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

        try:  # a chunk is a part: one request, as long as the chunk (bulk: it carries data)
            await self._bulk_call(put)
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
            await self._bulk_call(  # the store joins the parts: as long as a large copy
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
