#!/usr/bin/env python3
"""Delta benchmark: a full walk of a big heap's change feed over HTTP, against raw sqlite3
walks of the same pages in the same run (issue 12 item 4).

How: a real ``python -m heaper_trio`` server (SQLite, temporary data dir) is started and one
account logs in and makes a heap over HTTP; then this process opens the same database through
``heaper_trio.storage`` (SQLite allows a second process in WAL mode) and commits ``--blocks``
blocks straight into that heap with ``commit_changes`` in batches of 1,000 (the same rows a
push writes, without building and pushing Yjs updates, which would take minutes). Measured
then, interleaved, ``--runs`` times each, the median reported:

* ``server_walk``: ``GET /api/sync/delta`` from since=0, pages of 1,000, passing
  ``server_time`` back until ``has_more`` is false (httpx, one keep-alive connection,
  ``r.json()``: what a Python client built on httpx pays);
* ``server_walk_thin``: the same walk through the thinnest client (HTTP/1.1 written by hand
  on one keep-alive socket, each page decoded with orjson), as the ws bench uses raw clients:
  what is measured is the server, not the load generator;
* ``raw_walk`` (the anchor): a plain ``sqlite3`` connection on the same file walks the same
  pages with the same query (the delta columns, ``updated_at > ? ORDER BY updated_at, id
  LIMIT 1001``) and ``json.dumps`` each page in the answer's shape: what the database plus
  the answer's encoding cost, without HTTP and the server;
* ``raw_walk_decoded``: ``raw_walk`` that also ``json.loads`` each page, as the httpx walk's
  client must: what a client walk costs without HTTP and the server.

Which ratio the goal (< 1.5x) is read against: ``server_walk_thin`` over ``raw_walk``. The
httpx walk's client spends as much CPU parsing as the whole anchor does (issue 12 item 4),
which is neither the server nor the database; the thin walk still pays its own decode and
the sockets, and the anchor pays neither, so the reading leans against the server, not for
it. ``server_walk`` over ``raw_walk_decoded`` (both pay ``json.loads``; httpx itself only on
the server's side) and over ``raw_walk`` (the figure of earlier sessions) are printed too.
* ``raw_walk_before``: the queries the server ran before issue 12 (every column, three JSON
  columns decoded, ``COUNT(*)`` of what follows on every page), for context.

With ``--engine postgres --database-url URL`` the server runs on a scratch database made on
that cluster (dropped afterwards) and the anchor is a plain asyncpg connection walking the
same pages with the server's query (``raw_walk_before`` is not measured there). The blocks
are written there by ``COPY`` on a plain asyncpg connection (the delta columns, unique change
times, the heap's clock moved past them): committing them through the storage makes several
round trips per block, about 5 s per thousand, which is what looked like a hang at 100k.

CPU per page is reported beside the times: the server's (``server_cpu_ms_per_page``), on
PostgreSQL its connections' backends' (``database_cpu_ms_per_page``, read from ``/proc``: the
cluster must run on this machine), and the anchor's own process and backend
(``raw_walk.client_cpu_ms_per_page``, ``raw_walk.database_cpu_ms_per_page``): a walk's wall
time on a shared machine moves with the load, the CPU it costs much less. ``--tree DIR``
measures another checkout's server (the anchor and this script stay this one's): run it
alternately with and without, e.g. against main's checkout.

Prints ONE JSON object (progress on stderr) with the anchor and the ratios::

    ./.venv/bin/python scripts/bench_delta.py                 # 100,000 blocks, 3 runs
    ./.venv/bin/python scripts/bench_delta.py --blocks 20000 --runs 5
    ./.venv/bin/python scripts/bench_delta.py --engine postgres --database-url postgresql://...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import orjson
import trio
from bench_http import Server, free_port, log, proc_cpu_s, stop_servers_on_sigterm

from heaper_trio.client import HeaperClient, KeyPair
from heaper_trio.records import BlockChange, BlockProjection
from heaper_trio.storage.sqlite.engine import DB_FILE, SqliteStorage

PAGE = 1000
DELTA_FIELDS = "id, updated_at, sync_version, type, title, deleted_at"
OLD_COLUMNS = (
    "id, heap_id, sync_version, type, title, text, relations, files, apps, created_at, "
    "created_by, updated_at, deleted_at, permanently_deleted_at, size, last_seq"
)


def start_heaper(
    workdir: Path,
    database_url: str = "",
    extra_env: dict[str, str] | None = None,
    tree: Path = ROOT,
) -> Server:
    data_dir = workdir / "data"
    data_dir.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEAPER_")}
    env.update(HEAPER_AUTH_RATE_LIMIT="100000", HEAPER_LOG_LEVEL="warning")
    if database_url:
        env.update(HEAPER_DATABASE_URL=database_url, HEAPER_AUTO_APPROVE="true")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    env.update(extra_env or {})
    argv = [sys.executable, "-m", "heaper_trio", "--port", str(port), "--data-dir", str(data_dir)]
    return Server("heaper", argv, env, port, "/api/health", workdir)


def block_change(i: int, heap_id: str, user_id: str) -> BlockChange:
    title = f"Note {i} about the garden and a plan for tomorrow"
    text = f"Body of note {i}: " + "some words of a paragraph " * 8
    projection = BlockProjection("document", title, text, {}, {}, {}, None, None, (), (), (), ())
    update = b"\x01\x01" + i.to_bytes(4, "little") + b"\x00" * 40
    return BlockChange(
        f"blk-{i:07d}", heap_id, user_id, None, (update,), projection, b"\x00", len(update)
    )


async def populate(data_dir: Path, heap_id: str, user_id: str, n: int, database_url: str) -> float:
    if database_url:
        return await trio.to_thread.run_sync(_pg_copy_all, database_url, heap_id, user_id, n)
    storage = SqliteStorage(data_dir, "NORMAL")
    await storage.open()
    try:
        return await _commit_all(storage, heap_id, user_id, n)
    finally:
        await storage.close()


async def _commit_all(storage: Any, heap_id: str, user_id: str, n: int) -> float:
    t0 = time.perf_counter()
    now = int(time.time() * 1000)
    for start in range(0, n, PAGE):
        batch = [block_change(i, heap_id, user_id) for i in range(start, min(n, start + PAGE))]
        await storage.commit_changes(batch, now)
    return time.perf_counter() - t0


def _pg_copy_all(dsn: str, heap_id: str, user_id: str, n: int) -> float:
    """The blocks of ``block_change`` as rows, by COPY on a plain asyncpg connection, change
    times after the heap's clock, the clock and the heap's usage counters moved past them
    (what a commit would leave for the feed to read; no update log, no search rows: delta
    reads neither)."""

    async def copy() -> float:
        import asyncpg

        conn = await asyncpg.connect(dsn)
        try:
            t0 = time.perf_counter()
            async with conn.transaction():
                clock = await conn.fetchval("SELECT clock FROM heaps WHERE id=$1", heap_id)
                rows = []
                for i in range(n):
                    b = block_change(i, heap_id, user_id)
                    p = b.projection
                    at = clock + 1 + i
                    rows.append(
                        (b.block_id, heap_id, p.type, p.title, p.text, at, user_id, at, b"\x00")
                    )
                columns = [
                    "id",
                    "heap_id",
                    "type",
                    "title",
                    "text",
                    "created_at",
                    "created_by",
                    "updated_at",
                    "state_vector",
                ]
                # the usage trigger updates the heap row once per block: within one transaction
                # each update walks the row's versions so far, quadratic in the rows (100k: many
                # minutes); off for the COPY, its counts set once below
                await conn.execute("ALTER TABLE blocks DISABLE TRIGGER blocks_usage_insert")
                await conn.copy_records_to_table("blocks", records=rows, columns=columns)
                await conn.execute("ALTER TABLE blocks ENABLE TRIGGER blocks_usage_insert")
                await conn.execute(
                    "UPDATE heaps SET clock=$1, block_count=block_count + $2 WHERE id=$3",  # size 0
                    clock + n,
                    n,
                    heap_id,
                )
            await conn.execute("VACUUM ANALYZE blocks")  # as autovacuum would: index-only ends
            return time.perf_counter() - t0
        finally:
            await conn.close()

    return asyncio.run(copy())


def thin_walk(port: int, token: str, heap_id: str) -> tuple[float, int, int]:
    """The walk through the thinnest client: HTTP/1.1 by hand on one keep-alive socket, each
    page decoded with orjson (blocking: run in a thread)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stream = sock.makefile("rb")
    since, pages, blocks = 0, 0, 0
    t0 = time.perf_counter()
    try:
        while True:
            sock.sendall(
                f"GET /api/sync/delta?workspace_id={heap_id}&since={since}&limit={PAGE} "
                f"HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {token}\r\n\r\n".encode()
            )
            status = stream.readline()
            assert status.split()[1] == b"200", status
            length = 0
            while (line := stream.readline()) != b"\r\n":
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            body = orjson.loads(stream.read(length))
            pages += 1
            blocks += len(body["changed_blocks"])
            since = body["server_time"]
            if not body["has_more"]:
                return time.perf_counter() - t0, pages, blocks
    finally:
        stream.close()
        sock.close()


async def server_walk(client: httpx.AsyncClient, heap_id: str) -> tuple[float, int, int]:
    since, pages, blocks = 0, 0, 0
    t0 = time.perf_counter()
    while True:
        r = await client.get(
            "/api/sync/delta", params={"workspace_id": heap_id, "since": since, "limit": PAGE}
        )
        body = r.json()
        pages += 1
        blocks += len(body["changed_blocks"])
        since = body["server_time"]
        if not body["has_more"]:
            return time.perf_counter() - t0, pages, blocks


def _page_body(rows: Sequence[Sequence[Any]], since: Any, decode: bool = False) -> dict[str, Any]:
    """What the server answers for one page (``PAGE + 1`` rows asked), encoded as it would
    be: the anchor pays the same shaping and JSON the route does; with ``decode``, also
    what a client pays to read it (``json.loads``, as httpx's ``r.json()``)."""
    has_more = len(rows) > PAGE
    rows = rows[:PAGE]
    body = {
        "success": True,
        "changed_blocks": [
            {
                "block_id": r[0],
                "updated_at": r[1],
                "sync_version": r[2],
                "type": r[3],
                "title": r[4],
                "deleted_at": r[5],
            }
            for r in rows
        ],
        "deleted_blocks": [],
        "server_time": rows[-1][1] if rows else since,
        "has_more": has_more,
    }
    data = json.dumps(body).encode()
    if decode:
        json.loads(data)
    return body


def raw_walk(db: Path, heap_id: str, decode: bool = False) -> tuple[float, int, int]:
    conn = sqlite3.connect(db)
    since, pages, blocks = 0, 0, 0
    t0 = time.perf_counter()
    while True:
        rows = conn.execute(
            f"SELECT {DELTA_FIELDS} FROM blocks WHERE heap_id=? AND updated_at > ? "
            "ORDER BY updated_at, id LIMIT ?",
            (heap_id, since, PAGE + 1),
        ).fetchall()
        body = _page_body(rows, since, decode)
        has_more = body["has_more"]
        pages += 1
        blocks += len(body["changed_blocks"])
        since = body["server_time"]
        if not has_more:
            conn.close()
            return time.perf_counter() - t0, pages, blocks


async def _pg_walk(dsn: str, heap_id: str, decode: bool) -> tuple[float, int, int]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    backend = conn.get_server_pid()
    since, pages, blocks = 0, 0, 0
    t0, cpu0 = time.perf_counter(), proc_cpu_s(backend)
    try:
        while True:
            rows = await conn.fetch(
                f"SELECT {DELTA_FIELDS} FROM blocks WHERE heap_id=$1 AND updated_at > $2 "
                'ORDER BY updated_at, id COLLATE "C" LIMIT $3',
                heap_id,
                since,
                PAGE + 1,
            )
            body = _page_body(rows, since, decode)
            has_more = body["has_more"]
            pages += 1
            blocks += len(body["changed_blocks"])
            since = body["server_time"]
            if not has_more:
                ANCHOR_DB_CPU.append(proc_cpu_s(backend) - cpu0)
                return time.perf_counter() - t0, pages, blocks
    finally:
        await conn.close()


ANCHOR_DB_CPU: list[float] = []  # the anchor's backend, seconds of CPU per walk (its last)


async def _backends_cpu(dsn: str) -> dict[int, float]:
    """CPU seconds so far of every backend of the database but the asking one (the server's
    connections), by pid: the cluster must run on this machine (``/proc``)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        pids = await conn.fetch(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    return {int(r[0]): proc_cpu_s(int(r[0])) for r in pids}


def backends_cpu(dsn: str) -> dict[int, float]:
    return asyncio.run(_backends_cpu(dsn)) if dsn else {}


def raw_pg_walk(dsn: str, heap_id: str, decode: bool = False) -> tuple[float, int, int]:
    """The anchor on PostgreSQL: a plain asyncpg connection (own event loop, own thread)."""
    return asyncio.run(_pg_walk(dsn, heap_id, decode))


def raw_walk_before(db: Path, heap_id: str) -> tuple[float, int, int]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    since, pages, blocks = 0, 0, 0
    t0 = time.perf_counter()
    while True:
        rows = conn.execute(
            f"SELECT {OLD_COLUMNS} FROM blocks WHERE heap_id=? AND updated_at > ? "
            "ORDER BY updated_at LIMIT ?",
            (heap_id, since, PAGE + 1),
        ).fetchall()
        for r in rows:
            (json.loads(r["relations"]), json.loads(r["files"]), json.loads(r["apps"]))
        conn.execute(
            "SELECT COUNT(*) FROM blocks WHERE heap_id=? AND updated_at > ?", (heap_id, since)
        ).fetchone()
        has_more = len(rows) > PAGE
        rows = rows[:PAGE]
        pages += 1
        blocks += len(rows)
        since = rows[-1]["updated_at"] if rows else since
        if not has_more:
            conn.close()
            return time.perf_counter() - t0, pages, blocks


async def run(server: Server, data_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    async with HeaperClient(server.url, KeyPair.generate(), timeout=300) as client:
        await client.login()
        me = (await client.post("/api/me")).json()
        user_id = me.get("user", me).get("id") or me["user_id"]
        heap = (await client.post("/api/heap/add", json={"name": "Delta"})).json()["heap"]
        heap_id = heap["id"]
        how = "by COPY" if args.database_url else "through storage"
        log(f"populating {args.blocks} blocks {how}")
        populate_s = await populate(data_dir, heap_id, user_id, args.blocks, args.database_url)
        log(f"populated in {populate_s:.1f}s")
        headers = {"Authorization": f"Bearer {client.access_token}"}
    db = data_dir / DB_FILE
    out: dict[str, Any] = {
        "engine": "postgres" if args.database_url else "sqlite",
        "blocks": args.blocks,
        "page": PAGE,
        "populate_s": round(populate_s, 1),
    }
    names = ("server_walk", "server_walk_thin", "raw_walk", "raw_walk_decoded")
    times: dict[str, list[float]] = {name: [] for name in names}
    if not args.database_url:
        times["raw_walk_before"] = []
    cpu: dict[str, list[float]] = {"server_walk": [], "server_walk_thin": []}
    db_cpu: dict[str, list[float]] = {"server_walk_thin": [], "raw_walk": []}
    anchor_cpu: list[float] = []
    client_cpu: list[float] = []
    raw: Callable[[Any, str, bool], tuple[float, int, int]] = (
        raw_pg_walk if args.database_url else raw_walk
    )
    anchor_on: str | Path = args.database_url or db
    token = headers["Authorization"].split()[1]
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=300) as http:
        await server_walk(http, heap_id)  # warm-up: caches, the page cache of the file
        for _ in range(args.runs):
            c0, own0 = proc_cpu_s(server.pid), time.process_time()
            s, pages, blocks = await server_walk(http, heap_id)
            cpu["server_walk"].append(proc_cpu_s(server.pid) - c0)
            client_cpu.append(time.process_time() - own0)
            times["server_walk"].append(s)
            assert blocks == args.blocks + 1, (blocks, args.blocks)  # and the root block
            out["pages"] = pages
            db0 = await trio.to_thread.run_sync(backends_cpu, args.database_url)
            c0 = proc_cpu_s(server.pid)
            thin = await trio.to_thread.run_sync(thin_walk, server.port, token, heap_id)
            cpu["server_walk_thin"].append(proc_cpu_s(server.pid) - c0)
            db1 = await trio.to_thread.run_sync(backends_cpu, args.database_url)
            db_cpu["server_walk_thin"].append(sum(v - db0.get(k, 0.0) for k, v in db1.items()))
            assert thin[1:] == (pages, blocks), thin
            times["server_walk_thin"].append(thin[0])
            for name, decode in (("raw_walk", False), ("raw_walk_decoded", True)):
                own0 = time.process_time()  # this process does nothing else meanwhile
                walked = await trio.to_thread.run_sync(raw, anchor_on, heap_id, decode)
                if name == "raw_walk":
                    anchor_cpu.append(time.process_time() - own0)
                assert walked[1:] == (pages, blocks), walked
                times[name].append(walked[0])
            if not args.database_url:
                s, _, _ = await trio.to_thread.run_sync(raw_walk_before, db, heap_id)
                times["raw_walk_before"].append(s)
    for k, v in times.items():
        out[k] = {"median_s": round(statistics.median(v), 3), "runs_s": [round(x, 3) for x in v]}
    for k, v in cpu.items():
        out[k]["server_cpu_s"] = round(statistics.median(v), 3)
        out[k]["server_cpu_ms_per_page"] = round(1000 * statistics.median(v) / out["pages"], 2)
    out["raw_walk"]["client_cpu_ms_per_page"] = round(
        1000 * statistics.median(anchor_cpu) / out["pages"], 2
    )
    if args.database_url:  # the backends' CPU: the server's connections, the anchor's one
        db_cpu["raw_walk"] = ANCHOR_DB_CPU[0::2]  # [1::2]: raw_walk_decoded's
        for k, v in db_cpu.items():
            out[k]["database_cpu_ms_per_page"] = round(
                1000 * statistics.median(v) / out["pages"], 2
            )
    # httpx and json.loads in this process: part of the walk's wall time, not the server's
    out["server_walk"]["client_cpu_s"] = round(statistics.median(client_cpu), 3)
    walk, thin = out["server_walk"]["median_s"], out["server_walk_thin"]["median_s"]
    anchor, decoded = out["raw_walk"]["median_s"], out["raw_walk_decoded"]["median_s"]
    via = "asyncpg" if args.database_url else "sqlite3"
    out["anchor"] = f"raw_walk: plain {via} walk of the same pages, same query, json.dumps"
    out["ratios"] = {
        "server_walk_thin_vs_raw_walk": round(thin / anchor, 2),  # the goal's reading
        "server_walk_vs_raw_walk_decoded": round(walk / decoded, 2),
        "server_walk_vs_raw_walk": round(walk / anchor, 2),
    }
    if "raw_walk_before" in out:
        before = out["raw_walk_before"]["median_s"]
        out["ratios"]["raw_walk_before_vs_raw_walk"] = round(before / anchor, 2)
    out["goals"] = {
        "server_walk_under_1_5_s": walk < 1.5,
        "ratio_under_1_5": thin / anchor < 1.5,  # server_walk_thin_vs_raw_walk
    }
    return out


async def _admin_sql(dsn: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, default=100_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--database-url", default="")
    p.add_argument(
        "--tree",
        type=Path,
        default=ROOT,
        help="the checkout whose server is measured (default this one): run twice, "
        "alternating, to compare two trees against anchors of the same hour",
    )
    args = p.parse_args(argv)
    stop_servers_on_sigterm()  # a SIGTERM still stops the servers
    if (args.engine == "postgres") != bool(args.database_url):
        p.error("--database-url goes with --engine postgres, and only with it")
    cluster = args.database_url
    if cluster:  # a scratch database of its own on that cluster
        name = "heaper_bench_delta_" + uuid.uuid4().hex[:10]
        asyncio.run(_admin_sql(cluster, f"CREATE DATABASE {name}"))
        args.database_url = cluster.rsplit("/", 1)[0] + "/" + name
    try:
        with tempfile.TemporaryDirectory(prefix="heaper-bench-delta-") as tmp:
            workdir = Path(tmp)
            server = start_heaper(workdir, args.database_url, tree=args.tree.resolve())
            try:
                server.wait_ready()
                out = trio.run(run, server, workdir / "data", args)
            finally:
                server.stop()
    finally:
        if cluster:
            asyncio.run(_admin_sql(cluster, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    out["tree"] = str(args.tree.resolve())
    out["machine"] = {"nproc": os.cpu_count(), "loadavg_at_end": os.getloadavg()}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
