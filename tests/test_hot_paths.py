"""HTTP hot paths (issue 12, item 3): exact usage counters, the sampled health check, cached
user rows that a revoke or reject still stops at once; on both engines, over a real server."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.services.instance import DatabaseProbe, HealthStatus, database_probe
from heaper_trio.storage import Storage

from .conftest import StartServer, assert_error
from .test_sync import ClientBlock, new_heap, push
from .test_trash import trash


async def fresh_usage(storage: Storage, user_id: str) -> dict[str, int]:
    """What ``/api/me`` used to count on every request: every block of every heap, joined."""
    now = int(time.time() * 1000)
    sessions_sql = (
        "SELECT COUNT(DISTINCT family) FROM refresh_tokens WHERE user_id={u} "
        "AND rotated_at IS NULL AND revoked_at IS NULL AND expires_at > {n}"
    )
    totals_sql = (
        "SELECT COUNT(DISTINCT h.id), COUNT(b.id), COALESCE(SUM(b.size), 0) "
        "FROM heaps h LEFT JOIN blocks b ON b.heap_id = h.id WHERE h.owner_id={u}"
    )
    if storage.engine == "sqlite":

        def q(c: Any) -> dict[str, int]:
            s = c.execute(sessions_sql.format(u="?", n="?"), (user_id, now)).fetchone()[0]
            h, b, d = c.execute(totals_sql.format(u="?"), (user_id,)).fetchone()
            return {"sessions": s, "heaps": h, "blocks": b, "document_bytes": d}

        return await storage.rt.read(q)  # type: ignore[attr-defined,no-any-return]

    from heaper_trio.storage.postgres.runtime import read

    async def pq(c: Any) -> dict[str, int]:
        s = await c.fetchval(sessions_sql.format(u="$1", n="$2"), user_id, now)
        h, b, d = await c.fetchrow(totals_sql.format(u="$1"), user_id)
        return {"sessions": s, "heaps": h, "blocks": b, "document_bytes": d}

    return await storage._run(read, pq)  # type: ignore[attr-defined,no-any-return]


async def assert_usage_exact(client: HeaperClient, server: RunningServer) -> dict[str, Any]:
    me = (await client.post("/api/me")).json()
    fresh = await fresh_usage(server.services.storage, me["id"])
    assert me["usage"] == fresh
    return dict(me["usage"])


async def test_usage_counters_stay_exact(
    admin: HeaperClient, eve: HeaperClient, server: RunningServer
) -> None:
    first = await assert_usage_exact(admin, server)
    assert first["heaps"] == 0 and first["blocks"] == 0 and first["sessions"] == 1

    heap = await new_heap(admin)
    one, two = ClientBlock(), ClientBlock()
    one.write("One", "first body")
    two.write("Two", "second body")
    await push(admin, one.push_item(heap["id"]), two.push_item(heap["id"]))
    pushed = await assert_usage_exact(admin, server)
    assert pushed["heaps"] == 1 and pushed["blocks"] == 3  # the root block, one, two
    assert pushed["document_bytes"] > 0

    one.synced = one.doc.get_state()
    one.write("One, longer", "a much longer body than before " * 20)
    await push(admin, one.push_item(heap["id"]))
    grown = await assert_usage_exact(admin, server)
    assert grown["document_bytes"] > pushed["document_bytes"]

    # Eve's writes are hers: they move her counters, not the admin's.
    eve_heap = await new_heap(eve)
    theirs = ClientBlock()
    theirs.write("Eve's", "body")
    await push(eve, theirs.push_item(eve_heap["id"]))
    assert await assert_usage_exact(admin, server) == grown
    assert (await assert_usage_exact(eve, server))["blocks"] == 2

    # Trash keeps the block; emptying the trash removes it.
    two.synced = two.doc.get_state()
    trash(two)
    await push(admin, two.push_item(heap["id"]))
    assert (await assert_usage_exact(admin, server))["blocks"] == 3
    r = await admin.delete(f"/api/trash/{heap['id']}")
    assert r.json()["deleted"] == [two.id]
    assert (await assert_usage_exact(admin, server))["blocks"] == 2

    # An upload creates its file block.
    data = b"counted file\n" * 100
    r = await admin.post(
        f"/api/upload/file/{heap['id']}/blk-upload",
        files={"file": ("notes.txt", data, "text/plain")},
        data={"hash": hashlib.sha256(data).hexdigest()},
    )
    assert r.status_code == 200, r.text
    assert (await assert_usage_exact(admin, server))["blocks"] == 3

    # A second heap, then its deletion: its blocks go with it.
    other = await new_heap(admin, "Other")
    extra = ClientBlock()
    extra.write("Extra", "x" * 500)
    await push(admin, extra.push_item(other["id"]))
    assert (await assert_usage_exact(admin, server))["heaps"] == 2
    r = await admin.delete(f"/api/heap/{other['id']}")
    assert r.status_code == 200, r.text
    final = await assert_usage_exact(admin, server)
    assert final["heaps"] == 1 and final["blocks"] == 3

    # Sessions: a second login is a second live family; a rotation is not.
    async with HeaperClient(server.url, admin.key) as again:
        await again.login()
        assert (await assert_usage_exact(admin, server))["sessions"] == 2
        await again.refresh()
        assert (await assert_usage_exact(admin, server))["sessions"] == 2


async def test_migration_backfills_existing_heaps(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database written before 0010 gets its counters from the migration's backfill."""
    from heaper_trio.storage import migrate
    from heaper_trio.storage.postgres import engine as pg_engine
    from heaper_trio.storage.sqlite import runtime as sqlite_runtime

    def before_0010(engine: str) -> list[tuple[int, str, str]]:
        # 0021 (PostgreSQL) replaces 0010's insert trigger, so it waits for 0010 too.
        return [m for m in migrate.migration_scripts(engine) if m[0] not in (10, 21)]

    monkeypatch.setattr(sqlite_runtime, "migration_scripts", before_0010)
    monkeypatch.setattr(pg_engine, "migration_scripts", before_0010)
    old = await start_server()
    async with HeaperClient(old.url) as client:
        await client.login()
        heap = await new_heap(client)
        block = ClientBlock()
        block.write("Before", "written before the counters existed")
        await push(client, block.push_item(heap["id"]))
        old.services.shutdown.set()
        await trio.sleep(0.2)
        monkeypatch.undo()
        new = await start_server()  # same data directory and database; 0010 (and 0021) apply now
        async with HeaperClient(new.url, client.key) as again:
            await again.login()
            usage = await assert_usage_exact(again, new)
            assert usage["blocks"] == 2 and usage["document_bytes"] > 0


class FakeStorage:
    engine = "fake"

    def __init__(self) -> None:
        self.pings = 0
        self.broken = False
        self.delay = 0.0

    async def ping(self) -> None:
        self.pings += 1
        await trio.sleep(self.delay)
        if self.broken:
            raise ConnectionError("database went away")


async def test_health_probe_samples_once_per_interval(autojump_clock: Any) -> None:
    storage = FakeStorage()
    probe = DatabaseProbe(storage, interval_s=1.0)  # type: ignore[arg-type]
    storage.delay = 0.05
    answers: list[Any] = []

    async def check() -> None:
        answers.append(await probe.check())

    async with trio.open_nursery() as n:  # concurrent callers share one ping
        for _ in range(20):
            n.start_soon(check)
    assert storage.pings == 1 and len(answers) == 20
    assert all(a.status is HealthStatus.ok for a in answers)

    await trio.sleep(0.5)
    assert (await probe.check()).status is HealthStatus.ok and storage.pings == 1
    storage.broken = True
    # The sample began at t=0: from t=1 the next caller pings again and sees the failure.
    await trio.sleep(0.4)
    assert (await probe.check()).status is HealthStatus.ok and storage.pings == 1
    await trio.sleep(0.05)
    failed = await probe.check()
    assert failed.status is HealthStatus.error and failed.error == "ConnectionError"
    assert storage.pings == 2


async def test_health_probe_survives_a_cancelled_pinger(autojump_clock: Any) -> None:
    storage = FakeStorage()
    storage.delay = 10.0
    probe = DatabaseProbe(storage, interval_s=1.0)  # type: ignore[arg-type]
    with trio.move_on_after(1):
        await probe.check()
    storage.delay = 0.0
    with trio.fail_after(1):
        assert (await probe.check()).status is HealthStatus.ok
    assert storage.pings == 2


async def test_health_over_http_pings_once_per_second(http: Any, server: RunningServer) -> None:
    probe = database_probe(server.services)
    for _ in range(5):
        assert (await http.get("/api/health")).status_code == 200
    assert probe.pings == 1
    probe.interval_s = 0.0  # every request samples again
    assert (await http.get("/api/health")).status_code == 200
    assert probe.pings == 2


async def _refused(client: HeaperClient) -> Any:
    """``/api/me`` until it is refused, within 2 s. PostgreSQL's cache drops a row when the
    change's NOTIFY arrives (``user_cache``: delivery after the CLI's commit, well under a
    millisecond on a quiet loopback), and on a loaded CI machine the next request can come
    first; SQLite reads the row every time. It never passes if the row is never dropped."""
    with trio.fail_after(2):
        while (r := await client.post("/api/me")).status_code == 200:
            await trio.sleep(0.01)
    return r


async def test_revoke_and_reject_are_refused_at_once(
    admin: HeaperClient, eve: HeaperClient, server: RunningServer
) -> None:
    """Cached user rows: a revoke or reject made by another process (the CLI opens its own
    storage) stops the very next request."""
    from contextlib import asynccontextmanager

    from heaper_trio.aio import open_asyncio_loop
    from heaper_trio.services.admin import UserAdmin
    from heaper_trio.services.admin import open_user_admin as open_admin

    @asynccontextmanager
    async def open_user_admin(settings: Any) -> Any:
        async with open_asyncio_loop(), open_admin(settings) as cli:
            yield cli

    storage = server.services.storage
    cache = getattr(storage, "_users", None)  # PostgreSQL's UserRowCache
    for _ in range(3):  # warm whatever the server caches
        assert (await eve.post("/api/me")).status_code == 200
    if cache is not None:
        assert cache.live and cache.hits >= 2  # the rows do come from the cache
    async with open_user_admin(server.services.settings) as cli:
        assert isinstance(cli, UserAdmin)
        await cli.revoke_tokens(eve.public_key)
    assert_error(await _refused(eve), 401, "token_revoked")

    await eve.login()
    for _ in range(3):
        assert (await eve.post("/api/me")).status_code == 200
    async with open_user_admin(server.services.settings) as cli:
        await cli.reject(eve.public_key)
    assert_error(await _refused(eve), 401, "token_revoked")

    # Approving again lets a fresh login in; making admin shows at once too.
    async with open_user_admin(server.services.settings) as cli:
        await cli.approve(eve.public_key)
    await eve.login()
    assert (await eve.post("/api/me")).json()["is_admin"] is False
    async with open_user_admin(server.services.settings) as cli:
        await cli.make_admin(eve.public_key)
    assert (await eve.post("/api/me")).json()["is_admin"] is True


@pytest.mark.engines("sqlite")
async def test_sqlite_reads_on_own_threads_cancel_cleanly(engine: str, make_settings: Any) -> None:
    """Reads run on the runtime's own reader threads (no trio.to_thread hop): a read
    cancelled while queued never runs, one cancelled while running finishes first, and
    every reader comes back."""
    import threading

    from heaper_trio.storage.sqlite.runtime import READERS

    from .test_storage import opened

    async with opened(make_settings()) as storage:
        rt = storage.rt  # type: ignore[attr-defined]
        release = threading.Event()
        ran: list[str] = []

        def hold(c: Any, name: str) -> str:
            ran.append(name)
            release.wait(10)
            return str(c.execute("SELECT 1").fetchone()[0])

        async with trio.open_nursery() as n:
            for i in range(READERS):
                n.start_soon(rt.read, hold, f"busy{i}")
            while len(ran) < READERS:  # every reader thread is held
                await trio.sleep(0.01)
            with trio.move_on_after(0.1) as queued:
                await rt.read(hold, "queued")  # no free reader: waits in the queue
            assert queued.cancelled_caught
            running = trio.CancelScope()

            async def cancelled_while_running() -> None:
                with running:
                    await rt.read(hold, "running")

            release.set()
            n.start_soon(cancelled_while_running)
            while "running" not in ran:
                await trio.sleep(0.01)
            running.cancel()
        assert "queued" not in ran
        # every reader is back and answers
        async with trio.open_nursery() as n:
            for i in range(READERS * 2):
                n.start_soon(rt.read, hold, f"again{i}")
        assert sum(name.startswith("again") for name in ran) == READERS * 2
        names: list[str] = []
        await rt.read(lambda c: names.append(threading.current_thread().name))
        assert names[0].startswith("sqlite-reader-")


@pytest.mark.engines("postgres")
async def test_user_rows_uncached_while_not_listening(
    engine: str, eve: HeaperClient, server: RunningServer
) -> None:
    """Without its LISTEN connection the cache cannot hear of changes: it empties, every read
    goes to the database until the connection is back, and then it caches again."""
    from heaper_trio.storage.postgres.runtime import write1

    storage: Any = server.services.storage
    cache = storage._users
    for _ in range(3):
        assert (await eve.post("/api/me")).status_code == 200
    assert cache.live and cache.hits >= 2

    async def kill_listener(c: Any) -> int:
        return int(
            await c.fetchval(
                "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE '%heaper_users%' "
                "AND pid <> pg_backend_pid()"
            )
        )

    assert await storage._run(write1, kill_listener) == 1
    with trio.fail_after(10):
        while cache.live:
            await trio.sleep(0.01)
    assert (await eve.post("/api/me")).status_code == 200  # read, and not kept

    async def revoke_behind_its_back(c: Any, user_id: str) -> None:
        await c.execute(
            "UPDATE users SET token_generation = token_generation + 1 WHERE id=$1", user_id
        )

    me = (await eve.post("/api/me")).json()
    await storage._run(write1, revoke_behind_its_back, me["id"])
    assert_error(await eve.post("/api/me"), 401, "token_revoked")

    with trio.fail_after(30):  # reconnects in the background (RETRY_S)
        while not cache.live:
            await trio.sleep(0.05)
    await eve.login()
    hits = cache.hits
    for _ in range(3):
        assert (await eve.post("/api/me")).status_code == 200
    assert cache.hits >= hits + 2
