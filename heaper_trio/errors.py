"""One exception tree for everything a client can be told.

Each class carries the HTTP status and the stable ``error`` code of the contract's envelope
(``{"success": false, "error": code, "message": text}``). Services raise these; the web edge
turns them into responses, so no handler has to remember a status code.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})  # the disk, or the data directory's quota
NO_SPACE = "the server has no space left; retry later"


class HeaperError(Exception):
    """Base of every error a client may see. Subclasses pin status and default code."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = headers or {}
        self.details = details or {}

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"success": False, "error": self.code, "message": self.message}
        out.update(self.details)
        return out


class BadRequest(HeaperError):
    """Malformed input: not JSON, missing or extra fields, wrong types, bad encodings."""

    status = 400
    code = "bad_request"


class Unauthorized(HeaperError):
    """No token, or one that is invalid, expired, revoked or of the wrong kind."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str, *, code: str | None = None, **kw: Any) -> None:
        headers = kw.pop("headers", None) or {}
        headers.setdefault("WWW-Authenticate", 'Bearer realm="heaper"')
        super().__init__(message, code=code, headers=headers, **kw)


class Forbidden(HeaperError):
    """Authenticated, but the thing is not yours or the account may not do this."""

    status = 403
    code = "forbidden"


class NotFound(HeaperError):
    status = 404
    code = "not_found"


class Conflict(HeaperError):
    status = 409
    code = "conflict"


class PayloadTooLarge(HeaperError):
    status = 413
    code = "payload_too_large"


class Unprocessable(HeaperError):
    """Well-formed but invalid, e.g. a Yjs update that does not decode."""

    status = 422
    code = "unprocessable"


class RateLimited(HeaperError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, **kw: Any) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)}, **kw)
        self.retry_after = retry_after


class RangeNotSatisfiable(HeaperError):
    """A Range wholly outside the file (RFC 9110 §15.5.17): the answer says how long the file
    is in ``Content-Range: bytes */<size>``, so the client can ask again."""

    status = 416
    code = "range_not_satisfiable"

    def __init__(self, size: int, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(
            f"the requested range is outside the file ({size} bytes)",
            headers={
                "Content-Range": f"bytes */{size}",
                "Accept-Ranges": "bytes",
                **(headers or {}),
            },
        )
        self.size = size


class InsufficientStorage(HeaperError):
    """The server's disk (or the data directory's quota) is full: nothing was kept, and the
    client may retry once space is freed (an upload resumes from the chunks it has)."""

    status = 507
    code = "insufficient_storage"


def os_errno(e: BaseException) -> int | None:
    """The errno of an OSError, also inside an exception group (a nursery's failure)."""
    if isinstance(e, OSError):
        return e.errno
    if isinstance(e, BaseExceptionGroup):
        for inner in e.exceptions:
            if (found := os_errno(inner)) is not None:
                return found
    return None


def disk_full(e: BaseException, message: str = NO_SPACE) -> InsufficientStorage | None:
    """The 507 a full disk is (ENOSPC or EDQUOT, also inside an exception group), or None
    for any other failure. The one place that decides what a full disk means: the upload
    paths, client thumbnails and the last-resort handler of the web layer all ask here.

    A file the storage cannot hold at all (EFBIG: the file system's largest file, such as
    FAT32's 4 GiB, or the process's RLIMIT_FSIZE) is a 507 too, the server unable to store
    it, with a code of its own: retrying will not help, unlike a full disk."""
    found = os_errno(e)
    if found == errno.EFBIG:
        log.warning("a file larger than the storage allows: %s", e)
        return InsufficientStorage(
            "the server's storage cannot hold a file this large (its file size limit); "
            "retrying will not help",
            code="file_too_large_to_store",
        )
    if found not in DISK_FULL:
        return None
    log.warning("out of disk space: %s", e)
    return InsufficientStorage(message)


@contextlib.contextmanager
def disk_full_is_507(message: str = NO_SPACE) -> Iterator[None]:
    """Run a write; a full disk leaves it as a 507 (the server's condition, not a bug: the
    client may retry later), any other error as it came."""
    try:
        yield
    except OSError as e:
        if (full := disk_full(e, message)) is not None:
            raise full from e
        raise


class Unavailable(HeaperError):
    """A dependency (the database) is down; the client may retry."""

    status = 503
    code = "unavailable"


class StartupError(Exception):
    """Raised before serving when configuration or the data directory is unusable.

    The CLI prints it as one line and exits 2, instead of a traceback.
    """


class UnsupportedMedia(HeaperError):
    """No thumbnail or preview for this type of file (not an image or video we decode)."""

    status = 415
    code = "unsupported_media"


class CorruptMedia(Unprocessable):
    """The file is of a type we decode but does not decode: damaged, truncated, or ffmpeg failed."""

    code = "corrupt_media"


class ImageTooLarge(Unprocessable):
    """More pixels than the media service decodes (a decompression-bomb guard)."""

    code = "image_too_large"
