"""The rules of storage, written once: pure functions both engines call between their SQL.

An engine reads rows, asks a rule what they mean, and writes what the rule says; only the SQL
and the I/O differ between SQLite and PostgreSQL. Two copies of a rule drift (they did: a NUL
filter on relation targets existed only on the PostgreSQL side), one copy cannot.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from heaper_trio.records import (
    BlockChange,
    BlockProjection,
    ChallengeProblem,
    CommitResult,
    CommitStatus,
    LoginOutcome,
    RefreshOutcome,
    RotateResult,
    ScanBatch,
    ScanEntry,
    User,
)
from heaper_trio.records.admin_links import AdminLinkProblem
from heaper_trio.records.text_segments import raw_text
from heaper_trio.storage import text_pieces
from heaper_trio.storage.errors import LastAdmin
from heaper_trio.storage.rows import Row

# -- login challenges and accounts ---------------------------------------------------------------


def challenge_problem(row: Row | None, public_key: str, now: int) -> ChallengeProblem | None:
    """Why the challenge row (``public_key, expires_at, used_at``) cannot complete a login for
    ``public_key`` at ``now``; None if it can. The order is the contract's: an unknown
    challenge, then one issued to another key, then one used, then one expired."""
    if row is None:
        return ChallengeProblem.unknown
    if row["public_key"] != public_key:
        return ChallengeProblem.foreign
    if row["used_at"] is not None:
        return ChallengeProblem.used
    if row["expires_at"] <= now:
        return ChallengeProblem.expired
    return None


@dataclass(frozen=True)
class NewAccount:
    """The columns of an account a login creates."""

    state: str
    is_admin: bool
    approved_at: int | None


def new_account(first: bool, auto_approve: bool, now: int) -> NewAccount:
    """The first account of a server is an approved admin (someone must be able to approve
    the others); later ones wait for approval unless the server approves automatically."""
    approved = first or auto_approve
    return NewAccount("approved" if approved else "pending", first, now if approved else None)


def issues_token(user: User) -> bool:
    """Only an approved account gets a refresh token (a pending one logs in to learn that)."""
    return user.state == "approved"


def login_outcome(user: User, created: bool) -> LoginOutcome:
    return LoginOutcome(None, user, created, issues_token(user))


# -- admin links ------------------------------------------------------------------------------

ADMIN_LINK_KEPT_MS = 24 * 3600 * 1000  # a used or expired link is remembered this long


def admin_link_problem(row: Row | None, user: User | None, now: int) -> AdminLinkProblem | None:
    """Why the link row (``expires_at, used_at``) cannot sign its account in at ``now``: unknown,
    used, expired (in that order), or its account is no longer an approved admin."""
    if row is None:
        return AdminLinkProblem.unknown
    if row["used_at"] is not None:
        return AdminLinkProblem.used
    if row["expires_at"] <= now:
        return AdminLinkProblem.expired
    if user is None or not user.is_admin or user.state != "approved":
        return AdminLinkProblem.not_admin
    return None


# -- refresh tokens --------------------------------------------------------------------------------


def check_keeps_an_admin(user_id: str, approved_admins: Iterable[str]) -> None:
    """Raise ``LastAdmin`` if taking ``user_id``'s approval or admin rights would leave no
    approved admin. Both engines call it inside the writing transaction, after reading the
    approved admins in a way no concurrent writer can change before the commit (SQLite: the
    one write lock; PostgreSQL: ``FOR UPDATE`` on those rows), so two processes demoting the
    last two admins at once cannot both pass it."""
    if list(approved_admins) == [user_id]:
        raise LastAdmin(user_id)


def refresh_outcome(row: Row | None, user_id: str, now: int) -> RefreshOutcome:
    """What presenting the token row (``user_id, expires_at, rotated_at, revoked_at``) means.

    ``reused``: it was rotated away already, so this is a copy being replayed and the caller
    revokes its whole family. ``ok``: the caller marks it rotated and stores the next one.
    """
    if row is None or row["user_id"] != user_id:
        return RefreshOutcome.unknown
    if row["revoked_at"] is not None:
        return RefreshOutcome.revoked
    if row["rotated_at"] is not None:
        return RefreshOutcome.reused
    if row["expires_at"] <= now:
        return RefreshOutcome.expired
    return RefreshOutcome.ok


def rotate_result(outcome: RefreshOutcome, user_id: str) -> RotateResult:
    """An unknown token names nobody: the caller must not learn whose id it tried."""
    return RotateResult(outcome, None if outcome is RefreshOutcome.unknown else user_id)


# -- block commits ---------------------------------------------------------------------------------


def creates(ch: BlockChange) -> bool:
    """The change makes a new block: only then does a tombstone of its id matter."""
    return ch.expected_last_seq is None


def commit_conflict(ch: BlockChange, current: Row | None, tombstoned: bool) -> bool:
    """Refuse the change unless the caller's document was built from the stored state.

    ``current`` is the block row (``heap_id, last_seq``) or None; ``tombstoned`` whether the id
    was purged (a purged id is never reused). A creation needs a free id; an edit needs the
    same log position, in the same heap.
    """
    if creates(ch):
        return current is not None or tombstoned
    return (
        current is None
        or current["last_seq"] != ch.expected_last_seq
        or current["heap_id"] != ch.heap_id
    )


def block_columns(
    ch: BlockChange, updated_at: int, last_seq: int, text: bool = True
) -> dict[str, Any]:
    """The block row's columns a commit writes (JSON columns as text); ``text=False``: the
    caller puts the text in itself (a big one is not joined here: ``records/text_segments``)."""
    p = ch.projection
    return {
        "type": p.type,
        "title": p.title,
        "text": p.text if text else "",
        "relations": json.dumps(p.relations),
        "files": json.dumps(p.files),
        "apps": json.dumps(p.apps),
        "updated_at": updated_at,
        "deleted_at": p.deleted_at,
        "permanently_deleted_at": p.permanently_deleted_at,
        "state_vector": bytes(ch.state_vector),
        "size": ch.size,
        "last_seq": last_seq,
    }


def created_columns(ch: BlockChange, updated_at: int) -> dict[str, Any]:
    """The columns only a creation writes: its first change time is its creation time."""
    return {
        "id": ch.block_id,
        "heap_id": ch.heap_id,
        "created_at": updated_at,
        "created_by": ch.author_id,
        "sync_version": 1,
    }


def log_rows(ch: BlockChange, base: int, now: int) -> list[tuple[str, int, bytes, int, str | None]]:
    """``block_updates`` rows (block_id, seq, data, created_at, author_id) after ``base``."""
    return [
        (ch.block_id, base + i + 1, bytes(u), now, ch.author_id) for i, u in enumerate(ch.updates)
    ]


def relation_rows(
    block_id: str, heap_id: str, p: BlockProjection
) -> list[tuple[str, str, str, str]]:
    """``block_relations`` rows (block_id, kind, target_id, heap_id).

    A target holding NUL is left out on both engines: PostgreSQL TEXT cannot hold it, and
    both engines must answer ``related`` and tag queries alike. Targets are block ids, which
    never hold NUL, so nothing real is lost.
    """
    return [
        (block_id, kind, target, heap_id)
        for kind, targets in (("tag", p.tags), ("mention", p.mentions), ("link", p.links))
        for target in targets
        if "\x00" not in target
    ]


def commit_result(
    ch: BlockChange, current: Row | None, updated_at: int, last_seq: int
) -> CommitResult:
    if current is None:
        return CommitResult(ch.block_id, CommitStatus.created, updated_at, last_seq, 1)
    return CommitResult(ch.block_id, CommitStatus.ok, updated_at, last_seq, current["sync_version"])


def conflict(ch: BlockChange) -> CommitResult:
    return CommitResult(ch.block_id, CommitStatus.conflict)


def not_owner(ch: BlockChange, owner_id: str | None) -> bool:
    """Whether the change asks for a heap owner (``heap_owner``) the heap does not have
    (``owner_id``; None: no such heap): then it is refused as a conflict."""
    return ch.heap_owner is not None and owner_id != ch.heap_owner


# -- creations in bulk (folder scans) -------------------------------------------------------


def bulk_creatable(ch: BlockChange) -> bool:
    """New blocks without a snapshot go through the bulk path; the rest, one by one, and so
    does a text kept in pieces (``text_pieces``)."""
    return (
        ch.expected_last_seq is None
        and ch.compacted is None
        and not text_pieces.in_pieces(raw_text(ch.projection), False)
    )


def merge_results(
    changes: list[BlockChange] | tuple[BlockChange, ...], done: list[CommitResult]
) -> list[CommitResult]:
    """Results in the order of ``changes``, whichever path committed each."""
    by_id = {r.block_id: r for r in done if r.status is not CommitStatus.conflict}
    return [by_id.get(ch.block_id) or conflict(ch) for ch in changes]


# The order of the ``blocks`` rows of ``Creations``, as both engines' INSERT names them.
CREATED_BLOCK_COLUMNS = (
    "id, heap_id, type, title, text, relations, files, apps, updated_at, "
    "deleted_at, permanently_deleted_at, state_vector, size, last_seq, "
    "created_at, created_by, sync_version"
)


@dataclass
class Creations:
    """Rows of many new blocks, one list per table, and a result per change (by position)."""

    results: dict[int, CommitResult] = field(default_factory=dict)
    todo: list[tuple[int, BlockChange]] = field(default_factory=list)
    blocks: list[tuple[Any, ...]] = field(default_factory=list)
    updates: list[tuple[str, int, bytes, int, str | None]] = field(default_factory=list)
    relations: list[tuple[str, str, str, str]] = field(default_factory=list)
    files: list[tuple[str, str, str]] = field(default_factory=list)

    def by_heap(self) -> list[tuple[str, list[tuple[int, BlockChange]]]]:
        """The creations to do, per heap, in the caller's order."""
        heaps = dict.fromkeys(ch.heap_id for _, ch in self.todo)
        return [(h, [(i, ch) for i, ch in self.todo if ch.heap_id == h]) for h in heaps]

    def ordered(self, count: int) -> list[CommitResult]:
        return [self.results[i] for i in range(count)]


def plan_creations(changes: list[BlockChange], taken: set[str]) -> Creations:
    """Refuse changes whose id is taken (a block or a tombstone), or made earlier in the list."""
    plan = Creations()
    taken = set(taken)
    for i, ch in enumerate(changes):
        if ch.block_id in taken:
            plan.results[i] = conflict(ch)
        else:
            taken.add(ch.block_id)
            plan.todo.append((i, ch))
    return plan


def add_creations(
    plan: Creations, heap_id: str, mine: list[tuple[int, BlockChange]], clock: int | None, now: int
) -> None:
    """The rows of a heap's new blocks, given the heap's clock after ticking once per block
    (None: the heap went away, every one is a conflict). Same rows and change times as
    committing them one by one."""
    n = len(mine)
    for k, (i, ch) in enumerate(mine):
        if clock is None:
            plan.results[i] = conflict(ch)
            continue
        at, p, last_seq = clock - n + 1 + k, ch.projection, len(ch.updates)
        plan.blocks.append(
            (
                ch.block_id,
                heap_id,
                p.type,
                p.title,
                p.text,
                json.dumps(p.relations),
                json.dumps(p.files),
                json.dumps(p.apps),
                at,
                p.deleted_at,
                p.permanently_deleted_at,
                bytes(ch.state_vector),
                ch.size,
                last_seq,
                at,
                ch.author_id,
                1,
            )
        )
        plan.updates += log_rows(ch, 0, now)
        plan.relations += relation_rows(ch.block_id, heap_id, p)
        plan.files += [(ch.block_id, h, heap_id) for h in p.file_hashes]
        plan.results[i] = CommitResult(ch.block_id, CommitStatus.created, at, last_seq, 1)


def batch_rows(
    batch: ScanBatch, results: list[CommitResult]
) -> tuple[list[ScanEntry], set[str], list[Any]]:
    """(entries to write, hashes of present files written, file rows to insert): an entry
    of a refused change is not written, so a block and its entry always agree."""
    refused = {r.block_id for r in results if r.status is CommitStatus.conflict}
    entries = [e for e in batch.entries if e.block_id not in refused]
    written = {e.hash for e in entries if e.kind == "file" and not e.missing}
    return entries, written, [f for f in batch.files if f.hash in written]


def columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows turned into one list per column (PostgreSQL inserts them with ``unnest``)."""
    return [[row[k] for row in rows] for k in range(width)]


# -- reads -----------------------------------------------------------------------------------------


def unseen_range(folder: str, after: str) -> tuple[str, str]:
    """(low, high), exclusive: the paths strictly below ``folder`` and after ``after``.
    "0" follows "/", so every path below the folder sorts before ``high``."""
    return max(folder.rstrip("/") + "/", after), folder.rstrip("/") + "0"


def related_lists(outgoing: list[Row], incoming: list[Row]) -> dict[str, list[str]]:
    """``related`` from (kind, target_id) rows of the block and (kind, block_id) rows of the
    blocks pointing at it (children are tagged with it, backlinks mention or link it)."""
    out: dict[str, list[str]] = {
        "tags": [],
        "mentions": [],
        "links": [],
        "children": [],
        "backlinks": [],
    }
    for r in outgoing:
        out[{"tag": "tags", "mention": "mentions", "link": "links"}[r[0]]].append(r[1])
    for r in incoming:
        key = "children" if r[0] == "tag" else "backlinks"
        if r[1] not in out[key]:
            out[key].append(r[1])
    return out


def heap_stats(
    by_type: list[Row], trash: int, files_json: list[Row], clock: int | None
) -> dict[str, Any]:
    """From (type, count) rows outside the trash, the trash count, the ``files`` column of
    blocks holding any, and the heap's clock. A file key counted once however many blocks
    hold it."""
    types = {r[0] or "unknown": int(r[1]) for r in by_type}
    files: dict[str, int] = {}
    for r in files_json:
        for key, meta in json.loads(r[0]).items():
            files[key] = int(meta.get("file_size") or 0) if isinstance(meta, dict) else 0
    return {
        "blocks": sum(types.values()),
        "by_type": types,
        "trash": int(trash),
        "files": len(files),
        "file_bytes": sum(files.values()),
        "last_change": int(clock) if clock is not None else None,
    }


def usage(sessions: int, heaps: int, blocks: int, document_bytes: int) -> dict[str, Any]:
    return {
        "sessions": int(sessions),
        "heaps": int(heaps),
        "blocks": int(blocks),
        "document_bytes": int(document_bytes),
    }


def by_heap(rows: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """(heap_id, block_id) rows, grouped by heap in their order."""
    out: dict[str, list[str]] = {}
    for heap_id, block_id in rows:
        out.setdefault(heap_id, []).append(block_id)
    return out
