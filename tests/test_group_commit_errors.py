"""Every caller of a group commit that fails as a whole gets the real error: an
``outcome.Error`` unwraps once (a second unwrap raises ``AlreadyUsedError``), so handing one
object to every job gave one caller its 503 ``database_unavailable`` and the others a 500
with the cause lost (PostgreSQL: a lost connection or ``Unavailable``; SQLite: BEGIN, RELEASE
or COMMIT failing, as on a full disk)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import trio

from heaper_trio.errors import Unavailable
from heaper_trio.storage.postgres.runtime import GroupCommit
from heaper_trio.storage.sqlite import runtime as sqlite_runtime


async def test_postgres_group_commit_failure_reaches_every_job_as_itself(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def run_batch(changes: list[Any], now: int) -> list[Any]:
        await trio.sleep(0.05)  # let the other callers queue behind the leader
        raise Unavailable("the database is unavailable: lost", code="database_unavailable")

    group = GroupCommit(run_batch)
    got: list[BaseException] = []

    async def caller(i: int) -> None:
        try:
            await group.submit([i], 0)
        except BaseException as e:
            got.append(e)

    async with trio.open_nursery() as n:
        n.start_soon(caller, 0)
        await trio.sleep(0.01)  # 0 leads a batch; 1..3 wait for the next one, together
        for i in (1, 2, 3):
            n.start_soon(caller, i)
    assert group.batches == 2
    assert [type(e).__name__ for e in got] == ["Unavailable"] * 4


class _CommitFails:
    """A writer connection whose COMMIT fails, as on a full disk."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, *a: Any) -> Any:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self.conn.execute(sql, *a)

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction


async def test_sqlite_group_commit_failure_reaches_every_job_as_itself(tmp_path: Path) -> None:
    rt = sqlite_runtime.SqliteRuntime(tmp_path / "x.db")
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None, check_same_thread=False)
    replies = [sqlite_runtime._Reply() for _ in range(3)]
    batch = [(lambda c: 1, (), r) for r in replies]
    await trio.to_thread.run_sync(rt._run_batch, _CommitFails(conn), batch)
    got = []
    for r in replies:
        await r.done.wait()
        try:
            with sqlite_runtime._unavailable_on_operational_error():
                r.box[0].unwrap()
        except BaseException as e:
            got.append(type(e).__name__)
    conn.close()
    assert got == ["Unavailable"] * 3
