"""Answering a GET or HEAD with a file from disk: ranges, validators, and a streamed body.

The raw, stream and thumbnail routes call ``file_response`` once they know which file to send:
a path (opened here), or a file they opened and checked themselves (a scanned file, see
``services/scans/source``), which is then served as is, never looked up again by path (nor
``fstat``-ed again: its check's ``fstat`` is the one), and closed once the body is sent (at once
when there is none; if the response is dropped unsent, with it). It reads the current request's
headers itself; ``ranges.plan_response`` decides between 200, 206, 304 and 416 (raised as
``RangeNotSatisfiable``, which the error handler answers). The body is read in 1 MiB
``os.pread`` calls in a worker thread (Quart's own ``FileBody`` reads 8 KiB per thread hop,
which caps loopback at ~20 MB/s; files-findings §5a), so only one chunk per response is ever
in memory.

Every answer (200, 206, 304, 416) carries ``X-Content-Type-Options: nosniff`` and
``Content-Security-Policy: sandbox``: a file opened as a page runs no script on our origin,
whatever its type says.

Scanned files are served in place, so a file may be truncated after ``fstat``: the body stops
where the data stops, and the connection is closed so the client sees fewer bytes than
``Content-Length`` announced. (A path that is not a regular file answers ``NotFound``, 404
``file_missing``.)

Three things Quart and hypercorn would otherwise get wrong here:
- HEAD is routed to the GET view, and Quart would read the whole body only for hypercorn to
  drop it; we send an empty body and set ``Content-Length`` to what the GET would carry.
- Quart wraps sending in ``RESPONSE_TIMEOUT`` (60 s) and silently stops there; a large download
  or a long video outlives that, so file responses have no timeout (``response.timeout = None``).
- A body that ends short of its ``Content-Length`` makes h11 raise at end-of-message, which
  hypercorn logs as "Error in ASGI Framework". We end the exchange the way quart-trio ends it when
  the client disconnects: by cancelling the request's nursery (see ``_end_exchange_early``).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Literal

import trio
from quart import Response, request

from heaper_trio.errors import NotFound, RangeNotSatisfiable
from heaper_trio.services.scans.source import OpenFile, open_own
from heaper_trio.web.quart_compat import HANDLE_REQUEST_CODE
from heaper_trio.web.ranges import (
    ByteRange,
    clean_media_type,
    content_disposition,
    http_date,
    plan_response,
    quote_etag,
)

log = logging.getLogger("heaper_trio.web")

READ_SIZE = 1 << 20  # per thread hop; 64 KiB already costs ~5x in throughput (files-findings §5a)
DEFAULT_MAX_AGE = 3600  # revalidating after that is a cheap 304
IMMUTABLE_MAX_AGE = 365 * 24 * 3600

# On every file answer: no type sniffing, and no script or plugin runs if it is opened as a page.
SAFETY_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}


# (first, length) -> the bytes, streamed: a file in an object store (FileStore.reader)
RangeReader = Callable[[int, int], Awaitable[AsyncIterator[bytes]]]


async def file_response(
    source: Path | int | OpenFile | RangeReader,
    *,
    size: int | None = None,
    mime_type: str,
    etag: str,
    last_modified: float,
    filename: str | None,
    disposition: Literal["attachment", "inline"],
    immutable: bool = False,
    max_age: int | None = None,
) -> Response:
    """The response for the current GET or HEAD request of ``source``: the file at a path, or
    an open regular file (an ``OpenFile``, or a bare descriptor), which this call owns from now
    on (it is closed when the body is sent, or at once if there is none).

    ``etag`` is the content hash (sent quoted, as a strong ETag); ``size`` is the length the
    caller recorded with that hash (the file's current size when None); ``mime_type`` is sent
    as given, or as application/octet-stream if it is not a well-formed media type.
    ``max_age`` defaults to an hour, or a year with ``immutable`` (thumbnails).
    Raises ``NotFound`` (``file_missing``) if the path is not a file on disk, and
    ``RangeNotSatisfiable`` (416) for a Range wholly outside the file.

    A ``RangeReader`` (a file in an object store; ``size`` is then required) is asked for the
    planned range only: a ranged GET, streamed, never the whole object.
    """
    if callable(source):
        assert size is not None
        return await _remote_response(
            source,
            size,
            mime_type=mime_type,
            etag=etag,
            last_modified=last_modified,
            filename=filename,
            disposition=disposition,
        )
    opened = await _open(source)
    try:
        planned = _plan(
            opened.stat.st_size if size is None else size,
            etag=etag,
            last_modified=last_modified,
            immutable=immutable,
            max_age=max_age,
        )
        if isinstance(planned, Response):  # 304: no body
            opened.close()
            return planned
        status, headers, body_range = planned
        headers["Content-Disposition"] = content_disposition(disposition, filename)
        # HEAD reaches this GET view too; its body would be read only for hypercorn to drop it.
        if request.method == "HEAD" or body_range.length == 0:
            opened.close()
            body: bytes | AsyncIterator[bytes] = b""
        else:
            label = str(source) if isinstance(source, Path) else f"file {etag[:16]}"
            body = _read_file(opened, body_range, label)
        response = Response(body, status, headers=headers, content_type=clean_media_type(mime_type))
        response.headers["Content-Length"] = str(body_range.length)  # Quart set 0 for b""
        response.timeout = None
        return response
    except BaseException:
        opened.close()
        raise


async def _remote_response(
    read: RangeReader,
    size: int,
    *,
    mime_type: str,
    etag: str,
    last_modified: float,
    filename: str | None,
    disposition: Literal["attachment", "inline"],
) -> Response:
    planned = _plan(size, etag=etag, last_modified=last_modified, immutable=False, max_age=None)
    if isinstance(planned, Response):
        return planned
    status, headers, body_range = planned
    headers["Content-Disposition"] = content_disposition(disposition, filename)
    body: bytes | AsyncIterator[bytes] = b""
    if request.method != "HEAD" and body_range.length:
        body = await read(body_range.first, body_range.length)
    response = Response(body, status, headers=headers, content_type=clean_media_type(mime_type))
    response.headers["Content-Length"] = str(body_range.length)
    response.timeout = None
    return response


def _plan(
    size: int, *, etag: str, last_modified: float, immutable: bool, max_age: int | None
) -> Response | tuple[int, dict[str, str], ByteRange]:
    """A 304 answer, or the status, headers and byte range of one with a body; a 416 is
    raised (the error handler writes the contract's envelope)."""
    if max_age is None:
        max_age = IMMUTABLE_MAX_AGE if immutable else DEFAULT_MAX_AGE
    cache_control = f"private, max-age={max_age}" + (", immutable" if immutable else "")
    validators = {
        "ETag": quote_etag(etag),
        "Last-Modified": http_date(last_modified),
        "Cache-Control": cache_control,
        **SAFETY_HEADERS,
    }
    plan = plan_response(
        etag=etag,
        last_modified=int(last_modified),
        size=size,
        range_header=_field("Range"),
        if_range=_field("If-Range"),
        if_none_match=_field("If-None-Match"),
        if_modified_since=_field("If-Modified-Since"),
    )
    if plan.status == 304:
        response = Response(b"", 304, headers=validators)
        del response.headers["Content-Type"]  # a 304 carries no representation metadata
        del response.headers["Content-Length"]
        return response
    if plan.status == 416:
        raise RangeNotSatisfiable(size, headers=SAFETY_HEADERS)
    body_range = plan.range or ByteRange(0, size - 1)  # size 0 gives an empty range
    headers = {**validators, "Accept-Ranges": "bytes"}
    if plan.range is not None:
        headers["Content-Range"] = plan.range.content_range(size)
    return plan.status, headers, body_range


def _field(name: str) -> str | None:
    """A request header, with repeated lines joined as one list (RFC 9110 §5.3)."""
    values = request.headers.getlist(name)
    return ", ".join(values) if values else None


async def _open(source: Path | int | OpenFile) -> OpenFile:
    """The file to serve, open; a file or descriptor handed in is taken over (and closed if
    it is not a regular file). An ``OpenFile`` keeps the ``fstat`` it was checked with: one
    per download, not two."""
    if isinstance(source, Path):
        return await open_own(source)
    if isinstance(source, OpenFile):
        opened = source
    else:
        try:
            info = await trio.to_thread.run_sync(os.fstat, source)
        except BaseException:
            os.close(source)
            raise
        opened = OpenFile(source, info)
    if not stat.S_ISREG(opened.stat.st_mode):
        opened.close()
        raise NotFound("the file is no longer on the server's disk", code="file_missing")
    return opened


async def _read_file(source: OpenFile, byte_range: ByteRange, label: str) -> AsyncIterator[bytes]:
    """The bytes of ``byte_range``, ``READ_SIZE`` at a time; the file is closed in every case
    (end, short file, client gone: Quart closes this generator when sending stops; a generator
    never started is dropped with the response, and ``source`` with it)."""
    sent = 0
    try:
        while sent < byte_range.length:
            want = min(READ_SIZE, byte_range.length - sent)
            chunk = await trio.to_thread.run_sync(
                os.pread, source.fd, want, byte_range.first + sent
            )
            if not chunk:
                break
            sent += len(chunk)
            yield chunk
    except OSError as e:  # an I/O error mid-way
        log.warning("reading %s failed after %d bytes: %s", label, sent, e)
    finally:
        source.close()
    if sent < byte_range.length:
        log.warning(
            "%s ended %d bytes short of the %d announced; the client gets a short body",
            label,
            byte_range.length - sent,
            byte_range.length,
        )
        if _end_exchange_early():
            await trio.lowlevel.checkpoint()  # raises Cancelled: the connection closes


def _end_exchange_early() -> bool:
    """Cancel the request's nursery, as quart-trio does on ``http.disconnect``.

    Ending the body normally would send end-of-message after too few bytes; h11 refuses, and
    hypercorn logs a traceback. Cancelled instead, the app returns, hypercorn sees a response
    that never finished and closes the connection. Only done when this generator runs in
    quart-trio's ``handle_request`` task, whose parent nursery is that request's; anywhere
    else the body just ends and the server logs h11's complaint.
    """
    task = trio.lowlevel.current_task()
    if getattr(task.coro, "cr_code", None) is not HANDLE_REQUEST_CODE:
        return False
    if task.parent_nursery is None:
        return False
    task.parent_nursery.cancel_scope.cancel()
    return True
