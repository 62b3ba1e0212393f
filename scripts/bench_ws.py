#!/usr/bin/env python3
"""Live-sync (``/ws``) benchmark: fan-out of one writer to N subscribers on one document, and
memory per idle connection, for heaper_trio and, in the same run on the same machine, a stock
``@hocuspocus/server`` (the reference implementation of the wire protocol).

Servers, one at a time (the machine has 2 cores: one for the server, one for the generator):

* ``heaper_trio``: ``python -m heaper_trio --port P --data-dir D`` as a subprocess with
  ``HEAPER_AUTH_RATE_LIMIT=100000 HEAPER_LOG_LEVEL=warning`` (with PostgreSQL also
  ``--database-url`` and ``HEAPER_AUTO_APPROVE=true``); one account logs in (its access token
  is the token of every connection) and creates a heap; the document is a new block of it,
  ``<heap_id>:<block_id>``. Every update is committed before it is acknowledged.
* ``hocuspocus``: ``node tests/live_node/ref_server.mjs`` = ``@hocuspocus/server`` 4.7.0 with no
  extension: in memory, no persistence, no authentication hook (any token is accepted).

Load generator, the same for both (``tests/live_node/bench_load.mjs``, one Node process, see
its header): the writer is a stock ``@hocuspocus/provider`` 4.8.0 typing ``@@<seq>@@ `` into a
paragraph of ``content_v0``; the N subscribers are raw ``ws`` clients that speak the frames a
provider sends on connect (Auth, Sync step1, step2 when asked, Pong) but keep no Y.Doc and no
awareness -- a thousand providers applying every update to their own Y.Doc in one process
would make the generator the thing measured. A subscriber finds the seq in each update frame
(Yjs v1 stores inserted strings verbatim), so the delivery latency is send -> receive on one
clock, and every (update, subscriber) pair counts once.

Phases per server, in order:

* ``memory``: on the fresh server, VmRSS of the server process (``/proc/PID/status``) before
  and after ``--mem-conns`` subscribers (default: the largest N) have connected, synced and
  sat idle for 2 s; ``kb_per_idle_connection`` = delta / connections. (RSS, so allocator and
  GC slack count; it is a rough figure, comparable between the two servers of one run.)
* for each N (default 1, 100, 1000; ``--max-n`` drops the larger ones): connect N
  subscribers, then ``latency``: the writer sends ``--rate`` updates/s (default 20) for
  ``--duration`` s: delivery latency p50/p90/p99/max over every delivery, and
  ``deliveries_per_s`` (from the first send to the last delivery); then ``throughput``:
  closed loop with at most ``--window`` updates in
  flight (default 8; in flight = not yet received by all N): ``deliveries_per_s`` is the
  delivered-updates rate summed over subscribers, and the latency under that load;
  ``server_cpu_us_per_delivery`` = the server's CPU over the phase / deliveries. Both also
  report the writer's SyncStatus ack latency (heaper_trio: the durable commit) and lost
  deliveries (0 expected).

Each phase reports ``server_cpu_s`` (utime+stime of the server process from
``/proc/PID/stat``; with PostgreSQL the database's processes are not counted) and
``loadgen_cpu_util`` (the generator's CPU / wall time): near 1.0 the generator, not the
server, is the limit, which is then true for both servers alike.

Compression (``--compression off|on``, default off) is set the same way on both sides: the
clients offer permessage-deflate only when on (Node ``ws``'s option, as browsers always do), and
each server accepts it only when on (heaper_trio's ``HEAPER_WS_COMPRESSION``; ``ref_server.mjs
--compression``, i.e. ``ws``'s ``perMessageDeflate``).

The JSON's ``summary`` holds, per server and N, delivery latency p50/p99 at the fixed rate,
server CPU per delivery (at the rate and under load), deliveries/s (at the rate and the
closed-loop maximum) and memory per idle connection; ``ratios`` divides heaper_trio's figures
by Hocuspocus's from the same run (> 1: heaper_trio needs more time, CPU or memory; for
deliveries/s, > 1 is heaper_trio ahead).

Run (prints ONE JSON object on stdout; progress goes to stderr)::

    ./.venv/bin/python scripts/bench_ws.py                   # N = 1, 100, 1000; ~2-3 min
    ./.venv/bin/python scripts/bench_ws.py --max-n 100 --duration 2      # quick
    ./.venv/bin/python scripts/bench_ws.py --ns 100 --rate 50 --mem-conns 1000 --compression on
    ./.venv/bin/python scripts/bench_ws.py --servers heaper_trio
    ./.venv/bin/python scripts/bench_ws.py --engine postgres \\
        --database-url postgresql://postgres@127.0.0.1:5432/postgres

Needs ``node`` and ``npm ci`` in tests/live_node.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_http import CLK_TCK, Server, free_port, log, stop_servers_on_sigterm

LIVE = ROOT / "tests" / "live_node"
# One account drives every subscriber here: lift the per-account limits a real deployment keeps.
SERVER_ENV = {
    "HEAPER_AUTH_RATE_LIMIT": "100000",
    "HEAPER_LOG_LEVEL": "warning",
    "HEAPER_WS_MAX_CONNECTIONS_PER_USER": "100000",
}
SERVERS = ("heaper_trio", "hocuspocus")


def start_heaper(
    workdir: Path,
    engine: str,
    database_url: str,
    compression: bool,
    tree: Path = ROOT,
    workers: int = 0,
    name: str = "heaper_trio",
) -> Server:
    """The server of the checkout ``tree`` (``--compare``: another one, run in the same
    session), with ``--workers`` passed on when given."""
    data_dir = workdir / "data"
    data_dir.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEAPER_")}
    env.update(SERVER_ENV)
    env["HEAPER_WS_COMPRESSION"] = "true" if compression else "false"
    argv = [sys.executable, "-m", "heaper_trio", "--port", str(port), "--data-dir", str(data_dir)]
    if engine == "postgres":
        env["HEAPER_AUTO_APPROVE"] = "true"
        argv += ["--database-url", database_url]
    if workers:
        argv += ["--workers", str(workers)]
    env["PYTHONPATH"] = str(tree)  # that checkout's heaper_trio, nobody else's
    return Server(name, argv, env, port, "/api/health", workdir)


def start_hocuspocus(workdir: Path, node: str, compression: bool) -> Server:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REF_AUTH"}  # no auth hook
    flags = ["--compression"] if compression else []
    return Server(
        "hocuspocus",
        [node, str(LIVE / "ref_server.mjs"), "--port", str(port), *flags],
        env,
        port,
        "/",
        workdir,
    )


def heaper_document(url: str) -> tuple[str, str]:
    """Log in with a fresh key pair, create a heap: (access token, document name)."""
    import trio

    from heaper_trio.client import HeaperClient, KeyPair

    async def go() -> tuple[str, str]:
        async with HeaperClient(url, KeyPair.generate()) as c:
            await c.login()
            r = await c.post("/api/heap/add", json={"name": "Bench"})
            if r.status_code != 200:
                raise RuntimeError(f"POST /api/heap/add answered {r.status_code}: {r.text[:300]}")
            assert c.access_token is not None
            return c.access_token, f"{r.json()['heap']['id']}:{uuid.uuid4()}"

    return trio.run(go)


def run_load(
    node: str, server: Server, token: str, doc: str, args: argparse.Namespace, ns: list[int]
) -> dict[str, Any]:
    config = {
        "ws_url": f"ws://127.0.0.1:{server.port}/ws",
        "token": token,
        "doc": doc,
        "server_pid": server.pid,
        "clk_tck": CLK_TCK,
        "ns": ns,
        "duration": args.duration,
        "rate": args.rate,
        "window": args.window,
        "connect_parallel": args.connect_parallel,
        "mem_conns": args.mem_conns if args.mem_conns is not None else max(ns),
        "idle_s": 2,
        "per_message_deflate": getattr(args, "compression", "off") == "on",
    }
    budget = 120 + len(ns) * (3 * args.duration + 60) + config["mem_conns"] / 10
    done = subprocess.run(
        [node, str(LIVE / "bench_load.mjs")],
        input=json.dumps(config),
        capture_output=True,
        text=True,
        timeout=budget,
        cwd=str(LIVE),
        check=False,
    )
    sys.stderr.write(done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"bench_load.mjs exited {done.returncode}: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout))


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of one server, per N."""
    out: dict[str, Any] = {}
    if "memory" in result:
        out["kb_per_idle_connection"] = result["memory"]["kb_per_idle_connection"]
    for run in result.get("runs", []):
        lat, tp = run["latency"], run["throughput"]
        out[f"n{run['n']}"] = {
            "latency_p50_ms": lat["latency"]["p50_ms"],
            "latency_p99_ms": lat["latency"]["p99_ms"],
            "deliveries_per_s_at_rate": lat["deliveries_per_s"],
            "server_cpu_us_per_delivery_at_rate": lat["server_cpu_us_per_delivery"],
            "max_deliveries_per_s": tp["deliveries_per_s"],
            "latency_under_load_p50_ms": tp["latency"]["p50_ms"],
            "latency_under_load_p99_ms": tp["latency"]["p99_ms"],
            "writer_ack_p50_ms": lat["writer_ack_latency"]["p50_ms"],
            "server_cpu_us_per_delivery_under_load": tp["server_cpu_us_per_delivery"],
            "server_cpu_s": round(lat["server_cpu_s"] + tp["server_cpu_s"], 2),
            "lost": lat["lost_deliveries"] + tp["lost_deliveries"],
        }
    return out


RATIO_KEYS = (
    "latency_p50_ms",
    "latency_p99_ms",
    "server_cpu_us_per_delivery_at_rate",
    "server_cpu_us_per_delivery_under_load",
    "max_deliveries_per_s",
    "latency_under_load_p99_ms",
)


def ratios(ours: dict[str, Any], anchor: dict[str, Any]) -> dict[str, Any]:
    """heaper_trio / hocuspocus for each headline figure both servers have."""

    def ratio(a: Any, b: Any) -> float | None:
        if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b:
            return None
        return round(a / b, 2)

    out: dict[str, Any] = {}
    kb = ratio(ours.get("kb_per_idle_connection"), anchor.get("kb_per_idle_connection"))
    if kb is not None:
        out["kb_per_idle_connection"] = kb
    for key, figures in ours.items():
        if isinstance(figures, dict) and isinstance(anchor.get(key), dict):
            out[key] = {k: ratio(figures.get(k), anchor[key].get(k)) for k in RATIO_KEYS}
    return out


COMPARE = "heaper_before"  # the --compare checkout's server


def measure(
    name: str, node: str, args: argparse.Namespace, ns: list[int], notes: list[str]
) -> dict[str, Any]:
    """Start one server, load it, stop it: its result (``error`` when it failed)."""
    database_url = ""
    if args.engine == "postgres" and name != "hocuspocus":
        # a database of its own: a data dir holds the server's key, which a database keeps
        database_url = (
            args.database_url.rsplit("/", 1)[0] + "/heaper_bench_ws_" + uuid.uuid4().hex[:10]
        )
        admin_sql(args.database_url, f"CREATE DATABASE {database_url.rsplit('/', 1)[1]}")
    try:
        with tempfile.TemporaryDirectory(prefix=f"bench-ws-{name}-") as tmp:
            workdir = Path(tmp)
            if name == "hocuspocus":
                server = start_hocuspocus(workdir, node, args.compression == "on")
            else:
                server = start_heaper(
                    workdir,
                    args.engine,
                    database_url,
                    args.compression == "on",
                    tree=args.compare.resolve() if name == COMPARE else ROOT,
                    workers=args.compare_workers
                    if name == COMPARE and args.compare_workers
                    else args.workers,
                    name=name,
                )
            try:
                startup_s = server.wait_ready()
                log(f"{name}: ready in {startup_s:.2f}s (pid {server.pid})")
                if name != "hocuspocus":
                    token, doc = heaper_document(server.url)
                else:
                    token, doc = "any-token", f"{uuid.uuid4()}:{uuid.uuid4()}"
                result = run_load(node, server, token, doc, args, ns)
                result.pop("config", None)
                lines = [ln for ln in server.log_lines() if ln.strip()]
                result["server_log"] = {
                    "lines": len(lines),
                    "tracebacks": sum("Traceback" in ln for ln in lines),
                    "tail": lines[-8:],
                }
                if result.get("problem_count"):
                    notes.append(
                        f"{name}: {result['problem_count']} problems, see servers.{name}.problems"
                    )
                for one in result.get("runs", []):
                    for phase in ("latency", "throughput"):
                        util = one[phase]["loadgen_cpu_util"]
                        if util >= 0.85:
                            notes.append(
                                f"{name} N={one['n']} {phase}: the load generator used "
                                f"{util:.0%} of a core; it may be the limit"
                            )
                return result
            except Exception as e:
                log(f"{name}: failed: {e!r}")
                return {"error": repr(e), "log_tail": server.log_tail(20)}
            finally:
                server.stop()
    finally:
        if database_url:
            name_db = database_url.rsplit("/", 1)[1]
            admin_sql(args.database_url, f"DROP DATABASE IF EXISTS {name_db} WITH (FORCE)")


def admin_sql(dsn: str, sql: str) -> None:
    import asyncio

    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


def spread(per_run: list[dict[str, Any]]) -> dict[str, Any]:
    """Per server, N and headline ratio: the median and the range over the runs."""
    from statistics import median

    out: dict[str, Any] = {}
    for one in per_run:
        for name, by_n in one.get("ratios", {}).items():
            for n, figures in by_n.items():
                if not isinstance(figures, dict):
                    continue
                for key, value in figures.items():
                    if value is not None:
                        out.setdefault(name, {}).setdefault(n, {}).setdefault(key, []).append(value)
    for by_n in out.values():
        for figures in by_n.values():
            for key, values in figures.items():
                figures[key] = {"median": median(values), "min": min(values), "max": max(values)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ns", default="1,100,1000", help="subscriber counts, comma separated")
    p.add_argument("--max-n", type=int, default=None, help="drop subscriber counts above this")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measured phase")
    p.add_argument("--rate", type=float, default=20.0, help="updates/s of the latency phase")
    p.add_argument("--window", type=int, default=8, help="updates in flight, throughput phase")
    p.add_argument(
        "--mem-conns",
        type=int,
        default=None,
        help="idle connections of the memory phase (default: the largest N; 0: skip)",
    )
    p.add_argument("--connect-parallel", type=int, default=50, help="connections opened at once")
    p.add_argument(
        "--servers", default=",".join(SERVERS), help="comma separated: " + ", ".join(SERVERS)
    )
    p.add_argument(
        "--compression",
        choices=("off", "on"),
        default="off",
        help="permessage-deflate offered by the clients and accepted by both servers",
    )
    p.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--database-url", default="", help="postgresql:// URL (--engine postgres)")
    p.add_argument(
        "--compare",
        type=Path,
        help="another checkout (e.g. main's) whose server is measured in the same runs",
    )
    p.add_argument("--runs", type=int, default=1, help="rounds over every server, interleaved")
    p.add_argument("--workers", type=int, default=0, help="heaper_trio's --workers; 0: default")
    p.add_argument(
        "--compare-workers",
        type=int,
        default=0,
        help="--workers of the --compare server (e.g. this checkout again with 1 against 2)",
    )
    args = p.parse_args(argv)
    stop_servers_on_sigterm()  # a SIGTERM still stops the servers
    ns = [int(x) for x in args.ns.split(",") if x.strip()]
    if args.max_n is not None:
        ns = [n for n in ns if n <= args.max_n]
        if args.mem_conns is None:
            args.mem_conns = max(ns, default=0)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if unknown := set(servers) - set(SERVERS):
        p.error(f"unknown servers: {sorted(unknown)}")
    if args.engine == "postgres" and not args.database_url:
        p.error("--engine postgres needs --database-url")
    node = shutil.which("node")
    if node is None or not (LIVE / "node_modules" / "@hocuspocus" / "server").is_dir():
        p.error("needs `node` and `npm ci` in tests/live_node")

    labels = list(servers)
    if args.compare:
        labels.append(COMPARE)
    started = time.monotonic()
    out: dict[str, Any] = {"benchmark": "ws_fanout", "servers": {}, "summary": {}, "notes": []}
    per_run: list[dict[str, Any]] = []
    for run in range(args.runs):
        # interleaved: each run measures every server, in an order that alternates
        order = labels if run % 2 == 0 else labels[::-1]
        this: dict[str, Any] = {"summary": {}, "loadavg": [round(x, 2) for x in os.getloadavg()]}
        for name in order:
            result = measure(name, node, args, ns, out["notes"])
            if args.runs == 1:
                out["servers"][name] = result
            elif "error" in result:
                this.setdefault("errors", {})[name] = result
            if "error" not in result:
                this["summary"][name] = summary(result)
        if "hocuspocus" in this["summary"]:
            this["ratios"] = {
                name: ratios(figures, this["summary"]["hocuspocus"])
                for name, figures in this["summary"].items()
                if name != "hocuspocus"
            }
        log(f"run {run}: {json.dumps(this.get('ratios', {}))}")
        per_run.append(this)
    if args.runs == 1:
        out["summary"] = per_run[0]["summary"]
        if "ratios" in per_run[0]:
            ratios_1 = per_run[0]["ratios"]
            out["ratios"] = ratios_1.get("heaper_trio", {})
            if COMPARE in ratios_1:
                out["ratios_" + COMPARE] = ratios_1[COMPARE]
    else:
        out["ratios_median_range"] = spread(per_run)
        out["runs"] = per_run
    if args.engine == "postgres":
        out["notes"].append(
            "server_cpu_s counts the heaper_trio processes (workers too), not PostgreSQL's"
        )
    out["notes"].append(
        "hocuspocus keeps documents in memory and acks before anything is "
        "durable; heaper_trio acks each update after its commit"
    )

    from importlib.metadata import version

    node_versions = {}
    for pkg in ("@hocuspocus/server", "@hocuspocus/provider", "yjs", "ws"):
        try:
            node_versions[pkg] = json.loads(
                (LIVE / "node_modules" / pkg / "package.json").read_text()
            )["version"]
        except OSError:
            node_versions[pkg] = None
    out["machine"] = {
        "nproc": os.cpu_count(),
        "nproc_usable": len(os.sched_getaffinity(0)),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "node": subprocess.run(
            [node, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "engine": args.engine,
        "compression": args.compression,
        "ns": ns,
        "duration_s": args.duration,
        "rate": args.rate,
        "window": args.window,
        "total_run_s": round(time.monotonic() - started, 1),
        "versions": {
            **{pkg: version(pkg) for pkg in ("hypercorn", "trio", "pycrdt", "heaper_trio")},
            **node_versions,
        },
    }
    headline = (
        "benchmark",
        "summary",
        "ratios",
        "ratios_median_range",
        "notes",
        "machine",
    )  # details last
    out = {**{k: out[k] for k in headline if k in out}, **out}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
