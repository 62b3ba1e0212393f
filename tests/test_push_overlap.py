"""PostgreSQL runs two group commits at once per process (``GroupCommit`` depth 2), and
``heaper_push_batch`` ticks the heap clock last (migration 0025), so two commits on one heap
overlap everything before the tick (issue 12). The tick stays under the heap row lock until
COMMIT: a delta walk taken while one commit holds it never moves past a change that commits
after it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
import trio
from trio_asyncio import aio_as_trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.settings import Settings
from heaper_trio.storage import make_storage

from .conftest import StartServer
from .test_sync import ClientBlock, new_heap, push

pytestmark = pytest.mark.engines("postgres")  # PostgreSQL's group commit and its SQL function


# The server's backends waiting for a lock the holder has, and whether each holds a lock on
# block_updates (its log rows written).
_WAITING = (
    "SELECT a.pid, EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
    "WHERE l.pid = a.pid AND c.relname = 'block_updates' AND l.granted) AS logged "
    "FROM pg_stat_activity a WHERE a.datname = $1 AND a.wait_event_type = 'Lock' "
    "AND $2 = ANY(pg_blocking_pids(a.pid))"
)


async def _delta(client: HeaperClient, heap_id: str, since: int) -> dict[str, Any]:
    r = await client.get("/api/sync/delta", params={"workspace_id": heap_id, "since": since})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_two_commits_on_one_heap_overlap_but_the_tick_and_a_delta_walk_skips_none(
    start_server: StartServer, database_url: str
) -> None:
    server = await start_server(workers=1)  # a lone worker runs two group commits at once
    assert server.services.storage.commits_in_flight == 2  # type: ignore[attr-defined]
    async with HeaperClient(server.url) as admin:
        await admin.login()
        await _overlap(server, admin, database_url)


async def _overlap(server: RunningServer, admin: HeaperClient, database_url: str) -> None:
    heap = await new_heap(admin)
    blocks = [ClientBlock(), ClientBlock()]
    for i, block in enumerate(blocks):
        block.write(f"Note {i}", "first")
        [got] = (await push(admin, block.push_item(heap["id"]))).json()["blocks"]
        assert got["status"] == "created"
        block.synced = block.doc.get_state()
        block.write(f"Note {i}", "first and second")  # the edits pushed below
    loop = server.services.storage._loop  # type: ignore[attr-defined]
    db = database_url.rsplit("/", 1)[1].split("?")[0]

    def aio(f: Any) -> Any:
        return aio_as_trio(f, loop=loop)

    # Another writer of the heap holds its clock: it ticked and has not committed.
    holder = await aio(asyncpg.connect)(database_url)
    watcher = await aio(asyncpg.connect)(database_url)
    tx = holder.transaction()
    await aio(tx.start)()
    held = await aio(holder.fetchval)(
        "UPDATE heaps SET clock = clock + 1 WHERE id = $1 RETURNING clock", heap["id"]
    )
    holder_pid = await aio(holder.fetchval)("SELECT pg_backend_pid()")
    before = await _delta(admin, heap["id"], 0)
    answers: list[Any] = []

    async def edit(block: ClientBlock) -> None:
        answers.append((await push(admin, block.push_item(heap["id"]))).json()["blocks"][0])

    async with trio.open_nursery() as nursery:
        for block in blocks:
            nursery.start_soon(edit, block)
        try:
            # Both group commits run (the second started beside the first) and both wait for
            # the clock, having written their log rows already (a lock on block_updates).
            with trio.fail_after(10):
                while len(waiting := await aio(watcher.fetch)(_WAITING, db, holder_pid)) < 2:
                    await trio.sleep(0.01)
            assert all(w["logged"] for w in waiting)
            assert answers == []  # nothing is acknowledged before its COMMIT
            # A delta walk now sees neither edit; its server_time stays below their times.
            during = await _delta(admin, heap["id"], before["server_time"])
            assert during["changed_blocks"] == []
            assert during["server_time"] < held
        finally:  # committed either way: a failed check must not leave the pushes waiting
            await aio(tx.commit)()
    await aio(holder.close)()
    await aio(watcher.close)()
    assert sorted(a["status"] for a in answers) == ["ok", "ok"]
    after = await _delta(admin, heap["id"], during["server_time"])
    seen = {c["block_id"]: c for c in after["changed_blocks"]}
    assert set(seen) == {b.id for b in blocks}  # the walk from `during` misses neither
    assert all(c["updated_at"] > held for c in seen.values())
    assert len({c["updated_at"] for c in seen.values()}) == 2


def test_only_a_lone_worker_runs_two_group_commits_at_once(
    make_settings: Callable[..., Settings],
) -> None:
    """Beside other workers a second batch made every worker's groups smaller and pushed less
    (``storage.make_storage``)."""
    alone = make_storage(make_settings(workers=1))
    several = make_storage(make_settings(workers=2))
    worker = make_storage(make_settings(workers=1), lone=False)  # as workers.py starts one
    assert alone.commits_in_flight == 2  # type: ignore[attr-defined]
    assert several.commits_in_flight == 1  # type: ignore[attr-defined]
    assert worker.commits_in_flight == 1  # type: ignore[attr-defined]


_CALL = "SELECT * FROM heaper_push_batch(" + ", ".join(f"${i}" for i in range(1, 28)) + ")"


def _batch(ids: list[str], heaps: list[str], keys: list[int]) -> tuple[Any, ...]:
    """heaper_push_batch's arguments for one typed edit per block (no relations, no files)."""
    n = len(ids)
    return (
        10_000, 7, keys, None, ids, heaps, [0] * n, [None] * n,
        ["note"] * n, ["t"] * n, ["x"] * n, ["{}"] * n, ["{}"] * n, ["{}"] * n,
        [None] * n, [None] * n, [b"sv"] * n, [1] * n, [None] * n, [1] * n, [b"u"] * n,
        [None] * n, [], [], [], [], [],
    )  # fmt: skip


async def test_two_batches_holding_two_heaps_in_opposite_orders_do_not_deadlock(
    start_server: StartServer, database_url: str
) -> None:
    """The clock tick locks a batch's heaps sorted by id, not in its changes' order: batch A
    (a change in H2, then one in H1) and batch B (H1, then H2), both waiting behind another
    writer of H2, deadlocked and one was redone the slow way after ``deadlock_timeout``."""
    server = await start_server(workers=1)  # migrates the database
    loop = server.services.storage._loop  # type: ignore[attr-defined]

    def aio(f: Any) -> Any:
        return aio_as_trio(f, loop=loop)

    setup = await aio(asyncpg.connect)(database_url)
    await aio(setup.execute)(
        "INSERT INTO users (id, public_key, state, created_at) VALUES ('dl-u','dl-k','approved',0);"
        "INSERT INTO heaps (id, owner_id, name, root_block_id, created_at, clock) VALUES "
        "('dl-H1','dl-u','h1','dl-r1',0,0), ('dl-H2','dl-u','h2','dl-r2',0,0);"
        "INSERT INTO blocks (id, heap_id, created_at, updated_at, state_vector) VALUES "
        "('dl-a1','dl-H1',0,0,''), ('dl-a2','dl-H2',0,0,''), "
        "('dl-b1','dl-H1',0,0,''), ('dl-b2','dl-H2',0,0,'')"
    )
    holder, a, b = [await aio(asyncpg.connect)(database_url) for _ in range(3)]
    tx = holder.transaction()
    await aio(tx.start)()
    await aio(holder.execute)("UPDATE heaps SET clock = clock + 1 WHERE id = 'dl-H2'")
    results: dict[str, Any] = {}

    async def call(name: str, conn: Any, args: tuple[Any, ...]) -> None:
        try:
            results[name] = [tuple(r) for r in await aio(conn.fetch)(_CALL, *args)]
        except asyncpg.PostgresError as e:
            results[name] = e

    async def waiting() -> int:
        return int(
            await aio(setup.fetchval)(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND pid = ANY($1::int[])",
                [a.get_server_pid(), b.get_server_pid()],
            )
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "A", a, _batch(["dl-a2", "dl-a1"], ["dl-H2", "dl-H1"], [1, 2]))
        with trio.fail_after(10):
            while await waiting() < 1:
                await trio.sleep(0.01)
        nursery.start_soon(call, "B", b, _batch(["dl-b1", "dl-b2"], ["dl-H1", "dl-H2"], [3, 4]))
        with trio.fail_after(10):
            while await waiting() < 2:
                await trio.sleep(0.01)
        await aio(tx.commit)()
    for conn in (holder, a, b, setup):
        await aio(conn.close)()
    assert not isinstance(results["A"], Exception), results["A"]
    assert not isinstance(results["B"], Exception), results["B"]
    assert all(ok for ok, *_ in results["A"] + results["B"])
