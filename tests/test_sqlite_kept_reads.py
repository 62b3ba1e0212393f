"""SQLite's kept reads (storage/sqlite/kept_reads.py): user rows and usage counters answered
without a query while the database is unchanged, and never once it has changed, whoever
changed it (this server's writer, another connection, another process)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.storage.sqlite.engine import DB_FILE
from heaper_trio.storage.sqlite.kept_reads import MISS, KeptReads

from .conftest import assert_error
from .test_sync import ClientBlock, new_heap, push


def _wal_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (a INTEGER)")
    return conn


def test_a_commit_by_any_connection_ends_what_was_kept(tmp_path: Path) -> None:
    db = tmp_path / "x.sqlite3"
    conn = _wal_db(db)
    now = [0.0]
    kept = KeptReads(db, max_age_s=1.0, clock=lambda: now[0])
    kept.open()
    mark = kept.mark()
    assert len(mark) == 96
    assert kept.get("k", mark) is MISS
    kept.put("k", mark, "v")
    assert kept.get("k", kept.mark()) == "v"
    other = sqlite3.connect(db, isolation_level=None)  # as the command line would
    other.execute("INSERT INTO t VALUES (1)")
    assert kept.get("k", kept.mark()) is MISS
    # an answer read before a commit, put after it, is not kept
    stale_mark = kept.mark()
    conn.execute("INSERT INTO t VALUES (2)")
    kept.put("k", stale_mark, "stale")
    assert kept.get("k", kept.mark()) is MISS
    # never longer than max_age_s
    mark = kept.mark()
    kept.put("k", mark, "v2")
    now[0] = 1.5
    assert kept.get("k", kept.mark()) is MISS
    kept.close()
    other.close()
    conn.close()


def test_without_a_shm_file_nothing_is_kept(tmp_path: Path) -> None:
    kept = KeptReads(tmp_path / "none.sqlite3")
    kept.open()
    assert kept.mark() == b""
    kept.put("k", b"", "v")
    assert kept.get("k", b"") is MISS


@pytest.mark.engines("sqlite")
async def test_a_revoke_by_another_connection_refuses_the_very_next_request(
    engine: str, server: RunningServer, eve: HeaperClient
) -> None:
    kept = server.services.storage.rt.kept  # type: ignore[attr-defined]
    for _ in range(3):
        assert (await eve.post("/api/me")).status_code == 200
    hits = kept.hits
    assert (await eve.post("/api/me")).status_code == 200
    assert kept.hits >= hits + 2  # the user row and the usage came from the kept answers
    db = Path(server.services.settings.data_dir) / DB_FILE
    raw = sqlite3.connect(db, isolation_level=None, timeout=10)
    raw.execute(
        "UPDATE users SET token_generation = token_generation + 1 WHERE public_key=?",
        (eve.public_key,),
    )
    raw.close()
    assert_error(await eve.post("/api/me"), 401, "token_revoked")


@pytest.mark.engines("sqlite")
async def test_kept_usage_ends_with_its_first_session(
    engine: str, server: RunningServer, eve: HeaperClient
) -> None:
    """The session count depends on the time: a kept count holds only until the first
    session it counted expires, with no write in between."""
    storage = server.services.storage
    me = (await eve.post("/api/me")).json()
    now = int(time.time() * 1000)
    assert (await storage.usage(me["id"], now))["sessions"] == 1
    assert (await storage.usage(me["id"], now))["sessions"] == 1
    later = now + 400 * 24 * 3600 * 1000  # past every refresh token's expiry
    assert (await storage.usage(me["id"], later))["sessions"] == 0


def test_a_commit_of_this_writer_that_changes_no_user_keeps_the_user_rows(
    tmp_path: Path,
) -> None:
    """``carry``: marks taken around a commit made under the write lock keep the user rows
    (and only them); a commit by anyone else before that lock ends them as before."""
    db = tmp_path / "x.sqlite3"
    conn = _wal_db(db)
    kept = KeptReads(db)
    kept.open()
    users = frozenset({"user"})

    def commit_as_the_writer() -> tuple[bytes, bytes]:
        conn.execute("BEGIN IMMEDIATE")
        before = kept.mark()
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("COMMIT")
        return before, kept.mark()

    mark = kept.mark()
    assert kept.get(("user", "u"), mark) is MISS
    kept.put(("user", "u"), mark, "row")
    kept.put(("usage", "u"), mark, "counts")
    kept.carry(*commit_as_the_writer(), users)
    assert kept.get(("user", "u"), kept.mark()) == "row"
    assert kept.get(("usage", "u"), kept.mark()) is MISS  # a push changes the usage
    # another connection commits first: the writer's marks no longer follow what was kept
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("INSERT INTO t VALUES (2)")
    kept.carry(*commit_as_the_writer(), users)
    assert kept.get(("user", "u"), kept.mark()) is MISS
    # another connection commits between the writer's COMMIT and its ``after`` mark (the
    # write lock is free again; the writer thread may be waiting for the GIL): nothing is
    # carried, or the row read before that commit (a revoke) would still be served
    kept.put(("user", "u"), kept.mark(), "row")
    conn.execute("BEGIN IMMEDIATE")
    before = kept.mark()
    conn.execute("INSERT INTO t VALUES (3)")
    conn.execute("COMMIT")
    other.execute("INSERT INTO t VALUES (4)")
    kept.carry(before, kept.mark(), users)
    assert kept.get(("user", "u"), kept.mark()) is MISS
    kept.close()
    other.close()
    conn.close()


@pytest.mark.engines("sqlite")
async def test_pushes_keep_the_user_row_and_a_revoke_is_still_seen_at_once(
    engine: str, server: RunningServer, eve: HeaperClient
) -> None:
    """A push's commit writes no user row: the next request takes the kept row, where every
    commit used to end it. A revoke by another connection between two pushes still refuses
    the very next one."""
    kept = server.services.storage.rt.kept  # type: ignore[attr-defined]
    heap = await new_heap(eve)
    block = ClientBlock()
    block.write("Kept", "start")
    text = block.content.children[0].children[0]
    for word in ("one", "two", "three"):
        text.insert(len(text), f" {word}")
        [answer] = (await push(eve, block.push_item(heap["id"]))).json()["blocks"]
        assert answer["status"] in ("created", "ok"), answer
    hits, misses = kept.hits, kept.misses
    text.insert(len(text), " four")
    [answer] = (await push(eve, block.push_item(heap["id"]))).json()["blocks"]
    assert answer["status"] == "ok", answer
    assert (kept.hits, kept.misses) == (hits + 1, misses)  # the row, kept over the commit
    db = Path(server.services.settings.data_dir) / DB_FILE
    raw = sqlite3.connect(db, isolation_level=None, timeout=10)
    raw.execute(
        "UPDATE users SET token_generation = token_generation + 1 WHERE public_key=?",
        (eve.public_key,),
    )
    raw.close()
    text.insert(len(text), " five")
    assert_error(await push(eve, block.push_item(heap["id"])), 401, "token_revoked")
