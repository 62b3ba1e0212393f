"""Conditional and range requests for one file, decided without I/O (RFC 9110 §13, §14).

``plan_response`` takes the request's validator and range headers and the file's ETag,
modification time and size, and says what to answer: 304, 416, 206 with one byte range, or 200.
``file_response.py`` does the I/O. We write this ourselves because Quart's ``send_file`` gets the
edge cases wrong (shared/notes/files-findings.md §2.5): a suffix range gives a 500, an
over-long range is echoed unclamped in ``Content-Range``, 416 comes without ``bytes */size``,
and a multi-range request gets 416 where 200 is allowed.

Choices the RFC leaves to the server:
- Multi-range requests are answered with the whole file (200): no ``multipart/byteranges``.
- A Range header we cannot parse, an inverted ``b-a``, or a unit other than ``bytes`` is ignored
  (200), as §14.2 requires.
- Range is honoured on HEAD as well, so HEAD's headers are those of the same GET (§9.3.2),
  as nginx and Go's ``http.ServeContent`` do.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC
from email.utils import formatdate, parsedate_to_datetime
from urllib.parse import quote

# entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE ; etagc = %x21 / %x23-7E / obs-text (§8.8.3)
_ETAGC = r"[\x21\x23-\x7e\x80-\xff]*"
_ENTITY_TAG = re.compile(rf'(W/)?"({_ETAGC})"')
_OPAQUE = re.compile(_ETAGC)
_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# type "/" subtype *( OWS ";" OWS parameter ), tokens and quoted strings only (§8.3.1)
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(
    rf'{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|"[^"\\\x00-\x1f\x7f]*"))*'
)
FALLBACK_MEDIA_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``first`` to ``last`` inclusive, both inside the file."""

    first: int
    last: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.first}-{self.last}/{size}"


class RangeNotSatisfiable(Exception):
    """The Range header is valid but selects nothing in the file: answer 416."""


@dataclass(frozen=True)
class Plan:
    """What to answer: ``status`` is 200, 206, 304 or 416; ``range`` is set for 206 only."""

    status: int
    range: ByteRange | None = None


def parse_range(value: str, size: int) -> ByteRange | None:
    """One satisfiable range, clamped to the file; None to ignore the header and send it all.

    Raises ``RangeNotSatisfiable`` for ``a-`` with ``a >= size``, ``-0``, and any range on an
    empty file (§14.1.1: a range-set is satisfiable only if some range overlaps the content).
    """
    unit, sep, range_set = value.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    specs = [s.strip() for s in range_set.split(",")]
    specs = [s for s in specs if s]  # §5.6.1: recipients accept empty list elements
    if len(specs) != 1:
        return None  # malformed (none) or multi-range (we may ignore those)
    match = _RANGE_SPEC.fullmatch(specs[0])
    if match is None or match.group(0) == "-":
        return None
    try:
        first = int(match.group(1)) if match.group(1) else None
        last = int(match.group(2)) if match.group(2) else None
    except ValueError:  # more digits than int() accepts; no file is that large anyway
        return None
    if first is None:
        assert last is not None
        if last == 0 or size == 0:
            raise RangeNotSatisfiable
        return ByteRange(max(0, size - last), size - 1)
    if last is not None and last < first:
        return None  # invalid, hence ignored (§14.1.1)
    if first >= size:
        raise RangeNotSatisfiable
    return ByteRange(first, size - 1 if last is None else min(last, size - 1))


def quote_etag(opaque: str) -> str:
    """The strong ETag for an opaque tag such as a content hash."""
    if not _OPAQUE.fullmatch(opaque):
        raise ValueError(f"not a valid entity-tag: {opaque!r}")
    return f'"{opaque}"'


def _entity_tags(value: str) -> list[tuple[bool, str]]:
    """``(weak, opaque)`` for each entity-tag in a list field; anything else is skipped."""
    return [(bool(m.group(1)), m.group(2)) for m in _ENTITY_TAG.finditer(value)]


def none_match(value: str, etag: str) -> bool:
    """If-None-Match with the weak comparison (§13.1.2): True when a tag matches ours."""
    if value.strip() == "*":
        return True
    return any(opaque == etag for _, opaque in _entity_tags(value))


def http_date(timestamp: float) -> str:
    """IMF-fixdate, the only HTTP-date form a server sends (§5.6.7)."""
    return formatdate(int(timestamp), usegmt=True)


def parse_http_date(value: str) -> int | None:
    """Seconds since the epoch, or None if the value is not one HTTP-date (any of the 3 forms)."""
    try:
        parsed = parsedate_to_datetime(value.strip())
        if parsed.tzinfo is None:  # asctime and "-0000" carry no zone; HTTP dates are GMT
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def if_range_holds(value: str, etag: str, last_modified: int) -> bool:
    """If-Range (§13.1.5): a strong ETag match, or an HTTP-date equal to Last-Modified."""
    value = value.strip()
    if value.startswith(('"', "W/")):
        tags = _entity_tags(value)
        return len(tags) == 1 and tags[0] == (False, etag)
    return parse_http_date(value) == last_modified


def plan_response(
    *,
    etag: str,
    last_modified: int,
    size: int,
    range_header: str | None = None,
    if_range: str | None = None,
    if_none_match: str | None = None,
    if_modified_since: str | None = None,
) -> Plan:
    """Evaluate the preconditions in the order of §13.2.2 for a GET or HEAD of the file.

    ``etag`` is the opaque tag (unquoted); ``last_modified`` is whole seconds. Header values
    repeated on several lines should be joined with ", " by the caller.
    """
    if if_none_match is not None:
        if none_match(if_none_match, etag):
            return Plan(304)
    elif if_modified_since is not None:
        since = parse_http_date(if_modified_since)
        if since is not None and last_modified <= since:
            return Plan(304)
    if range_header is None:
        return Plan(200)
    if if_range is not None and not if_range_holds(if_range, etag, last_modified):
        return Plan(200)
    try:
        byte_range = parse_range(range_header, size)
    except RangeNotSatisfiable:
        return Plan(416)
    return Plan(200) if byte_range is None else Plan(206, byte_range)


def content_disposition(disposition: str, filename: str | None) -> str:
    """``attachment``/``inline`` with an ASCII ``filename`` and an RFC 8187 ``filename*``.

    The fallback drops accents, control characters, quotes and backslashes, so a name can
    neither end the quoted string nor inject a header line.
    """
    if disposition not in ("attachment", "inline"):
        raise ValueError(f"unknown disposition {disposition!r}")
    if filename is None:
        return disposition
    name = _CONTROL.sub("", filename)
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    fallback = ascii_name.replace('"', "").replace("\\", "").strip() or "file"
    encoded = quote(name, safe="!#$&+^`|~") or "file"  # attr-char (RFC 8187 §3.2.1)
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def clean_media_type(value: str) -> str:
    """The caller's Content-Type as given if it is well formed, else application/octet-stream.

    Types come from uploads (the client names them), so a malformed one must not reach a header.
    """
    value = value.strip()
    return value if _MEDIA_TYPE.fullmatch(value) else FALLBACK_MEDIA_TYPE
