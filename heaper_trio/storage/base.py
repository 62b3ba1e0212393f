"""What services may ask of storage, whichever engine is behind it.

Every method is one unit of work: one transaction, committed before the method returns, or
nothing at all on error. A cancelled call either changed nothing or, if its commit was already
under way, waits for it and returns normally: "cancelled" never hides a committed write.
Multi-step rules that must be atomic (a login that consumes a challenge, creates the account
and issues a token) are single methods for that reason. No SQL lives outside this package.

Each engine keeps only its SQL and I/O: what rows mean (a usable challenge, a refresh outcome,
a commit conflict, the rows a change writes) is decided once in ``rules``, rows become records
in ``rows``. "Not there" is None, an outcome value, or a named signal of ``errors``, never the
built-in ``LookupError``.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from typing import Any

from heaper_trio.records import (
    BlockChange,
    BlockQuery,
    BlockRecord,
    ChangePage,
    CommitResult,
    EncodedChangePage,
    FileRecord,
    Heap,
    LoginOutcome,
    NewRefreshToken,
    RotateResult,
    StoredBlock,
    UpdateInfo,
    UploadRecord,
    User,
)
from heaper_trio.records.admin_links import AdminLinkOutcome
from heaper_trio.records.history import HistoryRow
from heaper_trio.records.scans import ScanBatch, ScanEntry
from heaper_trio.storage.base_jobs import JobStorage

__all__ = ["Storage"]


class Storage(JobStorage, abc.ABC):
    """One interface, two engines: ``SqliteStorage`` (embedded) and ``PostgresStorage``."""

    engine: str

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply pending migrations."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """One round trip to the database; raises if it is unreachable."""

    @abc.abstractmethod
    async def schema_version(self) -> int: ...

    # -- instance ---------------------------------------------------------------------
    @abc.abstractmethod
    async def get_meta(self, key: str) -> str | None: ...

    @abc.abstractmethod
    async def claim_meta(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless a value is there; return the stored value."""

    # -- challenges and login -----------------------------------------------------------
    @abc.abstractmethod
    async def create_challenge(
        self, challenge: str, public_key: str, created_at: int, expires_at: int
    ) -> None: ...

    @abc.abstractmethod
    async def complete_login(
        self,
        *,
        challenge: str,
        public_key: str,
        now: int,
        new_user_id: str,
        email: str | None,
        auto_approve: bool,
        refresh: NewRefreshToken,
    ) -> LoginOutcome:
        """Consume the challenge, get or create the account, store the refresh token.

        The first account on a server becomes an approved admin. The refresh token row is
        stored only when the account is approved. If the challenge is unusable nothing
        changes and ``problem`` says why.
        """

    @abc.abstractmethod
    async def purge_expired(self, now: int) -> int:
        """Delete expired challenges and refresh tokens; return how many rows went."""

    # -- accounts -----------------------------------------------------------------------
    @abc.abstractmethod
    async def get_user(self, user_id: str) -> User | None: ...

    @abc.abstractmethod
    async def get_user_by_key(self, public_key: str) -> User | None: ...

    @abc.abstractmethod
    async def list_users(self) -> list[User]: ...

    @abc.abstractmethod
    async def account_marks(self) -> dict[str, tuple[int, str, bool]]:
        """Per account id: (token generation, state, is_admin), what a revoke, a rejection or
        a demotion changes. One cheap read, for an engine that hears no other process's
        changes (SQLite) to poll while live sockets are open (``services/live/account_watch``)."""

    @abc.abstractmethod
    async def set_user_state(
        self, user_id: str, state: str, now: int, *, keep_an_admin: bool = False
    ) -> User | None:
        """Approve or reject; rejecting also revokes every token of the account. With
        ``keep_an_admin``, raise ``LastAdmin`` and change nothing if no approved admin would
        be left, checked in the writing transaction (``rules.check_keeps_an_admin``)."""

    @abc.abstractmethod
    async def set_admin(
        self, user_id: str, is_admin: bool, *, keep_an_admin: bool = False
    ) -> User | None:
        """Grant or take admin rights; ``keep_an_admin`` as for ``set_user_state``."""

    @abc.abstractmethod
    async def revoke_user_tokens(self, user_id: str, now: int) -> User | None:
        """Invalidate all access and refresh tokens issued to the user so far."""

    # -- admin links ------------------------------------------------------------------------
    @abc.abstractmethod
    async def create_admin_link(
        self, token_hash: str, user_id: str, created_at: int, expires_at: int
    ) -> None:
        """Keep a new admin link (the SHA-256 hex of its secret) for ``user_id``."""

    @abc.abstractmethod
    async def use_admin_link(
        self, token_hash: str, now: int, refresh: NewRefreshToken
    ) -> AdminLinkOutcome:
        """Consume the link and store ``refresh`` for its admin, atomically: a link signs in
        once. If it cannot (``rules.admin_link_problem``) nothing changes."""

    # -- refresh tokens -------------------------------------------------------------------
    @abc.abstractmethod
    async def rotate_refresh_token(
        self, *, jti: str, user_id: str, now: int, new: NewRefreshToken
    ) -> RotateResult:
        """Mark ``jti`` rotated and store ``new`` in its family, atomically.

        A ``jti`` already rotated means a copy of an old token is being replayed: the whole
        family is revoked (reuse detection) and ``reused`` is returned.
        """

    # -- heaps and blocks -------------------------------------------------------------------
    @abc.abstractmethod
    async def create_heap(self, heap: Heap, root: BlockChange, now: int) -> bool:
        """Create the heap with its root block; False if the heap id or block id is taken."""

    @abc.abstractmethod
    async def get_heap(self, heap_id: str) -> Heap | None: ...

    @abc.abstractmethod
    async def list_heaps(self, owner_id: str) -> list[Heap]: ...

    @abc.abstractmethod
    async def load_block(self, block_id: str) -> StoredBlock | None: ...

    @abc.abstractmethod
    async def get_blocks(self, block_ids: list[str]) -> dict[str, BlockRecord]: ...

    @abc.abstractmethod
    async def tombstones(self, block_ids: list[str]) -> dict[str, tuple[str, int]]:
        """block_id -> (heap_id, deleted_at) for blocks removed for good."""

    @abc.abstractmethod
    async def push_reads(
        self, heap_ids: list[str], block_ids: list[str], load_ids: list[str]
    ) -> tuple[dict[str, str], dict[str, tuple[str, int]], dict[str, StoredBlock]]:
        """Owner id by heap id (absent: no such heap), ``tombstones`` and ``load_blocks``."""

    @abc.abstractmethod
    async def load_blocks(self, block_ids: list[str]) -> dict[str, StoredBlock]:
        """``load_block`` of each id (absent: no such block), in one round trip."""

    @abc.abstractmethod
    async def commit_changes(self, changes: list[BlockChange], now: int) -> list[CommitResult]:
        """Append each change's updates and store its projection, one transaction for all.

        Changes are independent: a conflicting one is refused alone. Each committed change
        takes the next time of its heap's change clock as ``updated_at``. Returns only after
        the commit is durable.
        """

    async def reindex_marked(self) -> int:
        """Re-index some blocks whose commits were ``search_later`` (a batch, in one
        transaction); how many. An engine that always indexes at once has none."""
        return 0

    @abc.abstractmethod
    async def changes_since(self, heap_id: str, since: int, limit: int) -> ChangePage:
        """Blocks changed and removed after ``since`` (a change time), oldest first."""

    @abc.abstractmethod
    async def changes_since_encoded(
        self, heap_id: str, since: int, limit: int
    ) -> EncodedChangePage:
        """``changes_since``'s page, its rows already JSON (the delta route's hot path)."""

    async def owned_changes_since_encoded(
        self, owner_id: str, heap_id: str, since: int, limit: int
    ) -> EncodedChangePage | None:
        """``changes_since_encoded`` if the heap is ``owner_id``'s; None if it is not or does
        not exist. An engine may fold the check into the page's own statement (PostgreSQL:
        one round trip a page instead of two)."""
        heap = await self.get_heap(heap_id)
        if heap is None or heap.owner_id != owner_id:
            return None
        return await self.changes_since_encoded(heap_id, since, limit)

    @abc.abstractmethod
    async def related(self, block_id: str) -> dict[str, list[str]]:
        """Relations both ways: ``tags``, ``children`` (tagged with this block),
        ``mentions``, ``links``, ``backlinks`` (blocks mentioning or linking this one)."""

    @abc.abstractmethod
    async def query_blocks(self, heap_id: str, query: BlockQuery, limit: int) -> list[BlockRecord]:
        """One page of matching blocks in the query's order, after its cursor."""

    @abc.abstractmethod
    async def count_blocks(self, heap_id: str, query: BlockQuery) -> dict[str, int]:
        """Matching blocks per type (the query's sort and cursor are ignored)."""

    @abc.abstractmethod
    async def block_history(self, block_id: str) -> tuple[int, list[UpdateInfo]]:
        """(snapshot_seq, the log rows after it): history older than the snapshot was
        compacted away."""

    # -- block history (rows kept apart from the load path; records.history) ---------------
    @abc.abstractmethod
    async def history_page(
        self, block_id: str, before_seq: int, limit: int, with_data: bool
    ) -> list[HistoryRow]:
        """History and live log rows with seq < ``before_seq``, newest first."""

    @abc.abstractmethod
    async def version_rows(self, block_id: str, seq: int) -> list[HistoryRow]:
        """The rows (bytes included) whose merge is the state as of ``seq``: from the latest
        base row at or before it (else the first row) through ``seq``, oldest first."""

    @abc.abstractmethod
    async def compact_block(
        self, block_id: str, expected_last_seq: int, snapshot: bytes
    ) -> int | None:
        """Make ``snapshot`` the block's snapshot as of its last row and move the log rows to
        the history (how many); None if the log moved on. The change time stays."""

    @abc.abstractmethod
    async def restore_block(self, change: BlockChange, now: int) -> CommitResult:
        """Commit ``change`` (its one update: the restored full state, compacted at once),
        raise the block's sync_version by one and record the restore in the history."""

    @abc.abstractmethod
    async def thin_candidates(self, day: int, week: int, gone: int, limit: int) -> list[str]:
        """Blocks with history rows older than a cut-off that are not yet thinned to it."""

    @abc.abstractmethod
    async def old_history(self, block_id: str, before: int) -> list[HistoryRow]:
        """The block's history rows created before ``before`` (bytes included), oldest first."""

    @abc.abstractmethod
    async def replace_history(
        self, block_id: str, spans: list[tuple[int, int, int]], added: list[HistoryRow]
    ) -> bool:
        """Delete each span's rows (first seq, last seq, row count) and insert ``added``, in
        one transaction; False (nothing done) if a span no longer holds that many rows."""

    @abc.abstractmethod
    async def trashed(self, heap_id: str) -> list[BlockRecord]:
        """Blocks of the heap whose document says they are in the trash."""

    @abc.abstractmethod
    async def marked_gone(self) -> dict[str, list[str]]:
        """heap_id -> trashed blocks whose document sets ``permanently_deleted_at``: purges a
        crash or a failure interrupted after the edit was stored."""

    @abc.abstractmethod
    async def purge_blocks(self, heap_id: str, block_ids: list[str], now: int) -> list[str]:
        """Remove blocks for good: document, log, relations; leave a tombstone at the heap's
        next change time. Only blocks of ``heap_id`` that are in the trash are removed."""

    @abc.abstractmethod
    async def delete_heap(self, heap_id: str) -> bool:
        """The heap, its blocks, their logs, relations and tombstones."""

    @abc.abstractmethod
    async def heap_stats(self, heap_id: str) -> dict[str, Any]:
        """Counts by type (outside the trash), trash count, total, last change time."""

    @abc.abstractmethod
    async def auth_stats(self) -> dict[str, int]:
        """Row counts: ``users``, ``challenges``, ``refresh_tokens`` (health and tests)."""

    @abc.abstractmethod
    async def usage(self, user_id: str, now: int) -> dict[str, Any]:
        """Real counts of what the user holds, for ``POST /api/me``."""

    # -- files -------------------------------------------------------------------------------
    @abc.abstractmethod
    async def get_file(self, key: str) -> FileRecord | None:
        """By content hash or by file id."""

    @abc.abstractmethod
    async def add_file(self, record: FileRecord) -> FileRecord:
        """Insert unless the hash is known; return the stored row (the first one wins)."""

    @abc.abstractmethod
    async def update_file(
        self,
        hash: str,
        *,
        meta: dict[str, Any] | None = None,
        mime_type: str | None = None,
        source_path: str | None = None,
        clear_source: bool = False,
    ) -> None: ...

    @abc.abstractmethod
    async def file_readable_by(self, hash: str, user_id: str) -> bool:
        """A block of the user's holds it and the user proved the bytes (grant or scan)."""

    @abc.abstractmethod  # the server verified the user's bytes (kept until the row is dropped)
    async def grant_file(self, hash: str, user_id: str) -> None: ...

    @abc.abstractmethod
    async def file_hashes_of_heap(
        self, heap_id: str, block_ids: list[str] | None = None
    ) -> list[str]:
        """Hashes the heap's blocks (or the given ones) hold."""

    @abc.abstractmethod
    async def blocks_holding_files(self, heap_id: str) -> list[str]:
        """Ids of the heap's blocks that hold at least one file."""

    @abc.abstractmethod
    async def drop_unreferenced_files(
        self, hashes: list[str], *, now: int = 0, claims_after: int = 0
    ) -> list[FileRecord]:
        """Delete the rows of those files no block holds and no upload claims (a claim from
        ``claims_after`` on); return them (the caller removes their bytes) and mark each as
        being deleted from ``now`` until ``end_file_deletions``. Turns with ``claim_file``."""

    @abc.abstractmethod
    async def mark_file_deletions(self, hashes: list[str], started_at: int) -> None:
        """Mark these hashes as to be deleted, stamped ``started_at``, for the sweep to take
        up (``resume_file_deletions``: a hash that is a file's again or claimed keeps its
        bytes); a hash marked already keeps its mark (a deletion under way). For bytes in
        the store that no row names: an upload's ``complete`` published them and failed
        before recording, and the upload then expired."""

    @abc.abstractmethod
    async def end_file_deletions(self, hashes: list[str], started_at: int) -> None:
        """The bytes of these hashes are gone: uploads of them need not wait any more. Only
        marks still stamped ``started_at`` (the remover's own stamp) end: one another
        process's sweep stamped again meanwhile is that process's removal under way, and
        ending it would let an upload store bytes that removal is about to delete."""

    @abc.abstractmethod
    async def claim_file(self, hash: str, token: str, now: int, deletions_after: int) -> bool:
        """Hold the hash for an upload (no deletion drops its row while held); True while a
        deletion of its bytes marked from ``deletions_after`` on is under way."""

    async def claim_file_now(self, hash: str, token: str, deletion_ttl_ms: int) -> bool:
        """``claim_file`` stamped by ``clock_ms`` (the clock claims are aged by), a deletion
        counting if marked within ``deletion_ttl_ms`` of it. PostgreSQL reads its clock inside
        the claim's own statement: no round trip for the clock on each poll."""
        now = await self.clock_ms()
        return await self.claim_file(hash, token, now, now - deletion_ttl_ms)

    @abc.abstractmethod
    async def release_file_claim(self, hash: str, token: str) -> None: ...

    async def clock_ms(self) -> int:
        """Now, in ms, by the clock claims and deletion marks are stamped and aged by
        (``claim_file``, ``drop_unreferenced_files``, ``sweep_file_claims``): the database's
        where several processes share it, so no process's skew decides."""
        return int(time.time() * 1000)

    @abc.abstractmethod
    async def sweep_file_claims(self, claims_before: int, limit: int) -> int:
        """Delete up to ``limit`` claims made before ``claims_before`` (rows no drop counts
        any more: a dead process's); how many went. Deletion marks are never swept: each
        stands for bytes still to remove (``resume_file_deletions``)."""

    @abc.abstractmethod
    async def stale_file_deletions(self, started_before: int, limit: int) -> list[str]:
        """Hashes marked as being deleted since before ``started_before``, oldest first: a
        deletion that a crash or a failed removal of the bytes left unfinished."""

    @abc.abstractmethod
    async def resume_file_deletions(
        self, hashes: list[str], *, started_before: int, now: int, claims_after: int
    ) -> list[str]:
        """Take up those of the stale deletions still marked since before ``started_before``
        (turns with ``claim_file``, like a drop): a hash some file row names again loses its
        mark (the bytes are that file's); one no upload claims (a claim from
        ``claims_after`` on) is marked again from ``now`` and returned, for the caller to
        remove its bytes and then ``end_file_deletions``; a claimed one is left for later."""

    @abc.abstractmethod
    async def set_multipart_id(
        self, upload_id: str, multipart_id: str, expected: str | None = None
    ) -> str | None:
        """Store the upload's multipart id if it is still ``expected``; return the one stored
        (the first writer's), or None when the upload is gone."""

    @abc.abstractmethod
    async def save_upload(self, record: UploadRecord) -> UploadRecord:
        """Insert, or return the existing upload of the same (heap, block, hash)."""

    @abc.abstractmethod
    async def get_upload(self, heap_id: str, block_id: str, hash: str) -> UploadRecord | None: ...

    @abc.abstractmethod
    async def delete_upload(self, upload_id: str) -> None: ...

    @abc.abstractmethod
    async def expired_uploads(self, now: int) -> list[UploadRecord]: ...

    @abc.abstractmethod
    async def has_upload_of(self, hash: str) -> bool:
        """Whether any upload row (of any user) is for ``hash``."""

    @abc.abstractmethod
    async def uploads_present(self, upload_ids: list[str]) -> set[str]:
        """Those of the ids an upload row has (upload folders left without one are swept)."""

    # -- folder scans (records in scan_records) ---------------------------------------------
    @abc.abstractmethod
    async def scan_entries(self, heap_id: str, paths: list[str]) -> dict[str, ScanEntry]: ...

    @abc.abstractmethod
    async def scan_entries_by_hash(
        self, heap_id: str, hashes: list[str]
    ) -> dict[str, list[ScanEntry]]:
        """Present (not missing) file entries of the heap holding these hashes."""

    @abc.abstractmethod
    async def scan_entries_at(self, path: str) -> list[ScanEntry]:
        """File entries of every heap at this path (missing ones too)."""

    @abc.abstractmethod
    async def unseen_scan_entries(
        self, heap_id: str, folder: str, scan_id: str, after: str, limit: int
    ) -> list[ScanEntry]:
        """Entries below ``folder``, unseen by ``scan_id``, not missing, by path > ``after``."""

    @abc.abstractmethod
    async def file_ids(self, hashes: list[str]) -> dict[str, str]: ...

    @abc.abstractmethod
    async def commit_scan_batch(
        self, batch: ScanBatch, now: int
    ) -> tuple[list[CommitResult], dict[str, str]]:
        """``batch`` in one transaction: the changes' results, hash -> stored file_id."""

    @abc.abstractmethod
    async def blocks_holding_file(self, hash: str, owner_id: str) -> list[tuple[str, str]]:
        """(heap_id, block_id) of the owner's blocks whose files_v0 holds the hash."""

    # -- between processes (several servers on one database) ----------------------------------
    shares_processes: bool = False  # True when other server processes may use this database

    def watch_user_rows(self, on_change: Callable[[str], None]) -> None:
        """Call ``on_change(user_id)`` whenever a user row changes, whoever changed it (another
        server process, the command line). Optional: an engine that cannot tell, does not."""

    async def announce(self, payloads: list[str]) -> None:
        """Tell the other processes on this database (small text payloads, < 8 KB each).
        A single-process engine has nobody to tell."""

    async def listen(self, on_payload: Callable[[str], None], *, task_status: Any = None) -> None:
        """Call ``on_payload`` for every announcement of the other processes, until
        cancelled. Reports ready through ``task_status`` (a trio TaskStatus) once listening."""
        raise NotImplementedError(f"{self.engine} has no other processes to listen to")
