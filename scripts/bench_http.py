#!/usr/bin/env python3
"""HTTP throughput/latency benchmark of a real heaper_trio server, against a bare baseline.

What it measures, one target after another (never in parallel), each server in its own
subprocess so the load generator never shares a process (or a GIL) with the server:

* ``baseline_hello``: a raw ASGI callable answering a small JSON body, served by
  ``hypercorn.trio.serve`` -- the same HTTP stack heaper_trio runs on, minus everything else;
* ``server_health``: ``GET /api/health`` on ``python -m heaper_trio`` (embedded SQLite in a
  temporary data dir, or PostgreSQL with ``--engine postgres --database-url ...``);
* ``server_me``: ``POST /api/me`` with a bearer token (logged in once through
  ``heaper_trio.client.HeaperClient``; the access token is reused for every request).

For each: requests/s, p50/p99 latency (ms), and server CPU per request (µs, from utime+stime
in ``/proc/PID/stat`` of the server process, read just before and after the measured window).

Why the baseline: absolute numbers depend on the machine, its load, the CPU governor and the
load generator (an httpx generator in Python is itself a bottleneck). Measuring hypercorn+trio
hello-world in the same run on the same machine gives a ceiling for this stack, so the
``ratios`` (server req/s / baseline req/s) are what counts and what is comparable between
runs and machines; the raw req/s are only context. ``cpu_ratios`` compare server CPU per
request the same way (baseline / server), which a busy machine disturbs less.

Load generator: ``wrk`` when it is on PATH (``wrk -t1 -c{concurrency} -d{duration}s
--latency`` with a Lua script that sets method/headers/body and prints a JSON summary),
otherwise a closed-loop trio + httpx.AsyncClient generator run as a separate process (this
very script with ``_loadgen``): N workers, one keep-alive connection each. The JSON says
which one ran (``"load_generator"``). Each target gets a warm-up (default 1 s) that is not
measured. All traffic goes to 127.0.0.1.

Run (prints ONE JSON object on stdout; progress goes to stderr)::

    ./.venv/bin/python scripts/bench_http.py                       # 16 conns, 5 s per target
    ./.venv/bin/python scripts/bench_http.py --duration 3 --concurrency 32
    ./.venv/bin/python scripts/bench_http.py --engine postgres \\
        --database-url postgresql://user:pw@127.0.0.1/heaper
    ./.venv/bin/python scripts/bench_http.py --generator httpx     # force the fallback

With PostgreSQL the server also gets HEAPER_AUTO_APPROVE=true so the freshly generated
benchmark account can log in even if the database already holds an admin.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
BASELINE_BODY = b'{"success":true,"status":"ok","hello":"world"}'

BASELINE_APP = textwrap.dedent("""
    import sys
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    BODY = %r
    HEADERS = [(b"content-type", b"application/json"),
               (b"content-length", str(len(BODY)).encode())]

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        while True:  # drain any request body
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": BODY})

    cfg = Config()
    cfg.bind = ["127.0.0.1:" + sys.argv[1]]
    cfg.keep_alive_timeout = 30  # as heaper_trio's hypercorn_config
    cfg.accesslog = None
    trio.run(serve, app, cfg)
""") % (BASELINE_BODY,)

WRK_LUA = textwrap.dedent("""
    wrk.method = %(method)s
    wrk.body = %(body)s
    %(headers)s
    done = function(summary, latency, requests)
      io.write(string.format(
        'BENCH_JSON {"requests":%%d,"duration_us":%%d,"p50_us":%%d,"p99_us":%%d,' ..
        '"max_us":%%d,"status_errors":%%d,"connect_errors":%%d,"read_errors":%%d,' ..
        '"write_errors":%%d,"timeouts":%%d}\\n',
        summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
        latency.max, summary.errors.status, summary.errors.connect, summary.errors.read,
        summary.errors.write, summary.errors.timeout))
    end
""")


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads) and of its living descendants (a server
    started with several workers, or whose parent supervises one), in seconds."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone meanwhile
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    total = (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)
    for child in _children(pid):
        total += proc_cpu_s(child)
    return total


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


# -- servers ---------------------------------------------------------------------------------


class Server:
    """A server subprocess with its stderr in a file; ``stop`` is idempotent."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        port: int,
        health_path: str,
        workdir: Path,
    ) -> None:
        self.name = name
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.health_path = health_path
        self.log_path = workdir / f"{name}.stderr.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=str(workdir),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> float:
        """Poll the health path until it answers 200; returns seconds it took."""
        import httpx

        started = time.monotonic()
        deadline = started + timeout
        last: str = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} while "
                    f"starting:\n{self.log_tail(20)}"
                )
            try:
                r = httpx.get(self.url + self.health_path, timeout=2.0)
                if r.status_code == 200:
                    return time.monotonic() - started
                last = f"HTTP {r.status_code}: {r.text[:200]}"
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout}s ({last}):\n{self.log_tail(20)}")

    def log_lines(self) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def log_tail(self, n: int) -> str:
        return "\n".join(self.log_lines()[-n:])

    def stop(self) -> int | None:
        """SIGTERM to the server (a supervisor stops its workers itself), then whatever is
        left of its process group: it runs in a session of its own (``start_new_session``),
        so its group is everything it started, and a worker that outlived its parent (the
        parent killed, crashed, or slow) is ended here rather than left running. Returns
        the server's own exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not stop on SIGTERM within {STOP_TIMEOUT_S}s; killing")
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if _signal_group(self.proc.pid, signal.SIGTERM):  # left behind by the parent
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while _signal_group(self.proc.pid, 0) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _signal_group(self.proc.pid, signal.SIGKILL):
                log(f"{self.name}: processes of its group outlived it; killed")
        self._log.close()
        return self.proc.returncode


def _signal_group(pgid: int, sig: int) -> bool:
    """``killpg``; False when no process is left in the group (0 only asks)."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def stop_servers_on_sigterm() -> None:
    """SIGTERM (``timeout``, a CI step cut short) ends the benchmark through ``SystemExit``,
    so its ``finally`` blocks run and stop its servers, groups and all; Python's default
    would end it on the spot and leave them running."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def start_baseline(workdir: Path) -> Server:
    app_file = workdir / "baseline_app.py"
    app_file.write_text(BASELINE_APP)
    port = free_port()
    return Server(
        "baseline", [sys.executable, str(app_file), str(port)], dict(os.environ), port, "/", workdir
    )


def start_heaper(workdir: Path, engine: str, database_url: str, workers: int = 0) -> Server:
    data_dir = workdir / "data"
    data_dir.mkdir()
    port = free_port()
    env = dict(os.environ)
    for k in list(env):  # a developer's own HEAPER_* settings must not leak into the run
        if k.startswith("HEAPER_"):
            del env[k]
    env.update(HEAPER_AUTH_RATE_LIMIT="100000", HEAPER_LOG_LEVEL="warning")
    if workers:
        env["HEAPER_WORKERS"] = str(workers)
    argv = [sys.executable, "-m", "heaper_trio", "--port", str(port), "--data-dir", str(data_dir)]
    if engine == "postgres":
        env["HEAPER_AUTO_APPROVE"] = "true"
        argv += ["--database-url", database_url]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return Server("heaper", argv, env, port, "/api/health", workdir)


def login(url: str) -> tuple[str, dict[str, Any]]:
    """Log in once with a fresh key pair; returns the access token and the /api/me answer."""
    import trio

    from heaper_trio.client import HeaperClient, KeyPair

    async def go() -> tuple[str, dict[str, Any]]:
        async with HeaperClient(url, KeyPair.generate()) as c:
            await c.login()
            r = await c.post("/api/me", json={})
            if r.status_code != 200:
                raise RuntimeError(f"POST /api/me answered {r.status_code}: {r.text[:300]}")
            assert c.access_token is not None
            return c.access_token, r.json()

    return trio.run(go)


# -- load generators -------------------------------------------------------------------------


def lua_str(s: str) -> str:
    return json.dumps(s)  # a JSON string literal is a valid Lua string literal for ASCII


def run_wrk(
    workdir: Path, target: dict[str, Any], duration: float, concurrency: int, server_pid: int
) -> dict[str, Any]:
    headers = "\n".join(
        f"wrk.headers[{lua_str(k)}] = {lua_str(v)}" for k, v in target["headers"].items()
    )
    script = workdir / f"wrk_{target['name']}.lua"
    script.write_text(
        WRK_LUA
        % {
            "method": lua_str(target["method"]),
            "body": lua_str(target["body"]) if target["body"] else "nil",
            "headers": headers,
        }
    )
    secs = max(1, round(duration))
    argv = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{secs}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(script),
        target["url"],
    ]
    cpu0 = proc_cpu_s(server_pid)
    t0 = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 30)
    wall = time.monotonic() - t0
    cpu1 = proc_cpu_s(server_pid)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr or out.stdout}")
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"no summary in wrk output:\n{out.stdout}")
    s = json.loads(line[len("BENCH_JSON ") :])
    seconds = s["duration_us"] / 1e6
    errors = {
        k: s[k]
        for k in ("status_errors", "connect_errors", "read_errors", "write_errors", "timeouts")
        if s[k]
    }
    return {
        "requests": s["requests"],
        "seconds": seconds,
        "p50_us": s["p50_us"],
        "p99_us": s["p99_us"],
        "max_us": s["max_us"],
        "errors": errors,
        "server_cpu_s": cpu1 - cpu0,
        "cpu_window_s": wall,
    }


def run_httpx(
    target: dict[str, Any], duration: float, concurrency: int, server_pid: int | None
) -> dict[str, Any]:
    """Closed loop in a separate process (this script's ``_loadgen`` mode)."""
    spec = {**target, "duration": duration, "concurrency": concurrency, "server_pid": server_pid}
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "_loadgen", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=duration + 60,
    )
    if out.returncode != 0:
        raise RuntimeError(f"httpx load generator failed ({out.returncode}):\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def loadgen_main(spec_json: str) -> None:
    """Closed-loop generator: N workers, each one keep-alive connection, for ``duration``."""
    import httpx
    import trio

    spec = json.loads(spec_json)
    duration = float(spec["duration"])
    pid = spec.get("server_pid")
    content = spec["body"].encode() if spec["body"] else None
    latencies: list[float] = []
    errors: dict[str, int] = {}
    start = trio.Event()
    window = {"deadline": 0.0}  # set when every worker holds an open connection

    async def worker(connected: trio.Semaphore) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(timeout=10.0, limits=limits) as client:
            # one request outside the window opens the keep-alive connection
            await client.request(
                spec["method"], spec["url"], headers=spec["headers"], content=content
            )
            connected.release()
            await start.wait()
            while time.perf_counter() < window["deadline"]:
                t = time.perf_counter()
                try:
                    r = await client.request(
                        spec["method"], spec["url"], headers=spec["headers"], content=content
                    )
                except httpx.HTTPError as e:
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                    continue
                if r.status_code >= 400:
                    key = f"status_{r.status_code}"
                    errors[key] = errors.get(key, 0) + 1
                else:
                    latencies.append(time.perf_counter() - t)

    async def run() -> dict[str, float]:
        n_workers = int(spec["concurrency"])
        connected = trio.Semaphore(0, max_value=n_workers)
        async with trio.open_nursery() as nursery:
            for _ in range(n_workers):
                nursery.start_soon(worker, connected)
            with trio.fail_after(30):
                for _ in range(n_workers):
                    await connected.acquire()
            cpu0 = proc_cpu_s(pid) if pid else 0.0
            t0 = time.perf_counter()
            window["deadline"] = t0 + duration
            start.set()
        # workers stop starting requests at the deadline and finish the ones in flight
        seconds = time.perf_counter() - t0
        cpu1 = proc_cpu_s(pid) if pid else 0.0
        return {"cpu": cpu1 - cpu0, "seconds": seconds}

    res = trio.run(run)
    latencies.sort()

    def pct(p: float) -> int:
        if not latencies:
            return 0
        return int(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1e6)

    print(
        json.dumps(
            {
                "requests": len(latencies) + sum(errors.values()),
                "seconds": res["seconds"],
                "p50_us": pct(50),
                "p99_us": pct(99),
                "max_us": int(latencies[-1] * 1e6) if latencies else 0,
                "errors": errors,
                "server_cpu_s": res["cpu"],
                "cpu_window_s": res["seconds"],
            }
        )
    )


# -- orchestration ---------------------------------------------------------------------------


def measure(
    gen: str, workdir: Path, server: Server, target: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    log(f"{target['name']}: warm-up {args.warmup}s")
    if args.warmup > 0:
        if gen == "wrk":
            run_wrk(workdir, target, args.warmup, args.concurrency, server.pid)
        else:
            run_httpx(target, args.warmup, args.concurrency, None)
    log(f"{target['name']}: measuring {args.duration}s at concurrency {args.concurrency}")
    if gen == "wrk":
        raw = run_wrk(workdir, target, args.duration, args.concurrency, server.pid)
    else:
        raw = run_httpx(target, args.duration, args.concurrency, server.pid)
    if server.proc.poll() is not None:
        raise RuntimeError(f"{server.name} died during {target['name']}:\n{server.log_tail(20)}")
    n = raw["requests"]
    rps = n / raw["seconds"] if raw["seconds"] > 0 else 0.0
    result = {
        "method": target["method"],
        "path": target["path"],
        "requests": n,
        "seconds": round(raw["seconds"], 3),
        "req_per_s": round(rps, 1),
        "p50_ms": round(raw["p50_us"] / 1000, 3),
        "p99_ms": round(raw["p99_us"] / 1000, 3),
        "max_ms": round(raw["max_us"] / 1000, 3),
        "server_cpu_us_per_req": round(raw["server_cpu_s"] * 1e6 / n, 1) if n else None,
        "server_cpu_util": round(raw["server_cpu_s"] / raw["cpu_window_s"], 3)
        if raw["cpu_window_s"] > 0
        else None,
        "errors": raw["errors"],
    }
    log(
        f"{target['name']}: {result['req_per_s']} req/s, p50 {result['p50_ms']} ms, "
        f"p99 {result['p99_ms']} ms, {result['server_cpu_us_per_req']} µs CPU/req"
        + (f", errors {raw['errors']}" if raw["errors"] else "")
    )
    return result


def target(
    name: str,
    server: Server,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: str = "",
) -> dict[str, Any]:
    return {
        "name": name,
        "method": method,
        "path": path,
        "url": server.url + path,
        "headers": headers or {},
        "body": body,
    }


def log_summary(server: Server) -> dict[str, Any]:
    lines = [ln for ln in server.log_lines() if ln.strip()]
    return {"lines": len(lines), "tail": lines[-8:]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per target")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per target")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent connections")
    p.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="server processes (HEAPER_WORKERS); 0: the server's default (1 on SQLite, "
        "the usable CPUs but one on PostgreSQL). CPU per request counts every worker",
    )
    p.add_argument("--database-url", default="", help="postgresql:// URL (--engine postgres)")
    p.add_argument(
        "--generator",
        choices=("auto", "wrk", "httpx"),
        default="auto",
        help="load generator (auto: wrk if on PATH, else httpx)",
    )
    args = p.parse_args(argv)
    if args.engine == "postgres" and not args.database_url:
        p.error("--engine postgres needs --database-url")
    if args.engine == "sqlite" and args.database_url:
        p.error("--database-url only goes with --engine postgres")
    if args.duration <= 0 or args.concurrency < 1:
        p.error("--duration must be > 0 and --concurrency >= 1")
    wrk = shutil.which("wrk")
    gen = args.generator if args.generator != "auto" else ("wrk" if wrk else "httpx")
    if gen == "wrk" and not wrk:
        p.error("wrk is not on PATH")
    if gen == "wrk" and args.duration != round(args.duration):
        log(
            f"wrk takes whole seconds: --duration {args.duration} rounds to "
            f"{max(1, round(args.duration))}"
        )

    stop_servers_on_sigterm()  # the finally below still runs, so no server is left behind
    out: dict[str, Any] = {"load_generator": gen}
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="heaper-bench-") as tmp:
        workdir = Path(tmp)
        try:
            # Baseline first, alone on the machine.
            base = start_baseline(workdir)
            servers.append(base)
            base.wait_ready()
            log(f"baseline up on {base.url} (pid {base.pid})")
            out["baseline_hello"] = measure(
                gen, workdir, base, target("baseline_hello", base, "GET", "/"), args
            )
            base.stop()

            heaper = start_heaper(workdir, args.engine, args.database_url, args.workers)
            servers.append(heaper)
            startup_s = heaper.wait_ready()
            log(f"heaper_trio up on {heaper.url} (pid {heaper.pid}) in {startup_s:.2f}s")
            token, me = login(heaper.url)
            out["server_health"] = measure(
                gen, workdir, heaper, target("server_health", heaper, "GET", "/api/health"), args
            )
            out["server_me"] = measure(
                gen,
                workdir,
                heaper,
                target(
                    "server_me",
                    heaper,
                    "POST",
                    "/api/me",
                    {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                    "{}",
                ),
                args,
            )
            rc = heaper.stop()
            out["server_info"] = {
                "engine": args.engine,
                "startup_s": round(startup_s, 3),
                "exit_code": rc,
                "log": log_summary(heaper),
                "me_is_admin": me.get("is_admin"),
            }
        finally:
            for s in servers:
                try:
                    s.stop()
                except Exception as e:  # keep stopping the others
                    log(f"stopping {s.name}: {e!r}")

    base_rps = out["baseline_hello"]["req_per_s"]
    out["ratios"] = {
        "server_health_vs_baseline": round(out["server_health"]["req_per_s"] / base_rps, 3)
        if base_rps
        else None,
        "server_me_vs_baseline": round(out["server_me"]["req_per_s"] / base_rps, 3)
        if base_rps
        else None,
    }
    # The same comparison by server CPU per request (baseline µs / server µs): on a busy
    # machine, or when the load generator is the limit, req/s moves with everything else
    # running, while CPU per request moves much less.
    base_cpu = out["baseline_hello"]["server_cpu_us_per_req"]
    out["cpu_ratios"] = {
        f"{name}_vs_baseline": round(base_cpu / out[name]["server_cpu_us_per_req"], 3)
        if base_cpu and out[name]["server_cpu_us_per_req"]
        else None
        for name in ("server_health", "server_me")
    }
    notes = []
    util = out["baseline_hello"]["server_cpu_util"]
    if util is not None and util < 0.9:
        notes.append(
            f"baseline server used only {util:.0%} of a core: the load generator "
            f"({gen}) is likely the limit, which compresses the ratios toward 1"
        )
    for name in ("baseline_hello", "server_health", "server_me"):
        if out[name]["errors"]:
            notes.append(f"{name}: errors {out[name]['errors']}")
    if out["server_info"]["log"]["lines"]:
        notes.append("heaper_trio wrote to stderr; see server_info.log")
    out["notes"] = notes
    from importlib.metadata import version

    out["machine"] = {
        "nproc": os.cpu_count(),
        "nproc_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "concurrency": args.concurrency,
        "duration_s": max(1, round(args.duration)) if gen == "wrk" else args.duration,
        "warmup_s": args.warmup,
        "wrk_threads": 1 if gen == "wrk" else None,
        "engine": args.engine,
        "versions": {
            pkg: version(pkg) for pkg in ("hypercorn", "trio", "quart-trio", "httpx", "heaper_trio")
        },
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "_loadgen":
        loadgen_main(sys.argv[2])
        raise SystemExit(0)
    raise SystemExit(main())
