#!/usr/bin/env python3
"""HTTP push throughput with an out-of-process load generator, against raw inserts into the
same engine, interleaved in the same run (issue 12 item 4).

Why another push bench: ``bench_sync.py`` pushes from a trio client in its own process that
builds every update with pycrdt while timed; with 16 streams that client was the limit (the
server sat at 12-23 % of a core). Here every request body is made beforehand and ``wrk`` sends
them (``scripts/push_streams.lua``): one wrk thread and one connection per stream, so a
stream's requests go one after another and a block's updates arrive in order. Each stream has
its own 25 blocks (created before, not measured) and its own ordered bodies: a word typed into
the next block of its pool, as ``bench_sync.EditedBlock`` types it.

Phases, per run (``--runs``, default 3), one after another, never in parallel:

* ``baseline``: no push running: SQLite, a plain ``sqlite3`` connection in WAL with the
  server's ``synchronous`` (FULL), one row per commit and 100 rows per commit; PostgreSQL, a
  plain asyncpg connection into a logged scratch table, the same two ways
  (``bench_sync.sqlite_baseline`` / ``postgres_baseline``);
* ``single``: one stream, one block per push; ``streams16``: 16 streams, one block per push;
  ``batched100``: one stream, 100 blocks per push (a pool of 1,000 blocks). Each has a warm-up
  on blocks of its own first (``--warmup``, not counted).

For each push phase: updates acknowledged (``ok``/``created``) per second, latency per request,
the server's CPU per update (utime+stime of the server and its workers, ``/proc``), wrk's own
CPU (it must not be the limit: compare its share of a core with the server's), on
PostgreSQL the CPU of the database backends serving the server's scratch database, and how
many writes shared one group commit (one fsync) on average (the server's ``/metrics``). Ratios per
run: single and streams16 over the 1-row baseline, batched100 over the 100-row baseline; the
JSON gives each run and the median.

The server runs as ``python -m heaper_trio`` (``bench_sync.start_heaper``); with PostgreSQL on a
scratch database of the given cluster, dropped afterwards. Needs ``wrk`` on PATH::

    ./.venv/bin/python scripts/bench_push.py --runs 3 --duration 4
    ./.venv/bin/python scripts/bench_push.py --engine postgres --database-url postgresql://...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import trio
from bench_http import CLK_TCK, Server, _children, free_port, log, proc_cpu_s
from bench_sync import SERVER_ENV, EditedBlock, create_all, postgres_baseline, sqlite_baseline

from heaper_trio.client import HeaperClient, KeyPair
from heaper_trio.settings import BY_NAME

LUA = Path(__file__).resolve().parent / "push_streams.lua"
POOL = 25  # blocks per single-push stream
BATCH = 100
BATCH_POOL = 1000
# phase: (streams, blocks per push, a first guess of updates/s to size the bodies made)
PHASES = {"single": (1, 1, 600.0), "streams16": (16, 1, 1200.0), "batched100": (1, BATCH, 3000.0)}
BODY_MARGIN = 2.0  # bodies made per stream: the expected need times this
PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def start_server(workdir: Path, args: argparse.Namespace, tree: Path, label: str) -> Server:
    """As ``bench_sync.start_heaper``, from the checkout ``tree``, with ``--workers`` passed on
    when given (``--compare-workers`` for the compared server)."""
    # PostgreSQL: one database, so one server key (data dir) for both servers
    data_dir = workdir / ("data" if args.engine == "postgres" else f"data_{label}")
    data_dir.mkdir(exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEAPER_")}
    env.update(SERVER_ENV, HEAPER_AUTO_APPROVE="true")  # a new account per run
    argv = [sys.executable, "-m", "heaper_trio", "--port", str(port), "--data-dir", str(data_dir)]
    workers = args.compare_workers if label == "compare" and args.compare_workers else args.workers
    if workers:
        argv += ["--workers", str(workers)]
    if args.engine == "postgres":
        argv += ["--database-url", args.database_url]
    env["PYTHONPATH"] = str(tree)  # that checkout's heaper_trio, nobody else's
    return Server(f"heaper_{label}", argv, env, port, "/api/health", workdir)


def dump(blocks: list[EditedBlock], heap_id: str) -> str:
    return json.dumps({"blocks": [b.push_item(heap_id) for b in blocks]}, separators=(",", ":"))


def make_stream(pool: list[EditedBlock], heap_id: str, bodies: int, per_body: int) -> list[str]:
    """``bodies`` request bodies, in order: the next ``per_body`` blocks of the pool each get a
    word typed, and the body carries what the server lacks of them."""
    out, at = [], 0
    for _ in range(bodies):
        blocks = [pool[(at + i) % len(pool)] for i in range(per_body)]
        at = (at + per_body) % len(pool)
        for b in blocks:
            b.type_word()
        out.append(dump(blocks, heap_id))
    return out


def write_streams(
    folder: Path, pools: list[list[EditedBlock]], heap_id: str, bodies: int, per_body: int
) -> None:
    folder.mkdir()
    for s, pool in enumerate(pools):
        lines = make_stream(pool, heap_id, bodies, per_body)
        (folder / f"stream_{s}.jsonl").write_text("\n".join(lines) + "\n")


async def prepare(
    client: HeaperClient,
    heap_id: str,
    phase: str,
    bodies_per_stream: int,
    folder: Path,
    warm: bool = False,
) -> None:
    """Blocks created (not timed), then each stream's bodies written to ``folder``; a warm-up
    cycles through fewer blocks (creating 1,000 takes a while on a loaded machine)."""
    streams, per_body, _ = PHASES[phase]
    rnd = random.Random(hash((phase, str(folder))) & 0xFFFF)
    size = (per_body if warm else BATCH_POOL) if per_body > 1 else POOL
    pools = [[EditedBlock(rnd) for _ in range(size)] for _ in range(streams)]
    await create_all(client, heap_id, [b for pool in pools for b in pool])
    write_streams(folder, pools, heap_id, bodies_per_stream, per_body)


def backend_pids(dsn: str, database: str) -> list[int]:
    async def pids() -> list[int]:
        import asyncpg

        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname=$1 AND pid <> pg_backend_pid()",
                database,
            )
            return [r[0] for r in rows]
        finally:
            await conn.close()

    # in a thread of its own: this runs inside trio.run, where asyncio.run is refused
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, pids()).result()


def pids_cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def loop_cpu_s(pid: int) -> float:
    """CPU of the main threads (the event loops) of a server and its descendants; the rest of
    ``proc_cpu_s`` is its other threads' (the SQLite writer, readers, trio's workers)."""
    try:
        raw = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    own = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return own + sum(loop_cpu_s(child) for child in _children(pid))


def commit_batches(url: str) -> tuple[float, float] | None:
    """The server's group commits so far (``/metrics``): writes gathered, transactions; None
    when it does not answer them (metrics off)."""
    import httpx

    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    total = {"_sum": 0.0, "_count": 0.0}
    for line in text.splitlines():
        for end in total:
            if line.startswith("heaper_db_commit_batch_size" + end):
                total[end] += float(line.rsplit(" ", 1)[1])
    return total["_sum"], total["_count"]


def run_wrk(
    server: Server,
    folder: Path,
    token: str,
    phase: str,
    seconds: int,
    pg: tuple[str, str] | None,
    profile: Path | None = None,
    spy_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    streams, per_body, _ = PHASES[phase]
    argv = ["wrk", f"-t{streams}", f"-c{streams}", f"-d{seconds}s", "--latency"]
    argv += ["--timeout", "30s", "-s", str(LUA), server.url, "--", str(folder), token]
    argv.append(str(per_body))
    pids = backend_pids(*pg) if pg else []
    spy = None
    if profile is not None:  # py-spy beside the server (its own process, like wrk)
        profile.mkdir(exist_ok=True)
        spy = subprocess.Popen(
            [
                *(PY_SPY, "record", "--pid", str(server.pid), "--subprocesses", "--nonblocking"),
                *("-d", str(seconds), "-f", "raw", "-o", str(profile / f"{phase}.txt")),
                *spy_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    batches0 = commit_batches(server.url)
    own0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    loop0 = loop_cpu_s(server.pid)
    cpu0, db0, t0 = proc_cpu_s(server.pid), pids_cpu_s(pids), time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    wall = time.monotonic() - t0
    if spy is not None:
        spy.wait(timeout=30)
    cpu, db = proc_cpu_s(server.pid) - cpu0, pids_cpu_s(pids) - db0
    loop = loop_cpu_s(server.pid) - loop0
    batches1 = commit_batches(server.url)
    per_commit = None  # how many writes shared one group commit (one fsync), on average
    if batches0 and batches1 and batches1[1] > batches0[1]:
        per_commit = round((batches1[0] - batches0[0]) / (batches1[1] - batches0[1]), 2)
    own1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = own1.ru_utime + own1.ru_stime - own0.ru_utime - own0.ru_stime
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("PUSH_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr or out.stdout}")
    s = json.loads(line[len("PUSH_JSON ") :])
    secs = s["duration_us"] / 1e6
    acked = s["acked"]
    return {
        "streams": streams,
        "blocks_per_push": per_body,
        "updates_acked": acked,
        "updates_refused": s["refused"],
        "pushes": s["pushes"],
        "exhausted_streams": s["exhausted_streams"],
        "socket_errors": s["socket_errors"],
        "seconds": round(secs, 3),
        "updates_per_s": round(acked / secs, 1),
        "p50_ms": s["p50_us"] / 1e3,
        "p99_ms": s["p99_us"] / 1e3,
        "server_cpu_us_per_update": round(cpu * 1e6 / acked, 1) if acked else None,
        "server_cpu_util": round(cpu / wall, 3),
        # of server_cpu_us_per_update: the event loop's, and the other threads' (on SQLite
        # mostly the writer's: statements, search rows, COMMIT); both hold the GIL at times
        "loop_cpu_us_per_update": round(loop * 1e6 / acked, 1) if acked else None,
        "threads_cpu_us_per_update": round((cpu - loop) * 1e6 / acked, 1) if acked else None,
        "wrk_cpu_util": round(wrk_cpu / wall, 3),
        "db_backends_cpu_us_per_update": round(db * 1e6 / acked, 1) if pg and acked else None,
        "writes_per_group_commit": per_commit,
    }


async def push_phases(
    label: str,
    server: Server,
    args: argparse.Namespace,
    run: int,
    workdir: Path,
    rates: dict[str, float],
    pg: tuple[str, str] | None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with HeaperClient(server.url, KeyPair.generate(), timeout=300) as client:
        await client.login()
        heap = (await client.post("/api/heap/add", json={"name": f"Push {run}"})).json()["heap"]
        token = client.access_token or ""
        for phase in args.phases:
            streams, per_body, _ = PHASES[phase]
            need = rates[phase] * (args.duration + 1) * BODY_MARGIN
            bodies = max(20, math.ceil(need / streams / per_body))
            warm_bodies = max(5, math.ceil(bodies * args.warmup / (args.duration + 1)))
            folder = workdir / f"{label}_r{run}_{phase}"
            warm = workdir / f"{label}_r{run}_{phase}_warm"
            await prepare(client, heap["id"], phase, warm_bodies, warm, warm=True)
            await prepare(client, heap["id"], phase, bodies, folder)
            if args.warmup:
                run_wrk(server, warm, token, phase, args.warmup, pg)
            spy = ("--rate", str(args.profile_rate), *(("--gil",) if args.profile_gil else ()))
            r = run_wrk(server, folder, token, phase, args.duration, pg, args.profile, spy)
            rates[phase] = max(rates[phase], r["updates_per_s"])
            log(
                f"run {run} {label} {phase}: {r['updates_per_s']} updates/s, p50 {r['p50_ms']} ms, "
                f"server {r['server_cpu_us_per_update']} µs/update "
                f"(loop {r['loop_cpu_us_per_update']}, threads {r['threads_cpu_us_per_update']}) "
                f"({r['server_cpu_util']} of a core), wrk {r['wrk_cpu_util']} of a core, "
                f"{r['writes_per_group_commit']} writes per group commit"
                + (f", db {r['db_backends_cpu_us_per_update']} µs/update" if pg else "")
                + (f", EXHAUSTED {r['exhausted_streams']}" if r["exhausted_streams"] else "")
            )
            out[phase] = r
    return out


SETTLE_UTIL = 0.05  # of a core: a server using less is taken as started
SETTLE_TIMEOUT_S = 30.0


def settle(server: Server) -> None:
    """Wait until the server's CPU use falls to idle. ``/api/health`` answers once the FIRST
    worker serves; the supervisor starts the others after it (``workers.py``), and each takes
    ~1.3 s of CPU to start. Run 0's baseline used to overlap that: its anchor was measured on a
    busy machine (761 rows/s against 1,032 in run 1) and the servers' "idle" CPU read 0.19-0.21
    of a core, where it is ~0.01 per worker once started (no polling loop: the scan jobs'
    heartbeat is all an idle server does)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    quiet = 0
    while quiet < 2 and time.monotonic() < deadline:
        c0, t0 = proc_cpu_s(server.pid), time.monotonic()
        time.sleep(0.5)
        util = (proc_cpu_s(server.pid) - c0) / (time.monotonic() - t0)
        quiet = quiet + 1 if util < SETTLE_UTIL else 0
    if quiet < 2:
        log(f"{server.name} did not settle within {SETTLE_TIMEOUT_S:.0f} s; going on")


def baseline(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    if args.engine == "sqlite":
        sync = str(BY_NAME["sqlite_synchronous"].default)
        return sqlite_baseline(workdir, args.blob, args.duration, sync)
    return asyncio.run(postgres_baseline(args.database_url, args.blob, args.duration))


def summarize(runs: list[dict[str, Any]], label: str) -> dict[str, Any]:
    def ratio(run: dict[str, Any], phase: str, base: str) -> float:
        b = run["baseline"][base]["rows_per_s"]
        return round(run[label][phase]["updates_per_s"] / b, 3)

    keys = {
        "single_vs_1_row_commits": ("single", "rows_1_per_commit"),
        "streams16_vs_1_row_commits": ("streams16", "rows_1_per_commit"),
        "batched100_vs_100_row_commits": ("batched100", "rows_100_per_commit"),
    }
    out: dict[str, Any] = {}
    phases = [p for p in PHASES if p in runs[0][label]]
    for name, (phase, base) in keys.items():
        if phase not in phases:
            continue
        xs = [ratio(r, phase, base) for r in runs]
        out[name] = {"median": statistics.median(xs), "runs": xs}
    for phase in phases:
        for k in (
            "updates_per_s",
            "server_cpu_us_per_update",
            "server_cpu_us_per_update_minus_idle",
            "loop_cpu_us_per_update",
            "threads_cpu_us_per_update",
            "wrk_cpu_util",
            "server_cpu_util",
            "db_backends_cpu_us_per_update",
            "writes_per_group_commit",
        ):
            xs = [r[label][phase][k] for r in runs if r[label][phase][k] is not None]
            out.setdefault(phase, {})[k] = {
                "median": statistics.median(xs) if xs else None,
                "runs": xs,
            }
    for base in ("rows_1_per_commit", "rows_100_per_commit"):
        xs = [r["baseline"][base]["rows_per_s"] for r in runs]
        out.setdefault("baseline", {})[base] = {"median": statistics.median(xs), "runs": xs}
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
    p.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--database-url", default="", help="a cluster's postgresql:// URL")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=int, default=4, help="whole seconds per measure")
    p.add_argument("--warmup", type=int, default=1, help="whole seconds, 0: none")
    p.add_argument("--workers", type=int, default=0, help="server processes; 0: its default")
    p.add_argument(
        "--profile", type=Path, help="py-spy the server in each measure into DIR/<phase>.txt"
    )
    p.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument(
        "--profile-gil", action="store_true", help="py-spy: only the thread holding the GIL"
    )
    p.add_argument(
        "--compare",
        type=Path,
        help="another checkout (e.g. main's) whose server is measured in the same runs",
    )
    p.add_argument(
        "--compare-workers",
        type=int,
        default=0,
        help="--workers of the --compare server (e.g. this checkout again with 1 against 2)",
    )
    p.add_argument(
        "--phases",
        type=lambda v: v.split(","),
        default=list(PHASES),
        help="comma-separated, of " + ", ".join(PHASES),
    )
    p.add_argument("--blob", type=int, default=60, help="baseline row size (a typical update)")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the servers are stopped
    if (args.engine == "postgres") != bool(args.database_url):
        p.error("--database-url goes with --engine postgres, and only with it")
    if set(args.phases) - set(PHASES):
        p.error(f"--phases: of {', '.join(PHASES)}")
    if not shutil.which("wrk"):
        p.error("wrk is not on PATH (apt-get install wrk)")
    cluster, name = args.database_url, ""
    if cluster:
        name = "heaper_bench_push_" + uuid.uuid4().hex[:10]
        asyncio.run(_admin_sql(cluster, f"CREATE DATABASE {name}"))
        args.database_url = cluster.rsplit("/", 1)[0] + "/" + name
    out: dict[str, Any] = {"engine": args.engine, "load_generator": f"wrk, {LUA.name}"}
    rates = {phase: guess for phase, (_, _, guess) in PHASES.items()}
    runs: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="heaper-bench-push-") as tmp:
            workdir = Path(tmp)
            trees = {"push": Path(__file__).resolve().parent.parent}
            if args.compare:
                trees["compare"] = args.compare.resolve()
            servers = {}
            try:
                for k, t in trees.items():  # one after the other: the first makes the key
                    servers[k] = start_server(workdir, args, t, k)
                    servers[k].wait_ready()
                    settle(servers[k])
                pg = (cluster, name) if cluster else None
                for run in range(args.runs):
                    log(f"run {run}: baseline")
                    # the servers sit idle meanwhile: their background CPU, to take off below
                    cpu0 = {k: proc_cpu_s(v.pid) for k, v in servers.items()}
                    t0 = time.monotonic()
                    one: dict[str, Any] = {"baseline": baseline(args, workdir)}
                    idle = {
                        k: (proc_cpu_s(v.pid) - cpu0[k]) / (time.monotonic() - t0)
                        for k, v in servers.items()
                    }
                    one["server_idle_cpu_util"] = {k: round(v, 3) for k, v in idle.items()}
                    order = list(servers.items())
                    for label, server in order if run % 2 == 0 else order[::-1]:
                        one[label] = trio.run(
                            push_phases, label, server, args, run, workdir, rates, pg
                        )
                        for r in one[label].values():
                            busy = r["server_cpu_util"] - idle[label]
                            r["server_cpu_us_per_update_minus_idle"] = (
                                round(busy / r["updates_per_s"] * 1e6, 1)
                                if r["updates_per_s"]
                                else None
                            )
                    runs.append(one)
                for server in servers.values():
                    if server.proc.poll() is not None:
                        raise RuntimeError(f"a server died:\n{server.log_tail(20)}")
            finally:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut this
                for server in servers.values():
                    try:
                        server.stop()
                    except Exception as e:  # stop the others still
                        log(f"stopping {server.name}: {e!r}")
    finally:
        if cluster:
            asyncio.run(_admin_sql(cluster, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    out["trees"] = {k: str(v) for k, v in trees.items()}
    out["summary"] = {label: summarize(runs, label) for label in trees} if runs else {}
    out["runs"] = runs
    out["machine"] = {"nproc": os.cpu_count(), "loadavg_at_end": os.getloadavg()}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
