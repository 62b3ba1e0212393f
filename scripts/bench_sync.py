#!/usr/bin/env python3
"""Sync benchmark of a real heaper_trio server: durable push throughput, pull and delta latency
on big heaps, the in-process CRDT cost per update, against a raw-insert baseline.

What it measures, one phase after another (never in parallel):

* ``projection``: in this process, no server: ``heaper_trio.crdt.BlockDocument.apply`` then
  ``.project()`` for a typical block update (a word typed into a paragraph of a note), µs per
  update; also ``BlockDocument.load`` from a snapshot plus a log of 0/50/99 updates, which a
  push pays before its apply (the server rebuilds the document from storage on every push).
* ``baseline``: raw inserts into the same engine, alone on the machine (no server running):
  SQLite: a plain ``sqlite3`` connection in WAL with the server's ``synchronous`` setting,
  ``executemany`` of blobs as large as the typical update, committed one row per transaction
  and 100 rows per transaction, in a table of a temporary database file on the same filesystem
  as the server's data dir. PostgreSQL: ``asyncpg`` ``executemany`` the same way into a scratch
  table of the server's database, dropped afterwards. The scratch table is a regular (logged)
  table, not ``CREATE TEMP TABLE``: PostgreSQL does not WAL-log temporary tables, so their
  commits never wait for a WAL flush, and the baseline would not be durable as pushes are.
* ``push_throughput`` (durable: a push answers only after its commit), updates/s acknowledged
  with status ok/created: ``single_sequential`` (one block per push, one request at a time),
  ``single_concurrency16`` (16 concurrent streams, each on its own blocks) and
  ``batched_100`` (100 blocks per push, one request at a time). Every update is a word typed
  into an existing block of the stream's pool (created before the warm-up, not measured).
  Also p50/p99 latency per request and the server process's CPU per update.
* ``history``: ``bench_history.py`` with 30 days of 30 updates: bytes kept per update (as
  pushed and thinned) and the load time of that block against one with the same document and
  no history (their ratio should be ~1: history is not read on load).
* ``heaps``: a heap of 10,000 blocks (``--large``: and one of 100,000) populated with batched
  pushes of 1,000 blocks (``populate_s``), then latency p50/p99 of pull (one random block
  from nothing; 100 random blocks), delta (the first page since 0; a tail of ~10 changes) and
  one full delta walk (every page since 0).

Server: ``python -m heaper_trio --port P --data-dir D`` as a subprocess (with
``HEAPER_AUTH_RATE_LIMIT=100000 HEAPER_LOG_LEVEL=warning HEAPER_MAX_SYNC_BATCH=1000``; with
PostgreSQL also ``--database-url`` and ``HEAPER_AUTO_APPROVE=true``). Load generator:
``heaper_trio.client.HeaperClient`` under trio in this process, closed loop; it builds each
update with pycrdt, so its own CPU share is reported (``loadgen_cpu_util``): near 1.0 it is
the bottleneck. Server CPU comes from ``/proc/PID/stat``; with PostgreSQL the database's own
processes are not counted in it.

Why the baseline: the absolute numbers depend on the machine, its disk (fsync latency above
all: every acknowledged push waits for one), its load and the load generator. The raw inserts
into the same engine, in the same run, on the same disk and with the same durability setting,
are the ceiling for "write a few bytes durably", so the ``ratios`` (server updates/s over
baseline rows/s for the same batch size) are what is comparable between runs and machines.
A server ratio above 1 for concurrent single pushes is group commit at work (one fsync for
many requests), which the sequential baseline cannot do.

Run (prints ONE JSON object on stdout; progress goes to stderr)::

    ./.venv/bin/python scripts/bench_sync.py                      # ~1-2 min, 10k-block heap
    ./.venv/bin/python scripts/bench_sync.py --duration 3 --large  # also a 100k-block heap
    ./.venv/bin/python scripts/bench_sync.py --engine postgres \\
        --database-url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import random
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_history
import httpx
import pycrdt
import trio
from bench_http import Server, free_port, log, proc_cpu_s

from heaper_trio.client import HeaperClient, KeyPair
from heaper_trio.settings import BY_NAME

LOAD_GENERATOR = (
    "heaper_trio.client.HeaperClient (httpx) under trio, in the benchmark "
    "process, closed loop; updates built with pycrdt in the same process"
)
SERVER_ENV = {
    "HEAPER_AUTH_RATE_LIMIT": "100000",
    "HEAPER_LOG_LEVEL": "warning",
    "HEAPER_MAX_SYNC_BATCH": "1000",
}
SINGLE_POOL = 25  # blocks per single-push stream
BATCH = 100  # blocks per batched push
BATCH_POOL = 1000  # blocks of the batched stream
POPULATE_BATCH = 1000  # blocks per push while populating a big heap
POPULATE_STREAMS = 2  # concurrent populating pushes: building updates overlaps the server
CONCURRENCY = 16
SAMPLES = {
    "pull_one": 200,
    "pull_100": 30,
    "delta_first_page": 30,
    "delta_tail": 200,
    "delta_full_walk": 3,
}
WORDS = (
    "note",
    "idea",
    "heap",
    "block",
    "sync",
    "draft",
    "todo",
    "link",
    "later",
    "read",
    "tomorrow",
    "meeting",
    "paper",
    "garden",
    "recipe",
    "quote",
    "book",
    "plan",
)


# -- workload: blocks as a client edits them --------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sentence(rnd: random.Random, words: int) -> str:
    return " ".join(rnd.choice(WORDS) for _ in range(words)).capitalize() + "."


class EditedBlock:
    """A client's copy of a block: a typical note (title, a few paragraphs, maybe a tag),
    then a user typing words at the end of its last paragraph."""

    def __init__(self, rnd: random.Random, paragraphs: int = 3, tag: str | None = None) -> None:
        self.id = str(uuid.uuid4())
        self.rnd = rnd
        self.doc: pycrdt.Doc[Any] = pycrdt.Doc()
        title = self.doc.get("title_v0", type=pycrdt.XmlFragment)
        content = self.doc.get("content_v0", type=pycrdt.XmlFragment)
        meta = self.doc.get("meta_v0", type=pycrdt.Map)
        relations = self.doc.get("relations_v1", type=pycrdt.Map)
        with self.doc.transaction():
            meta["type"] = "document"
            meta["created_at"] = 1_790_000_000_000
            t = pycrdt.XmlElement("paragraph")
            title.children.append(t)
            t.children.append(pycrdt.XmlText(sentence(rnd, 4)))
            for _ in range(paragraphs):
                p = pycrdt.XmlElement("paragraph")
                content.children.append(p)
                self.last = pycrdt.XmlText(sentence(rnd, 12))
                p.children.append(self.last)
            if tag:
                relations[tag] = pycrdt.Map({"type": "tag"})
        self.synced = b"\x00"  # the empty state vector: the server has nothing yet

    def type_word(self) -> None:
        self.last.insert(len(self.last), " " + self.rnd.choice(WORDS))

    def take_update(self) -> bytes:
        """What the server lacks; from now on it counts as sent (the benchmark does not retry)."""
        update = self.doc.get_update(self.synced)
        self.synced = self.doc.get_state()
        return update

    def push_item(self, heap_id: str) -> dict[str, Any]:
        update = self.take_update()
        return {
            "block_id": self.id,
            "workspace_id": heap_id,
            "update": b64(update),
            "state_vector": b64(self.synced),
        }


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def ms_stats(seconds: list[float]) -> dict[str, Any]:
    return {
        "n": len(seconds),
        "p50_ms": round(pct(seconds, 50) * 1e3, 3),
        "p99_ms": round(pct(seconds, 99) * 1e3, 3),
        "max_ms": round(max(seconds) * 1e3, 3) if seconds else 0.0,
    }


# -- (c) projection cost, in process ----------------------------------------------------------


def projection_cost(n_updates: int = 1000) -> dict[str, Any]:
    from heaper_trio.crdt import BlockDocument

    rnd = random.Random(1)
    client = EditedBlock(rnd, paragraphs=8, tag="some-tag-block")
    base = client.take_update()
    updates = []
    for _ in range(n_updates):
        client.type_word()
        updates.append(client.take_update())
    doc = BlockDocument.load(None, [base])
    doc.project()
    apply_s, project_s = [], []
    for u in updates:
        t0 = time.perf_counter()
        assert doc.apply(u)
        t1 = time.perf_counter()
        doc.project()
        t2 = time.perf_counter()
        apply_s.append(t1 - t0)
        project_s.append(t2 - t1)
    both = [a + p for a, p in zip(apply_s, project_s)]

    # What a push pays before that: the document rebuilt from its snapshot and log.
    snapshot = BlockDocument.load(None, [base, *updates[:100]]).snapshot()
    load_us = {}
    for k in (0, 50, 99):
        reps = 50
        t0 = time.perf_counter()
        for _ in range(reps):
            BlockDocument.load(snapshot, updates[100 : 100 + k])
        load_us[f"snapshot_plus_{k}_updates"] = round((time.perf_counter() - t0) / reps * 1e6, 1)

    def us(xs: list[float]) -> dict[str, float]:
        return {
            "mean": round(statistics.fmean(xs) * 1e6, 1),
            "p50": round(pct(xs, 50) * 1e6, 1),
            "p99": round(pct(xs, 99) * 1e6, 1),
        }

    return {
        "updates": n_updates,
        "update": "one word typed at the end of the last paragraph of a note",
        "update_bytes_mean": round(statistics.fmean(len(u) for u in updates), 1),
        "doc_bytes_first": len(base),
        "doc_bytes_last": doc.size,
        "apply_us": us(apply_s),
        "project_us": us(project_s),
        "apply_plus_project_us": us(both),
        "load_us": load_us,
    }


# -- (d) baselines ----------------------------------------------------------------------------


def sqlite_baseline(
    workdir: Path, blob_size: int, duration: float, synchronous: str
) -> dict[str, Any]:
    path = workdir / "baseline.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("CREATE TABLE raw (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        out: dict[str, Any] = {
            "engine": "sqlite",
            "journal_mode": mode,
            "synchronous": synchronous,
            "blob_bytes": blob_size,
            "what": "sqlite3 executemany into a table of a temporary "
            "database, one transaction per batch",
        }
        blob = os.urandom(blob_size)
        for batch in (1, 100):
            rows = [(blob,)] * batch
            latencies: list[float] = []
            t_start = time.perf_counter()
            deadline = t_start + duration
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                conn.execute("BEGIN")
                conn.executemany("INSERT INTO raw (data) VALUES (?)", rows)
                conn.execute("COMMIT")
                latencies.append(time.perf_counter() - t0)
            seconds = time.perf_counter() - t_start
            out[f"rows_{batch}_per_commit"] = {
                "rows_per_s": round(len(latencies) * batch / seconds, 1),
                "commits_per_s": round(len(latencies) / seconds, 1),
                **ms_stats(latencies),
            }
            log(
                f"baseline sqlite {batch} row(s)/commit: "
                f"{out[f'rows_{batch}_per_commit']['rows_per_s']} rows/s"
            )
        return out
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)


async def postgres_baseline(dsn: str, blob_size: int, duration: float) -> dict[str, Any]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    table = "bench_baseline_" + uuid.uuid4().hex[:12]
    try:
        out: dict[str, Any] = {
            "engine": "postgres",
            "blob_bytes": blob_size,
            "synchronous_commit": await conn.fetchval("SHOW synchronous_commit"),
            "fsync": await conn.fetchval("SHOW fsync"),
            "what": "asyncpg executemany into a scratch (logged, not TEMP) table of the same "
            "database, one transaction per batch; dropped afterwards",
        }
        await conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, data bytea NOT NULL)")
        blob = os.urandom(blob_size)
        for batch in (1, 100):
            rows = [(blob,)] * batch
            latencies: list[float] = []
            t_start = time.perf_counter()
            deadline = t_start + duration
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                async with conn.transaction():
                    await conn.executemany(f"INSERT INTO {table} (data) VALUES ($1)", rows)
                latencies.append(time.perf_counter() - t0)
            seconds = time.perf_counter() - t_start
            out[f"rows_{batch}_per_commit"] = {
                "rows_per_s": round(len(latencies) * batch / seconds, 1),
                "commits_per_s": round(len(latencies) / seconds, 1),
                **ms_stats(latencies),
            }
            log(
                f"baseline postgres {batch} row(s)/commit: "
                f"{out[f'rows_{batch}_per_commit']['rows_per_s']} rows/s"
            )
        return out
    finally:
        try:
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
        finally:
            await conn.close()


# -- the server -------------------------------------------------------------------------------


def start_heaper(workdir: Path, engine: str, database_url: str) -> Server:
    data_dir = workdir / "data"
    data_dir.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEAPER_")}
    env.update(SERVER_ENV)
    argv = [sys.executable, "-m", "heaper_trio", "--port", str(port), "--data-dir", str(data_dir)]
    if engine == "postgres":
        env["HEAPER_AUTO_APPROVE"] = "true"
        argv += ["--database-url", database_url]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return Server("heaper", argv, env, port, "/api/health", workdir)


Step = Callable[[int], Awaitable[tuple[int, Counter[str]]]]


class PushError(Exception):
    pass


async def push(client: HeaperClient, items: list[dict[str, Any]]) -> tuple[int, Counter[str]]:
    """One push; (acknowledged updates, statuses)."""
    r = await client.post("/api/sync/push", json={"blocks": items})
    if r.status_code != 200:
        raise PushError(f"HTTP {r.status_code} {r.text[:200]}")
    statuses = Counter(b["status"] for b in r.json()["blocks"])
    return statuses["ok"] + statuses["created"], statuses


async def closed_loop(
    step: Step, concurrency: int, duration: float, server_pid: int
) -> dict[str, Any]:
    """``concurrency`` workers call ``step(worker)`` back to back for ``duration`` seconds."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    acked = 0

    async def worker(w: int) -> None:
        nonlocal acked
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                n, st = await step(w)
            except (httpx.HTTPError, PushError) as e:
                errors[f"{type(e).__name__}: {str(e)[:80]}"] += 1
                continue
            latencies.append(time.perf_counter() - t0)
            acked += n
            statuses.update(st)

    cpu0, me0 = proc_cpu_s(server_pid), time.process_time()
    t_start = time.perf_counter()
    deadline = t_start + duration
    async with trio.open_nursery() as nursery:
        for w in range(concurrency):
            nursery.start_soon(worker, w)
    seconds = time.perf_counter() - t_start
    cpu, me = proc_cpu_s(server_pid) - cpu0, time.process_time() - me0
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "updates_acked": acked,
        "seconds": round(seconds, 3),
        "updates_per_s": round(acked / seconds, 1),
        "requests_per_s": round(len(latencies) / seconds, 1),
        **ms_stats(latencies),
        "server_cpu_us_per_update": round(cpu * 1e6 / acked, 1) if acked else None,
        "server_cpu_util": round(cpu / seconds, 3),
        "loadgen_cpu_util": round(me / seconds, 3),
        "statuses": dict(statuses),
        "errors": dict(errors),
    }


async def measure(
    name: str, step: Step, concurrency: int, args: argparse.Namespace, server: Server
) -> dict[str, Any]:
    if args.warmup > 0:
        log(f"{name}: warm-up {args.warmup}s")
        await closed_loop(step, concurrency, args.warmup, server.pid)
    log(f"{name}: measuring {args.duration}s at concurrency {concurrency}")
    result = await closed_loop(step, concurrency, args.duration, server.pid)
    log(
        f"{name}: {result['updates_per_s']} updates/s, p50 {result['p50_ms']} ms, "
        f"p99 {result['p99_ms']} ms, server {result['server_cpu_us_per_update']} µs CPU/update, "
        f"loadgen CPU {result['loadgen_cpu_util']}"
        + (f", errors {result['errors']}" if result["errors"] else "")
    )
    return result


async def create_all(client: HeaperClient, heap_id: str, blocks: list[EditedBlock]) -> None:
    """Create a stream's blocks before it is measured: the measure is of updates only."""
    for start in range(0, len(blocks), POPULATE_BATCH):
        _, statuses = await push(
            client, [b.push_item(heap_id) for b in blocks[start : start + POPULATE_BATCH]]
        )
        if set(statuses) != {"created"}:
            raise PushError(f"creating the benchmark's blocks: {dict(statuses)}")


async def throughput(
    client: HeaperClient, heap_id: str, args: argparse.Namespace, server: Server
) -> dict[str, Any]:
    rnd = random.Random(2)
    out: dict[str, Any] = {}

    def single_step(pools: list[list[EditedBlock]]) -> Step:
        turn = [0] * len(pools)

        async def step(w: int) -> tuple[int, Counter[str]]:
            block = pools[w][turn[w] % len(pools[w])]
            turn[w] += 1
            block.type_word()
            return await push(client, [block.push_item(heap_id)])

        return step

    pools = [[EditedBlock(rnd) for _ in range(SINGLE_POOL)]]
    await create_all(client, heap_id, pools[0])
    out["single_sequential"] = await measure(
        "single_sequential", single_step(pools), 1, args, server
    )
    pools = [[EditedBlock(rnd) for _ in range(SINGLE_POOL)] for _ in range(CONCURRENCY)]
    await create_all(client, heap_id, [b for pool in pools for b in pool])
    out[f"single_concurrency{CONCURRENCY}"] = await measure(
        f"single_concurrency{CONCURRENCY}", single_step(pools), CONCURRENCY, args, server
    )

    batch_pool = [EditedBlock(rnd) for _ in range(BATCH_POOL)]
    await create_all(client, heap_id, batch_pool)
    cursor = [0]

    async def batched(w: int) -> tuple[int, Counter[str]]:
        start = cursor[0]
        cursor[0] = (start + BATCH) % BATCH_POOL
        items = []
        for block in batch_pool[start : start + BATCH]:
            block.type_word()
            items.append(block.push_item(heap_id))
        return await push(client, items)

    out[f"batched_{BATCH}"] = await measure(f"batched_{BATCH}", batched, 1, args, server)
    out[f"batched_{BATCH}"]["blocks_per_push"] = BATCH
    return out


async def populate(
    client: HeaperClient, heap_id: str, n_blocks: int, server: Server
) -> tuple[list[str], dict[str, Any]]:
    """n_blocks new notes (one in ten tagged) in batched pushes; returns their ids."""
    rnd = random.Random(3)
    ids: list[str] = []
    next_start = [0]
    errors: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    tag = EditedBlock(rnd)
    tag.doc.get("meta_v0", type=pycrdt.Map)["type"] = "tag"
    await push(client, [tag.push_item(heap_id)])

    async def stream() -> None:
        while next_start[0] < n_blocks:
            count = min(POPULATE_BATCH, n_blocks - next_start[0])
            next_start[0] += count
            blocks = [
                EditedBlock(rnd, tag=tag.id if rnd.random() < 0.1 else None) for _ in range(count)
            ]
            ids.extend(b.id for b in blocks)
            try:
                _, st = await push(client, [b.push_item(heap_id) for b in blocks])
                statuses.update(st)
            except (httpx.HTTPError, PushError) as e:
                errors[f"{type(e).__name__}: {str(e)[:80]}"] += 1

    cpu0 = proc_cpu_s(server.pid)
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(POPULATE_STREAMS):
            nursery.start_soon(stream)
    seconds = time.perf_counter() - t0
    cpu = proc_cpu_s(server.pid) - cpu0
    info = {
        "blocks": n_blocks,
        "populate_s": round(seconds, 2),
        "populate_blocks_per_s": round(n_blocks / seconds, 1),
        "blocks_per_push": POPULATE_BATCH,
        "concurrent_pushes": POPULATE_STREAMS,
        "server_cpu_us_per_block": round(cpu * 1e6 / n_blocks, 1),
        "statuses": dict(statuses),
        "errors": dict(errors),
    }
    log(f"populated {n_blocks} blocks in {seconds:.1f}s ({info['populate_blocks_per_s']}/s)")
    return ids, info


async def latencies(client: HeaperClient, heap_id: str, ids: list[str]) -> dict[str, Any]:
    rnd = random.Random(4)
    out: dict[str, Any] = {}
    problems: Counter[str] = Counter()

    async def timed(
        n: int,
        call: Callable[[], Awaitable[httpx.Response]],
        check: Callable[[dict[str, Any]], bool],
    ) -> list[float]:
        xs = []
        for _ in range(n):
            t0 = time.perf_counter()
            r = await call()
            xs.append(time.perf_counter() - t0)
            if r.status_code != 200 or not check(r.json()):
                problems[f"HTTP {r.status_code} {r.text[:80]}"] += 1
        return xs

    def pull(k: int) -> Callable[[], Awaitable[httpx.Response]]:
        return lambda: client.post(
            "/api/sync/pull", json={"blocks": [{"block_id": b} for b in rnd.sample(ids, k)]}
        )

    def all_ok(body: dict[str, Any]) -> bool:
        return all(b["status"] == "ok" for b in body["blocks"])

    def delta(since: int) -> Callable[[], Awaitable[httpx.Response]]:
        return lambda: client.get(
            "/api/sync/delta", params={"workspace_id": heap_id, "since": since}
        )

    out["pull_one"] = ms_stats(await timed(SAMPLES["pull_one"], pull(1), all_ok))
    out["pull_one"]["what"] = "one random block, no state vector (its full state)"
    out["pull_100"] = ms_stats(await timed(SAMPLES["pull_100"], pull(100), all_ok))
    out["pull_100"]["what"] = "100 random blocks, no state vectors"
    out["delta_first_page"] = ms_stats(
        await timed(
            SAMPLES["delta_first_page"], delta(0), lambda b: len(b["changed_blocks"]) == 1000
        )
    )
    out["delta_first_page"]["what"] = "since=0: the first page of 1000 changed blocks"

    walks: list[Any] = []
    recent: list[Any] = []
    pages = 0
    for _ in range(SAMPLES["delta_full_walk"]):
        since, pages = 0, 0
        t0 = time.perf_counter()
        while True:
            r = await delta(since)()
            body = r.json()
            pages += 1
            recent = (recent + body["changed_blocks"])[-10:]
            since = body["server_time"]
            if not body["has_more"]:
                break
        walks.append(time.perf_counter() - t0)
    out["delta_full_walk"] = {
        **ms_stats(walks),
        "pages": pages,
        "what": "every page since 0, until has_more is false",
    }

    assert len(recent) == 10, recent
    tail_since = recent[0]["updated_at"] - 1
    out["delta_tail"] = ms_stats(
        await timed(
            SAMPLES["delta_tail"], delta(tail_since), lambda b: len(b["changed_blocks"]) == 10
        )
    )
    out["delta_tail"]["what"] = "the last 10 changes of the heap"
    out["problems"] = dict(problems)
    for k in ("pull_one", "pull_100", "delta_first_page", "delta_tail", "delta_full_walk"):
        log(f"  {k}: p50 {out[k]['p50_ms']} ms, p99 {out[k]['p99_ms']} ms")
    return out


async def against_server(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    async with HeaperClient(server.url, KeyPair.generate(), timeout=300) as client:
        await client.login()
        out: dict[str, Any] = {}
        heap = (await client.post("/api/heap/add", json={"name": "Throughput"})).json()["heap"]
        out["push_throughput"] = await throughput(client, heap["id"], args, server)
        out["heaps"] = {}
        for n in (10_000, 100_000) if args.large else (10_000,):
            heap = (await client.post("/api/heap/add", json={"name": f"Heap {n}"})).json()["heap"]
            ids, info = await populate(client, heap["id"], n, server)
            log(f"heap of {n}: latencies")
            out["heaps"][str(n)] = {**info, **(await latencies(client, heap["id"], ids))}
        return out


# -- orchestration ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--duration",
        type=float,
        default=5.0,
        help="measured seconds per throughput measure and per baseline batch size",
    )
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each")
    p.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--database-url", default="", help="postgresql:// URL (--engine postgres)")
    p.add_argument(
        "--large",
        action="store_true",
        help="also populate and measure a heap of 100,000 blocks (takes a while)",
    )
    args = p.parse_args(argv)
    if args.engine == "postgres" and not args.database_url:
        p.error("--engine postgres needs --database-url")
    if args.engine == "sqlite" and args.database_url:
        p.error("--database-url only goes with --engine postgres")
    if args.duration <= 0 or args.warmup < 0:
        p.error("--duration must be > 0 and --warmup >= 0")

    # SIGTERM to the benchmark still runs the finally below, so no server is left behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    out: dict[str, Any] = {"load_generator": LOAD_GENERATOR, "engine": args.engine}
    synchronous = str(BY_NAME["sqlite_synchronous"].default)

    log("projection cost (in process)")
    out["projection"] = projection_cost()
    blob_size = round(out["projection"]["update_bytes_mean"])

    server: Server | None = None
    with tempfile.TemporaryDirectory(prefix="heaper-bench-sync-") as tmp:
        workdir = Path(tmp)
        try:
            log("baseline: raw inserts, no server running")
            if args.engine == "sqlite":
                out["baseline"] = sqlite_baseline(workdir, blob_size, args.duration, synchronous)
            else:
                out["baseline"] = asyncio.run(
                    postgres_baseline(args.database_url, blob_size, args.duration)
                )

            server = start_heaper(workdir, args.engine, args.database_url)
            startup_s = server.wait_ready()
            log(f"heaper_trio up on {server.url} (pid {server.pid}) in {startup_s:.2f}s")
            out.update(trio.run(against_server, server, args))
            if server.proc.poll() is not None:
                raise RuntimeError(f"the server died:\n{server.log_tail(20)}")
            rc = server.stop()
            lines = [ln for ln in server.log_lines() if ln.strip()]
            out["server_info"] = {
                "engine": args.engine,
                "startup_s": round(startup_s, 3),
                "exit_code": rc,
                "env": SERVER_ENV,
                "sqlite_synchronous": synchronous if args.engine == "sqlite" else None,
                "log": {
                    "lines": len(lines),
                    "tracebacks": sum("Traceback" in ln for ln in lines),
                    "tail": lines[-8:],
                },
            }
        finally:
            if server is not None:
                try:
                    server.stop()
                except Exception as e:
                    log(f"stopping the server: {e!r}")

    # History (issue 10): bytes kept per update, load with a month of history vs none.
    log("history: a month of edits to one block, in process (scripts/bench_history.py)")
    out["history"] = bench_history.run(args.engine, args.database_url, days=30, per_day=30)
    base1 = out["baseline"]["rows_1_per_commit"]["rows_per_s"]
    base100 = out["baseline"]["rows_100_per_commit"]["rows_per_s"]
    tp = out["push_throughput"]

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 3) if b else None

    out["ratios"] = {
        "single_sequential_vs_baseline_1_row_commits": ratio(
            tp["single_sequential"]["updates_per_s"], base1
        ),
        f"single_concurrency{CONCURRENCY}_vs_baseline_1_row_commits": ratio(
            tp[f"single_concurrency{CONCURRENCY}"]["updates_per_s"], base1
        ),
        f"batched_{BATCH}_vs_baseline_100_row_commits": ratio(
            tp[f"batched_{BATCH}"]["updates_per_s"], base100
        ),
    }
    notes = []
    for name, r in tp.items():
        if r["errors"]:
            notes.append(f"{name}: errors {r['errors']}")
        if set(r["statuses"]) - {"ok", "created"}:
            notes.append(f"{name}: statuses {r['statuses']}")
        if r["loadgen_cpu_util"] >= 0.85:
            notes.append(
                f"{name}: the load generator used {r['loadgen_cpu_util']:.0%} of a "
                f"core; it may be the limit"
            )
    for n, h in out["heaps"].items():
        if h["errors"] or h["problems"]:
            notes.append(f"heap {n}: errors {h['errors']} problems {h['problems']}")
    if out["server_info"]["log"]["lines"]:
        notes.append("heaper_trio wrote to stderr; see server_info.log")
    if args.engine == "postgres":
        notes.append("server_cpu_* counts the heaper_trio process only, not PostgreSQL's")
    out["notes"] = notes
    from importlib.metadata import version

    out["machine"] = {
        "nproc": os.cpu_count(),
        "nproc_usable": len(os.sched_getaffinity(0)),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "large": args.large,
        "total_run_s": round(time.monotonic() - started, 1),
        "versions": {
            pkg: version(pkg)
            for pkg in (
                "hypercorn",
                "trio",
                "quart-trio",
                "httpx",
                "pycrdt",
                "asyncpg",
                "heaper_trio",
            )
        },
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
