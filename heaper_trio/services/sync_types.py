"""What the document service is asked and what it answers, as values.

The web layer builds the requests from the wire (names, base64) and shapes the outcomes into
the contract's JSON; the service sees bytes and enums only. Statuses are ``StrEnum``s: they
compare, hash, format and serialise as their wire strings, so callers that test
``status == "ok"`` or log ``f"{status}"`` read the same as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from heaper_trio.records import BlockRecord


class PushStatus(StrEnum):
    ok = "ok"
    created = "created"
    version_mismatch = "version_mismatch"
    forbidden = "forbidden"
    deleted = "deleted"
    invalid = "invalid"
    conflict = "conflict"  # still conflicting after every attempt


class PullStatus(StrEnum):
    ok = "ok"
    version_mismatch = "version_mismatch"
    deleted = "deleted"
    not_found = "not_found"
    invalid = "invalid"


class EditStatus(StrEnum):
    """How a server-side edit (restore, a file recorded, a rescan) ended."""

    ok = "ok"
    created = "created"
    unchanged = "unchanged"
    not_found = "not_found"
    conflict = "conflict"


@dataclass(frozen=True)
class Undecodable:
    """A payload field the wire layer could not decode. The block is answered ``invalid`` with
    ``code``, at the point its field is checked (the update before the state vector), so a
    block with several faults names the same one as when the service decoded them itself."""

    code: str


@dataclass(frozen=True)
class PushItemRequest:
    """One block of ``POST /api/sync/push``."""

    block_id: str
    heap_id: str
    update: bytes | Undecodable
    state_vector: bytes | Undecodable | None = None  # None: the client sent none
    sync_version: int | None = None


@dataclass(frozen=True)
class PushOutcome:
    """How one pushed block (or one live batch) ended.

    ``sync_version`` is the block's version as last seen (1 when never seen); it is not told
    for ``forbidden``, as a refused block may be another user's. ``state_vector`` and ``update``
    (what the client lacks given its state vector) come with ``ok`` and ``created`` HTTP
    answers only.
    """

    block_id: str
    status: PushStatus
    sync_version: int = 1
    error: str | None = None
    state_vector: bytes | None = None
    update: bytes | None = None


@dataclass(frozen=True)
class PullItemRequest:
    """One block of ``POST /api/sync/pull``."""

    block_id: str
    state_vector: bytes | Undecodable | None = None  # None: everything
    sync_version: int | None = None


@dataclass(frozen=True)
class PullOutcome:
    """One pulled block. ``sync_version`` is None where the block is not told (unknown, not
    yours, deleted); ``update`` comes with ``ok``, ``full_state`` with ``version_mismatch``,
    ``state_vector`` with both."""

    block_id: str
    status: PullStatus
    sync_version: int | None = None
    error: str | None = None
    deleted_at: int | None = None
    update: bytes | None = None
    full_state: bytes | None = None
    state_vector: bytes | None = None


@dataclass(frozen=True)
class BlockView:
    """One block as ``POST /api/block/{id}`` shows it."""

    record: BlockRecord
    is_root: bool
    related: dict[str, list[str]]  # tags, mentions, links, children, ... both ways
    state: bytes  # the document's full state
    state_vector: bytes
