#!/usr/bin/env python3
"""``--workers``: HTTP and live fan-out with 1 and with 2 (or more) server processes on
PostgreSQL, in one run, as ratios against the single process.

For each round (default 2, interleaved: 1, 2, 1, 2 ... so drifting machine load hits both
alike) and each worker count, ``python -m heaper_trio --workers N`` is started on one data
directory and one database, made for the run (and dropped after it) on the PostgreSQL server
of ``--database-url`` (or ``HEAPER_TEST_DATABASE_URL``; its user must be allowed to create
databases), then:

* ``health``: ``GET /api/health`` and ``me``: ``POST /api/me`` with a bearer token, driven by
  ``wrk -t1 -c{concurrency}`` for ``--duration`` s after a 1 s warm-up (bench_http.run_wrk);
  req/s and p50/p99 latency;
* ``fanout`` (unless ``--no-fanout``): tests/live_node/bench_load.mjs as bench_ws.py runs it:
  one writer, ``--fanout-n`` subscribers on one document, ``--rate`` updates/s then a closed
  loop; delivery latency p50/p99 at that rate and the most deliveries/s.

Server CPU is summed over the supervisor and its workers (``/proc``) for each measured window
(bench_load's own CPU figure counts one process and is left out). The medians over the rounds
and ``ratios`` (N workers / 1 worker) are what to read; the machine has few cores and the load
generator shares them, so absolute figures are context only.

Run (ONE JSON object on stdout, progress on stderr; ~1 min with the defaults)::

    ./.venv/bin/python scripts/bench_workers.py --database-url postgresql://u@127.0.0.1/db
    ./.venv/bin/python scripts/bench_workers.py --workers 1,2 --rounds 3 --duration 5

Needs ``wrk`` on PATH, and ``node`` with ``npm ci`` in tests/live_node for the fan-out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_http import (
    Server,
    free_port,
    log,
    login,
    proc_cpu_s,
    run_wrk,
    stop_servers_on_sigterm,
    target,
)
from bench_ws import SERVER_ENV, heaper_document, run_load

ROOT = Path(__file__).resolve().parent.parent


def scratch_database(admin_url: str, sql: str) -> None:
    import asyncio

    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


def family(pid: int) -> list[int]:
    """The process and its descendants (the supervisor and its workers)."""
    out = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
            for child in children:
                out += family(int(child))
    except OSError:
        pass
    return out


def cpu_s(pid: int) -> float:
    total = 0.0
    for p in family(pid):
        try:
            total += proc_cpu_s(p)
        except OSError:
            pass
    return total


def start(workdir: Path, database_url: str, workers: int) -> Server:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEAPER_")}
    env.update(SERVER_ENV, HEAPER_AUTO_APPROVE="true", HEAPER_WORKERS=str(workers))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "heaper_trio", "--port", str(port)]
    argv += ["--data-dir", str(workdir / "data"), "--database-url", database_url]
    return Server(f"heaper_w{workers}", argv, env, port, "/api/health", workdir)


def wait_for_workers(server: Server, workers: int, timeout: float = 120) -> None:
    """Until every worker answers: distinct pids in /api/health over fresh connections."""
    import httpx

    server.wait_ready()
    deadline = time.monotonic() + timeout
    pids: set[int] = set()
    while len(pids) < workers:
        if time.monotonic() > deadline or server.proc.poll() is not None:
            raise RuntimeError(f"{len(pids)} of {workers} workers answer:\n{server.log_tail(20)}")
        try:
            pids.add(int(httpx.get(server.url + "/api/health").json()["server"]["pid"]))
        except httpx.HTTPError:
            time.sleep(0.1)


def http(workdir: Path, server: Server, token: str, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    for t in (
        target("health", server, "GET", "/api/health"),
        target("me", server, "POST", "/api/me", auth, "{}"),
    ):
        run_wrk(workdir, t, 1, args.concurrency, server.pid)  # warm-up
        cpu0 = cpu_s(server.pid)
        raw = run_wrk(workdir, t, args.duration, args.concurrency, server.pid)
        cpu = cpu_s(server.pid) - cpu0
        n = raw["requests"]
        out[t["name"]] = {
            "req_per_s": round(n / raw["seconds"], 1),
            "p50_ms": round(raw["p50_us"] / 1000, 2),
            "p99_ms": round(raw["p99_us"] / 1000, 2),
            "server_cpu_us_per_req": round(cpu * 1e6 / n, 1) if n else None,
            "errors": raw["errors"],
        }
        log(f"{server.name} {t['name']}: {out[t['name']]}")
    return out


def fanout(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not on PATH (or run with --no-fanout)")
    token, doc = heaper_document(server.url)
    load = argparse.Namespace(
        duration=args.fanout_duration,
        rate=args.rate,
        window=8,
        connect_parallel=50,
        mem_conns=0,
    )
    cpu0 = cpu_s(server.pid)
    run = run_load(node, server, token, doc, load, [args.fanout_n])["runs"][0]
    cpu = cpu_s(server.pid) - cpu0
    lat, tp = run["latency"], run["throughput"]
    out = {
        "latency_p50_ms": lat["latency"]["p50_ms"],
        "latency_p99_ms": lat["latency"]["p99_ms"],
        "max_deliveries_per_s": tp["deliveries_per_s"],
        "under_load_p99_ms": tp["latency"]["p99_ms"],
        "lost": lat["lost_deliveries"] + tp["lost_deliveries"],
        "server_cpu_s": round(cpu, 2),
    }
    log(f"{server.name} fanout n={args.fanout_n}: {out}")
    return out


def median_of(runs: list[dict[str, Any]], *path: str) -> float:
    values = []
    for r in runs:
        for key in path:
            r = r[key]
        values.append(float(r))  # type: ignore[arg-type]
    return round(statistics.median(values), 2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url", default=os.environ.get("HEAPER_TEST_DATABASE_URL", ""))
    p.add_argument("--workers", default="1,2", help="worker counts, comma separated")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--duration", type=float, default=3.0, help="seconds per HTTP target")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--no-fanout", action="store_true")
    p.add_argument("--fanout-n", type=int, default=100, help="live subscribers")
    p.add_argument("--fanout-duration", type=float, default=3.0)
    p.add_argument("--rate", type=float, default=20.0, help="updates/s, latency phase")
    args = p.parse_args(argv)
    stop_servers_on_sigterm()  # a SIGTERM still stops the servers
    if not args.database_url.startswith(("postgresql://", "postgres://")):
        p.error("--database-url postgresql://... (or HEAPER_TEST_DATABASE_URL) is needed")
    if shutil.which("wrk") is None:
        p.error("wrk is not on PATH")
    counts = [int(n) for n in args.workers.split(",")]
    results: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    name = f"bench_workers_{uuid.uuid4().hex[:12]}"
    scratch_database(args.database_url, f"CREATE DATABASE {name}")
    database_url = urlunsplit(urlsplit(args.database_url)._replace(path="/" + name))
    with tempfile.TemporaryDirectory(prefix="bench_workers_") as tmp:
        workdir = Path(tmp)
        for round_ in range(args.rounds):
            for n in counts:
                log(f"round {round_ + 1}: {n} worker(s)")
                server = start(workdir, database_url, n)
                try:
                    wait_for_workers(server, n)
                    token, _ = login(server.url)
                    one: dict[str, Any] = http(workdir, server, token, args)
                    if not args.no_fanout:
                        one["fanout"] = fanout(server, args)
                    results[n].append(one)
                finally:
                    code = server.stop()
                    if code != 0:
                        log(f"{server.name} exited {code}:\n{server.log_tail(10)}")
    scratch_database(args.database_url, f"DROP DATABASE {name}")
    medians: dict[str, Any] = {}
    for n, runs in results.items():
        m: dict[str, Any] = {
            f"{t}_{k}": median_of(runs, t, k)
            for t in ("health", "me")
            for k in ("req_per_s", "p99_ms", "server_cpu_us_per_req")
        }
        if not args.no_fanout:
            for k in ("latency_p50_ms", "latency_p99_ms", "max_deliveries_per_s"):
                m[f"fanout_{k}"] = median_of(runs, "fanout", k)
        medians[f"workers_{n}"] = m
    base = medians[f"workers_{counts[0]}"]
    ratios = {
        f"workers_{n}_vs_{counts[0]}": {
            k: round(v / base[k], 2) if base[k] else None
            for k, v in medians[f"workers_{n}"].items()
        }
        for n in counts[1:]
    }
    print(
        json.dumps(
            {
                "cpus": len(os.sched_getaffinity(0)),
                "rounds": args.rounds,
                "concurrency": args.concurrency,
                "fanout_n": None if args.no_fanout else args.fanout_n,
                "medians": medians,
                "ratios": ratios,
                "runs": {f"workers_{n}": r for n, r in results.items()},
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
