"""The announcement one server process sends the others over PostgreSQL ``LISTEN/NOTIFY``.

A pointer (sync-findings 6.8): a stored change of one block (its kind, heap, log position), on
which the receivers reread storage, optionally preceded by that commit's updates inline when
they are small (:class:`UpdatesAnnouncement`: the reread is then skipped), or a user event
(scan progress, file ready) for that user's live channels, or a job abort asked through the
database (``jobs`` table): the process running that job cancels it. The text is compact JSON
with one-letter keys, so a NOTIFY stays below PostgreSQL's 8,000-byte limit; this module is
the one place that knows those keys. The bytes are what processes of earlier versions write
and read (old and new processes share a database during a rolling restart): keys in this
order, no spaces.

Decoding is strict: anything but one of the four shapes, with exactly its keys and types,
raises :class:`MalformedAnnouncement` (a ``ValueError``), which the receiver logs and skips.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from heaper_trio.protocol.events import BLOCK_KINDS

MAX_PAYLOAD_BYTES = 7000  # PostgreSQL refuses NOTIFY payloads from 8000 bytes
_BLOCK_KEYS = ("o", "k", "h", "b", "s", "v", "t")
_USER_KEYS = ("o", "u", "e")
_ABORT_KEYS = ("o", "j")
_UPDATES_KEYS = ("o", "b", "s", "v", "d")


class MalformedAnnouncement(ValueError):
    """Text that is not an announcement; the message is short and safe to log."""


@dataclass(frozen=True, slots=True)
class BlockAnnouncement:
    """A durable change of one block (``kind``: created, changed, deleted, restored, purged)
    or of a whole heap (``heap_deleted``, no block). ``origin`` is the announcing process, so
    it can skip its own."""

    origin: str
    kind: str
    heap_id: str
    block_id: str = ""
    seq: int = 0
    sync_version: int = 1
    updated_at: int = 0


@dataclass(frozen=True, slots=True)
class UserEventAnnouncement:
    """A typed event (``protocol.events``) for every live channel of ``user_id``."""

    origin: str
    user_id: str
    event: Mapping[str, Any] = field(hash=False)


@dataclass(frozen=True, slots=True)
class JobAbortAnnouncement:
    """``abort_scan`` on another process asked to abort job ``job_id`` (its row says so
    already; this only makes the running process look now rather than at its next beat)."""

    origin: str
    job_id: str


@dataclass(frozen=True, slots=True)
class UpdatesAnnouncement:
    """The Yjs updates of one block commit, inline (issue 12, item 4): sent just before that
    commit's :class:`BlockAnnouncement` when they are small, so a receiver whose room holds
    the log up to ``seq - len(updates)`` applies them instead of rereading storage. The
    pointer still follows and stays the authority: a receiver that cannot use these (a gap,
    another version, a room still loading) acts on the pointer as before, and processes of
    earlier versions skip this shape as malformed."""

    origin: str
    block_id: str
    seq: int  # of the last update
    sync_version: int
    updates: tuple[bytes, ...] = field(hash=False)


Announcement = (
    BlockAnnouncement | UserEventAnnouncement | JobAbortAnnouncement | UpdatesAnnouncement
)


def inline_updates(
    origin: str, block_id: str, seq: int, sync_version: int, updates: Sequence[bytes]
) -> str | None:
    """The text of an :class:`UpdatesAnnouncement`, or None when it would not fit a NOTIFY."""
    if not updates or sum(map(len, updates)) * 4 // 3 > MAX_PAYLOAD_BYTES:
        return None  # (base64 grows by a third: too big for sure, skip the encoding)
    text = encode(UpdatesAnnouncement(origin, block_id, seq, sync_version, tuple(updates)))
    return text if len(text) <= MAX_PAYLOAD_BYTES else None


def encode(a: Announcement) -> str:
    if isinstance(a, BlockAnnouncement):
        data: dict[str, Any] = {
            "o": a.origin,
            "k": a.kind,
            "h": a.heap_id,
            "b": a.block_id,
            "s": a.seq,
            "v": a.sync_version,
            "t": a.updated_at,
        }
    elif isinstance(a, JobAbortAnnouncement):
        data = {"o": a.origin, "j": a.job_id}
    elif isinstance(a, UpdatesAnnouncement):
        data = {
            "o": a.origin,
            "b": a.block_id,
            "s": a.seq,
            "v": a.sync_version,
            "d": [base64.b64encode(u).decode("ascii") for u in a.updates],
        }
    else:
        data = {"o": a.origin, "u": a.user_id, "e": dict(a.event)}
    return json.dumps(data, separators=(",", ":"))


def decode(text: str) -> Announcement:
    try:
        data = json.loads(text)
    except ValueError:  # JSONDecodeError, and invalid surrogates
        raise MalformedAnnouncement("not JSON") from None
    except RecursionError:
        raise MalformedAnnouncement("nested too deeply") from None
    if not isinstance(data, dict):
        raise MalformedAnnouncement("not a JSON object")
    keys = tuple(sorted(data))
    if keys == tuple(sorted(_USER_KEYS)):
        origin, user_id, event = data["o"], data["u"], data["e"]
        if not (isinstance(origin, str) and isinstance(user_id, str) and isinstance(event, dict)):
            raise MalformedAnnouncement("a user event with fields of the wrong type")
        return UserEventAnnouncement(origin, user_id, event)
    if keys == tuple(sorted(_ABORT_KEYS)):
        if not (isinstance(data["o"], str) and isinstance(data["j"], str)):
            raise MalformedAnnouncement("a job abort with fields of the wrong type")
        return JobAbortAnnouncement(data["o"], data["j"])
    if keys == tuple(sorted(_UPDATES_KEYS)):
        return _decode_updates(data)
    if keys != tuple(sorted(_BLOCK_KEYS)):
        raise MalformedAnnouncement(f"unexpected keys {list(keys)[:10]}")
    strings = [data[k] for k in ("o", "k", "h", "b")]
    numbers = [data[k] for k in ("s", "v", "t")]
    if not all(isinstance(x, str) for x in strings) or not all(type(x) is int for x in numbers):
        raise MalformedAnnouncement("a block change with fields of the wrong type")
    if data["k"] not in BLOCK_KINDS:
        raise MalformedAnnouncement("unknown change kind")
    return BlockAnnouncement(
        data["o"], data["k"], data["h"], data["b"], data["s"], data["v"], data["t"]
    )


def _decode_updates(data: dict[str, Any]) -> UpdatesAnnouncement:
    origin, block_id, seq, version, encoded = (data[k] for k in _UPDATES_KEYS)
    if not (
        isinstance(origin, str)
        and isinstance(block_id, str)
        and type(seq) is int
        and type(version) is int
        and isinstance(encoded, list)
        and encoded
        and all(isinstance(u, str) for u in encoded)
    ):
        raise MalformedAnnouncement("inline updates with fields of the wrong type")
    try:
        updates = tuple(base64.b64decode(u, validate=True) for u in encoded)
    except (binascii.Error, ValueError):
        raise MalformedAnnouncement("inline updates that are not base64") from None
    return UpdatesAnnouncement(origin, block_id, seq, version, updates)
