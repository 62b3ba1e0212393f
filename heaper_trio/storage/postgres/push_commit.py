"""A group commit of edits in one round trip: ``heaper_push_batch`` (migration 0023).

With 16 streams pushing into one heap the group commit (``commit_batch``, ``BARE``) took
about ten round trips through trio-asyncio (BEGIN, locks, rows, clock, UPDATE + log, search
lines, relations, files, NOTIFY, COMMIT), and the heap row stayed locked across all of them:
two server processes' batches took turns at that pace, so ``--workers 2`` pushed half what one
worker did (issue 12). The server-side function takes the same locks, makes the same decisions
and writes the same rows in one statement, which is its own transaction: one round trip, and
the heap row is held only while the database runs it and flushes its commit.

It covers the common case only (``eligible``): edits of distinct blocks with no compaction and
a text kept in the row. Anything else goes the usual way, and so does a batch the function
refuses: a row found in pieces (SQLSTATE ``HTB01``) or any other statement error. The call is
its own transaction, so a refusal has written nothing; only a lost connection, whose COMMIT
may or may not have happened, is passed on instead of run again.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import asyncpg

from heaper_trio.protocol import announce
from heaper_trio.records import BlockChange, CommitResult, CommitStatus
from heaper_trio.storage import rules, text_pieces
from heaper_trio.storage.postgres.runtime import CONNECTION_ERRORS, Conn

log = logging.getLogger(__name__)

SURPRISE = "HTB01"  # the function met what only the usual path decides
# Texts up to this many characters: the function counts the lines of the old and the new text
# whole (the usual path counts only between their common ends).
MAX_TEXT = 65_536
# The largest sync_version, for sizing an inline announcement before the function fills it in.
_WIDEST_VERSION = 2**31 - 1

_CALL = "SELECT * FROM heaper_push_batch(" + ", ".join(f"${i}" for i in range(1, 28)) + ")"


class Surprise(Exception):
    """The function refused the batch as a whole before writing: commit it the usual way."""


def eligible(changes: list[BlockChange]) -> bool:
    """Edits (not creations) of distinct blocks, none compacting, each text kept in the row."""
    return (
        bool(changes)
        and len({ch.block_id for ch in changes}) == len(changes)
        and all(
            ch.expected_last_seq is not None
            and ch.compacted is None
            and len(ch.projection.text) <= MAX_TEXT
            and not text_pieces.in_pieces(ch.projection.text, False)
            for ch in changes
        )
    )


def _inline(origin: str | None, ch: BlockChange) -> str | None:
    """The base64 updates of the change's inline announcement as compact JSON, or None when
    the announcement would not fit a NOTIFY: longer than ``announce.inline_updates`` allows,
    sized as ``announce.encode`` writes it with the widest sync_version, without writing it
    (each update is encoded once). The function writes the rest of the object with spaces,
    14 bytes more; it leaves out one of 8,000 bytes or more (0024), and the pointer
    announcement goes alone."""
    if origin is None or ch.expected_last_seq is None or not ch.updates:
        return None
    if sum(map(len, ch.updates)) * 4 // 3 > announce.MAX_PAYLOAD_BYTES:
        return None  # (base64 grows by a third: too big for sure, skip the encoding)
    data = json.dumps(
        [base64.b64encode(u).decode("ascii") for u in ch.updates], separators=(",", ":")
    )
    seq = ch.expected_last_seq + len(ch.updates)
    # {"o":O,"b":B,"s":S,"v":V,"d":D}: 26 bytes of keys and punctuation
    size = 26 + len(json.dumps(origin)) + len(json.dumps(ch.block_id)) + len(str(seq))
    size += len(str(_WIDEST_VERSION)) + len(data)
    return data if size <= announce.MAX_PAYLOAD_BYTES else None


def arguments(
    changes: list[BlockChange], now: int, lock: int, keys: list[int], origin: str | None
) -> list[Any]:
    """The function's 27 arguments, in its order."""
    rel_i: list[int] = []
    rel_kind: list[str] = []
    rel_target: list[str] = []
    file_i: list[int] = []
    file_hash: list[str] = []
    upd: list[bytes] = []
    for i, ch in enumerate(changes, 1):
        for _, kind, target, _ in rules.relation_rows(ch.block_id, ch.heap_id, ch.projection):
            rel_i.append(i)
            rel_kind.append(kind)
            rel_target.append(target)
        for h in ch.projection.file_hashes:
            file_i.append(i)
            file_hash.append(h)
        upd += map(bytes, ch.updates)
    ps = [ch.projection for ch in changes]
    return [
        now,
        lock,
        keys,
        origin,
        [ch.block_id for ch in changes],
        [ch.heap_id for ch in changes],
        [ch.expected_last_seq for ch in changes],
        [ch.heap_owner for ch in changes],
        [p.type for p in ps],
        [p.title for p in ps],
        [p.text for p in ps],
        [json.dumps(p.relations) for p in ps],
        [json.dumps(p.files) for p in ps],
        [json.dumps(p.apps) for p in ps],
        [p.deleted_at for p in ps],
        [p.permanently_deleted_at for p in ps],
        [bytes(ch.state_vector) for ch in changes],
        [ch.size for ch in changes],
        [ch.author_id for ch in changes],
        [len(ch.updates) for ch in changes],
        upd,
        [_inline(origin, ch) for ch in changes],
        rel_i,
        rel_kind,
        rel_target,
        file_i,
        file_hash,
    ]


async def commit_in_one(
    c: Conn, changes: list[BlockChange], now: int, lock: int, keys: list[int], origin: str | None
) -> list[CommitResult]:
    """``changes`` (``eligible``) in one statement outside any transaction: committed whole
    when it returns, nothing written when it raises."""
    try:
        rows = await c.fetch(_CALL, *arguments(changes, now, lock, keys, origin))
    except CONNECTION_ERRORS:  # the outcome may be unknown: never run it again
        raise
    except asyncpg.PostgresError as e:  # refused whole, nothing written: the usual path
        if getattr(e, "sqlstate", None) != SURPRISE:
            log.warning("one-call group commit refused (%s); committing the usual way", e)
        raise Surprise from e
    return [
        CommitResult(ch.block_id, CommitStatus.ok, r[1], r[2], r[3]) if r[0] else rules.conflict(ch)
        for ch, r in zip(changes, rows, strict=True)
    ]
