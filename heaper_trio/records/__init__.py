"""The value types storage hands to services and takes from them (records, not rows): what a
user, heap, block, file or upload is, independent of the engine that keeps it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

from heaper_trio.records.text_segments import lazy_text

USER_STATES = ("pending", "approved", "rejected")


@dataclass(frozen=True)
class User:
    id: str
    public_key: str
    email: str | None
    state: str  # one of USER_STATES
    is_admin: bool
    token_generation: int  # bumped to invalidate every token issued before
    created_at: int  # Unix ms
    approved_at: int | None


@dataclass(frozen=True)
class NewRefreshToken:
    jti: str
    family: str
    issued_at: int  # Unix ms
    expires_at: int  # Unix ms


class ChallengeProblem(str, Enum):
    """Why a challenge cannot complete a login. Values double as error codes."""

    unknown = "challenge_unknown"
    foreign = "challenge_foreign"  # issued for another public key
    expired = "challenge_expired"
    used = "challenge_used"


@dataclass(frozen=True)
class LoginOutcome:
    problem: ChallengeProblem | None
    user: User | None = None
    created: bool = False  # the account was made by this login
    token_issued: bool = False  # the refresh token row was stored (account approved)


class RefreshOutcome(str, Enum):
    ok = "ok"
    unknown = "refresh_token_unknown"
    reused = "refresh_token_reused"  # already rotated away: the whole family is revoked now
    revoked = "refresh_token_revoked"
    expired = "refresh_token_expired"


@dataclass(frozen=True)
class RotateResult:
    outcome: RefreshOutcome
    user_id: str | None = None


@dataclass(frozen=True)
class Heap:
    id: str
    owner_id: str
    name: str
    root_block_id: str
    created_at: int
    clock: int  # the last change time handed out in this heap (Unix ms, strictly increasing)


@lazy_text("text")
@dataclass(frozen=True)
class BlockProjection:
    """The query columns of a block, derived from its Yjs document by the caller.

    Callers pass values every engine can store: no NUL character in any string, no NaN or
    infinity (PostgreSQL's TEXT and JSONB refuse them). ``text`` may be given as ``Segments``
    (a big text as the projection holds it); reading it joins them, ``raw_text`` does not.
    """

    type: str | None
    title: str
    text: str
    relations: dict[str, Any]
    files: dict[str, Any]
    apps: dict[str, Any]
    deleted_at: int | None
    permanently_deleted_at: int | None
    tags: tuple[str, ...]
    mentions: tuple[str, ...]
    links: tuple[str, ...]
    file_hashes: tuple[str, ...] = ()  # content hashes of files_v0 entries (lowercase hex)


@dataclass(frozen=True)
class StoredBlock:
    """Everything needed to rebuild a block's document: snapshot plus the log after it."""

    id: str
    heap_id: str
    sync_version: int
    snapshot: bytes | None
    snapshot_seq: int
    updates: tuple[bytes, ...]  # log rows with seq > snapshot_seq, in order
    last_seq: int
    created_at: int
    updated_at: int


@dataclass(frozen=True)
class BlockRecord:
    """A block's projection columns as stored (what queries and the block route read)."""

    id: str
    heap_id: str
    sync_version: int
    type: str | None
    title: str
    text: str
    relations: dict[str, Any]
    files: dict[str, Any]
    apps: dict[str, Any]
    created_at: int
    created_by: str | None
    updated_at: int
    deleted_at: int | None
    permanently_deleted_at: int | None
    size: int
    last_seq: int


@dataclass(frozen=True)
class BlockChange:
    """New log rows for one block plus the projection of the document they produce.

    ``expected_last_seq`` is the log position the caller's document was built from; None
    means the block must not exist yet. If another writer got there first the change is
    refused with ``conflict`` and the caller rebuilds its document and tries again.
    """

    block_id: str
    heap_id: str
    author_id: str | None
    expected_last_seq: int | None
    updates: tuple[bytes, ...]
    projection: BlockProjection
    state_vector: bytes
    size: int
    compacted: tuple[bytes, int] | None = None  # (snapshot, covers log rows <= seq)
    # Live edits: the block is marked for search and re-indexed a little later, in the
    # background (``Storage.reindex_marked``), not in this commit. Engines may index at once.
    search_later: bool = False
    # Commit only while the heap's owner is this user, else ``conflict``: a live edit skips
    # reading the heap and the tombstones ahead (``services/live_push.py``).
    heap_owner: str | None = None


class CommitStatus(str, Enum):
    ok = "ok"
    created = "created"
    conflict = "conflict"


@dataclass(frozen=True)
class CommitResult:
    block_id: str
    status: CommitStatus
    updated_at: int = 0
    last_seq: int = 0
    sync_version: int = 1


class ChangedBlock(NamedTuple):
    """What the change feed answers of a changed block, in ``storage.rows.DELTA_COLUMNS``
    order: a tuple, not a record, because a page makes a thousand of them and building a
    frozen dataclass of every column cost 10 µs a row (issue 12 item 4)."""

    id: str
    heap_id: str
    sync_version: int
    type: str | None
    title: str
    updated_at: int
    deleted_at: int | None


@dataclass(frozen=True)
class ChangePage:
    """One page of a heap's change feed."""

    changed: list[ChangedBlock]
    deleted: list[tuple[str, int]]  # (block_id, deleted_at)
    server_time: int
    has_more: bool
    total_changed: int
    total_deleted: int


@dataclass(frozen=True)
class EncodedChangePage:
    """A page of the change feed whose rows the database wrote as JSON: ``changed`` and
    ``deleted`` are the answer's ``changed_blocks`` and ``deleted_blocks`` objects, joined
    by commas (no brackets), byte for byte what ``web/json_sync.delta_bytes`` makes of the
    same ``ChangePage``. A walk page of a thousand rows then costs no Python object per row
    (issue 12 item 4); the counts are how many objects each string holds."""

    changed: str
    deleted: str
    changed_count: int
    deleted_count: int
    server_time: int
    has_more: bool
    total_changed: int
    total_deleted: int


SORTS = ("created", "updated", "title")


@dataclass(frozen=True)
class BlockQuery:
    """Filters over a heap's blocks (``POST /api/heap`` and ``/api/heap_count``)."""

    types: tuple[str, ...] = ()
    tag: str | None = None  # tagged with this block, directly or through nested tags
    terms: tuple[str, ...] = ()  # full-text words, all must match (prefixes)
    unlinked: bool = False  # no tag at all (the root block is never unlinked)
    has_content: bool | None = None  # text (body) empty or not
    trash: bool = False  # only trashed blocks; otherwise trashed ones are left out
    sort: str = "updated"  # one of SORTS
    descending: bool = True
    after: tuple[Any, str] | None = None  # cursor: (sort value, block id) of the last row seen


@dataclass(frozen=True)
class UpdateInfo:
    seq: int
    created_at: int
    author_id: str | None
    size: int


@dataclass(frozen=True)
class FileRecord:
    """A file's content, known by its SHA-256. Bytes live in the data directory's store, or,
    for a scanned file, at ``source_path`` on the server (served in place, never copied)."""

    hash: str
    id: str  # file_id: a short stable id for URLs
    size: int
    mime_type: str
    name: str
    source_path: str | None
    meta: dict[str, Any]  # width, height, duration, ... (what probing found)
    created_at: int


@dataclass(frozen=True)
class UploadRecord:
    """A resumable upload in progress: one per (heap, block, hash)."""

    id: str
    user_id: str
    heap_id: str
    block_id: str
    hash: str
    size: int
    chunk_size: int
    name: str
    mime_type: str
    created_at: int
    expires_at: int
    multipart_id: str | None = None  # its S3 multipart upload, once a process started one

    @property
    def total_chunks(self) -> int:
        return max(1, -(-self.size // self.chunk_size))


# Last, because scans.py needs the names above.
from heaper_trio.records.scans import FileIdentity, ScanBatch, ScanEntry  # noqa: E402

__all__ = [
    "SORTS",
    "USER_STATES",
    "BlockChange",
    "BlockProjection",
    "BlockQuery",
    "BlockRecord",
    "ChallengeProblem",
    "ChangePage",
    "CommitResult",
    "CommitStatus",
    "EncodedChangePage",
    "FileIdentity",
    "FileRecord",
    "Heap",
    "LoginOutcome",
    "NewRefreshToken",
    "RefreshOutcome",
    "RotateResult",
    "ScanBatch",
    "ScanEntry",
    "StoredBlock",
    "UpdateInfo",
    "UploadRecord",
    "User",
]
