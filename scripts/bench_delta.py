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
  ``server_time`` back until ``has_more`` is false (httpx, one keep-alive connection);
* ``raw_walk`` (the anchor): a plain ``sqlite3`` connection on the same file walks the same
  pages with the same query the server runs (the delta columns, ``updated_at > ? ORDER BY
  updated_at, id LIMIT 1001``) and ``json.dumps`` each page in the answer's shape: what the
  database plus the answer's encoding cost, without HTTP and the server;
* ``raw_walk_before``: the queries the server ran before issue 12 (every column, three JSON
  columns decoded, ``COUNT(*)`` of what follows on every page), for context.

With ``--engine postgres --database-url URL`` the server runs on a scratch database made on
that cluster (dropped afterwards), the blocks are committed through the PostgreSQL storage, and
the anchor is a plain asyncpg connection walking the same pages with the server's query
(``raw_walk_before`` is not measured there).

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
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import trio
from bench_http import Server, free_port, log, proc_cpu_s

from heaper_trio.aio import open_asyncio_loop
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
    workdir: Path, database_url: str = "", extra_env: dict[str, str] | None = None
) -> Server:
    data_dir = workdir / "data"
    data_dir.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEAPER_")}
    env.update(HEAPER_AUTH_RATE_LIMIT="100000", HEAPER_LOG_LEVEL="warning")
    if database_url:
        env.update(HEAPER_DATABASE_URL=database_url, HEAPER_AUTO_APPROVE="true")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
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
        from heaper_trio.services.container import open_storage
        from heaper_trio.settings import load_settings

        env = {"HEAPER_DATA_DIR": str(data_dir), "HEAPER_DATABASE_URL": database_url}
        async with open_asyncio_loop(), open_storage(load_settings(environ=env)) as pg:
            return await _commit_all(pg, heap_id, user_id, n)
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


def _page_body(rows: Sequence[Sequence[Any]], since: Any) -> dict[str, Any]:
    """What the server answers for one page (``PAGE + 1`` rows asked), encoded as it would
    be: the anchor pays the same shaping and JSON the route does."""
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
    json.dumps(body).encode()
    return body


def raw_walk(db: Path, heap_id: str) -> tuple[float, int, int]:
    conn = sqlite3.connect(db)
    since, pages, blocks = 0, 0, 0
    t0 = time.perf_counter()
    while True:
        rows = conn.execute(
            f"SELECT {DELTA_FIELDS} FROM blocks WHERE heap_id=? AND updated_at > ? "
            "ORDER BY updated_at, id LIMIT ?",
            (heap_id, since, PAGE + 1),
        ).fetchall()
        body = _page_body(rows, since)
        has_more = body["has_more"]
        pages += 1
        blocks += len(body["changed_blocks"])
        since = body["server_time"]
        if not has_more:
            conn.close()
            return time.perf_counter() - t0, pages, blocks


async def _pg_walk(dsn: str, heap_id: str) -> tuple[float, int, int]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    since, pages, blocks = 0, 0, 0
    t0 = time.perf_counter()
    try:
        while True:
            rows = await conn.fetch(
                f"SELECT {DELTA_FIELDS} FROM blocks WHERE heap_id=$1 AND updated_at > $2 "
                'ORDER BY updated_at, id COLLATE "C" LIMIT $3',
                heap_id,
                since,
                PAGE + 1,
            )
            body = _page_body(rows, since)
            has_more = body["has_more"]
            pages += 1
            blocks += len(body["changed_blocks"])
            since = body["server_time"]
            if not has_more:
                return time.perf_counter() - t0, pages, blocks
    finally:
        await conn.close()


def raw_pg_walk(dsn: str, heap_id: str) -> tuple[float, int, int]:
    """The anchor on PostgreSQL: a plain asyncpg connection (own event loop, own thread)."""
    return asyncio.run(_pg_walk(dsn, heap_id))


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
        log(f"populating {args.blocks} blocks through storage")
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
    times: dict[str, list[float]] = {"server_walk": [], "raw_walk": []}
    if not args.database_url:
        times["raw_walk_before"] = []
    cpu: list[float] = []
    client_cpu: list[float] = []
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=300) as http:
        await server_walk(http, heap_id)  # warm-up: caches, the page cache of the file
        for _ in range(args.runs):
            c0, own0 = proc_cpu_s(server.pid), time.process_time()
            s, pages, blocks = await server_walk(http, heap_id)
            cpu.append(proc_cpu_s(server.pid) - c0)
            client_cpu.append(time.process_time() - own0)
            times["server_walk"].append(s)
            assert blocks == args.blocks + 1, (blocks, args.blocks)  # and the root block
            out["pages"] = pages
            if args.database_url:
                raw = await trio.to_thread.run_sync(raw_pg_walk, args.database_url, heap_id)
            else:
                raw = await trio.to_thread.run_sync(raw_walk, db, heap_id)
            assert raw[1:] == (pages, blocks), raw
            times["raw_walk"].append(raw[0])
            if not args.database_url:
                s, _, _ = await trio.to_thread.run_sync(raw_walk_before, db, heap_id)
                times["raw_walk_before"].append(s)
    for k, v in times.items():
        out[k] = {"median_s": round(statistics.median(v), 3), "runs_s": [round(x, 3) for x in v]}
    out["server_walk"]["server_cpu_s"] = round(statistics.median(cpu), 3)
    # httpx and json.loads in this process: part of the walk's wall time, not the server's
    out["server_walk"]["client_cpu_s"] = round(statistics.median(client_cpu), 3)
    walk, anchor = out["server_walk"]["median_s"], out["raw_walk"]["median_s"]
    client = "asyncpg" if args.database_url else "sqlite3"
    out["anchor"] = f"raw_walk: plain {client} walk of the same pages, same query, json.dumps"
    out["ratios"] = {"server_walk_vs_raw_walk": round(walk / anchor, 2)}
    if "raw_walk_before" in out:
        before = out["raw_walk_before"]["median_s"]
        out["ratios"]["raw_walk_before_vs_raw_walk"] = round(before / anchor, 2)
    out["goals"] = {"server_walk_under_1_5_s": walk < 1.5, "ratio_under_1_5": walk / anchor < 1.5}
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
    args = p.parse_args(argv)
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
            server = start_heaper(workdir, args.database_url)
            try:
                server.wait_ready()
                out = trio.run(run, server, workdir / "data", args)
            finally:
                server.stop()
    finally:
        if cluster:
            asyncio.run(_admin_sql(cluster, f"DROP DATABASE IF EXISTS {name}"))
    out["machine"] = {"nproc": os.cpu_count(), "loadavg_at_end": os.getloadavg()}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
