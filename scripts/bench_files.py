#!/usr/bin/env python3
"""File benchmark of a real heaper_trio server: upload MB/s, thumbnails/s and folder-scan
files/s, each against a baseline measured in the same run on the same machine.

What it measures, one phase after another (never in parallel; the machine has 2 cores):

* ``uploads``: a file of ``--size-mib`` (256) MiB of random bytes, sent as a resumable upload
  (init, chunks of ``--chunk-mib`` (8) MiB sent one at a time (``resumable_1``) and 4 at a time
  (``resumable_4``, another file of the same size, or the server would deduplicate it),
  complete): MB/s end to end and for the chunk phase alone, and the seconds of complete (the
  server assembles the chunks, hashes, fsyncs, records). Then a one-request multipart upload of
  a ``--direct-mib`` (64) MiB file (``direct``). Baselines, run before the server starts:
  ``plain_put``: the same bytes PUT over loopback to a minimal server written here
  (``http.server.ThreadingHTTPServer``, HTTP/1.1 keep-alive, the body streamed to a file in
  1 MiB reads, then fsync), with the same client code (httpx, bodies streamed from the file in
  1 MiB pieces): the whole file in one PUT, the same chunks one and 4 at a time, and the direct
  file in one PUT. ``hypercorn_put``: the whole file PUT to a bare ASGI app on
  ``hypercorn.trio`` (the HTTP stack heaper_trio runs on) that writes each body piece to a file
  and fsyncs: how much of the gap is the stack. ``disk``: the same bytes written and fsynced
  by this process, and copied with SHA-256 inline and fsynced (what complete does, without a
  server), for context.
* ``thumbnails``: ``--thumbs`` (40) distinct noisy 12 MP JPEGs (tests/media_samples.py
  ``noisy_jpeg``), uploaded, then ``GET /api/file/<hash>/thumbnail/small/x.jpg`` for each
  (cold cache: each is made on request) at concurrency 2 (the server's ``media_jobs``):
  thumbnails/s, p50/p99 ms, server CPU per thumbnail; then the same URLs again for a few
  seconds (warm cache): requests/s. Baselines, run first while the server sits idle:
  ``vipsthumbnail -s 256 -o DIR/%s.webp[Q=80] <all files>`` in one process run (Debian's
  libvips-tools; installed with apt-get if missing and root, unless ``--no-install``; if it
  cannot be had, its figures are null with the reason), and Pillow in this process
  (``thumbnail((256, 256))``, which uses JPEG draft mode, ``exif_transpose``, WebP q80) on 2
  threads.
* ``scan``: only if this build serves ``POST /api/scan_folder`` (looked up in
  ``GET /api/openapi.json``; otherwise ``{"skipped": ...}``). ``--scan-files`` (10,000) files
  of 1-32 KiB of random bytes in folders of 100, under a folder the server has as
  ``HEAPER_SCAN_ROOTS``; a first scan and a rescan with nothing changed, each timed from the
  POST until ``GET /api/scans`` (polled every 25 ms) shows the job no longer running:
  files/s, server CPU per file, and the job's own counters. Baselines, median of 3 each, the
  tree in the page cache as it is for the server: ``find TREE -type f | wc -l``, Python
  ``os.walk`` + ``os.stat``, and (context) ``os.walk`` + stat + SHA-256 of every file.

Server: ``python -m heaper_trio --port P --data-dir D`` (embedded SQLite) as a subprocess with
``HEAPER_AUTH_RATE_LIMIT=100000 HEAPER_LOG_LEVEL=warning HEAPER_SCAN_ROOTS=<a temp folder>``;
the benchmark account is its first login, so the admin. Client: ``heaper_trio.client
.HeaperClient`` (httpx) under trio in this process; its CPU share is reported
(``client_cpu_util``) next to the server's (``server_cpu_util``, from ``/proc/PID/stat``). All
traffic goes to 127.0.0.1; the page cache is written back (``sync``) before each window.
Each window also reports ``other_cpu_util``: the cores the rest of the machine kept busy
(``/proc/stat`` minus server and client), and ``machine.foreign_cpu`` names the processes
outside this benchmark that used CPU during the run (sampled once a second): on 2 cores, a
test suite running meanwhile skews everything, and ``notes`` says where.

Why baselines: absolute figures depend on the disk (fsync above all), the CPU and its load.
Each ``ratios`` entry is server / baseline from the same run, which is what compares between
runs and machines: for uploads, a plain loopback PUT of the same bytes with the same client is
the ceiling for "receive bytes durably over HTTP", so the ratio is the cost of the server's
own work (framework, checks, chunk files, assembly, hashing, recording); for thumbnails,
libvips and bare Pillow are what a dedicated tool does with the same images; for scans,
``find`` and ``os.walk`` only list the tree, so their ratios are far below 1 by nature (a first
scan hashes and records every file); the rescan ratio shows what an unchanged file costs.
MB is 10^6 bytes. The phases live in ``bench_files_uploads.py`` and ``bench_files_phases.py``
(thumbnails, scans, shared helpers) beside this script.

Run (prints ONE JSON object on stdout; progress goes to stderr)::

    ./.venv/bin/python scripts/bench_files.py --quick      # small sizes, under a minute
    ./.venv/bin/python scripts/bench_files.py              # 256 MiB, 40 photos, 10,000 files
    ./.venv/bin/python scripts/bench_files.py --size-mib 1024 --thumbs 80 --scan-files 50000
    ./.venv/bin/python scripts/bench_files.py --objects   # on an object store: see
                                                          # bench_files_objects.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import trio
from bench_files_phases import (
    MiB,
    check,
    contended,
    make_images,
    scans,
    settle,
    thumbnails,
)
from bench_files_uploads import (
    HYPERCORN_PUT,
    PARALLEL,
    PLAIN_PUT,
    disk_baseline,
    random_file,
    run_put_server,
    upload_ratios,
    uploads,
)
from bench_http import CLK_TCK, Server, free_port, log

from heaper_trio.client import HeaperClient, KeyPair

SERVER_ENV = {"HEAPER_AUTH_RATE_LIMIT": "100000", "HEAPER_LOG_LEVEL": "warning"}
QUICK = {"size_mib": 64, "direct_mib": 32, "thumbs": 12, "scan_files": 2000, "warm_s": 2.0}
DEFAULTS = {"size_mib": 256, "direct_mib": 64, "thumbs": 40, "scan_files": 10_000, "warm_s": 3.0}


def server_env(*, code: Path = ROOT, **extra: str) -> dict[str, str]:
    """The environment of a heaper_trio server under test: ours without HEAPER_* settings,
    SERVER_ENV and ``extra`` on top, importing the tree at ``code``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEAPER_")}
    env.update(SERVER_ENV, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
    return env


def start_heaper(name: str, data_dir: Path, env: dict[str, str], workdir: Path) -> Server:
    """``python -m heaper_trio`` on a free port (``wait_ready`` is the caller's)."""
    port = free_port()
    argv = [sys.executable, "-m", "heaper_trio", "--port", str(port), "--data-dir", str(data_dir)]
    return Server(name, argv, env, port, "/api/health", workdir)


def machine(started: float, load_at_start: list[float], **extra: Any) -> dict[str, Any]:
    """The JSON's ``machine`` part: what the figures were measured on, and the load."""
    return {
        "nproc": os.cpu_count(),
        "nproc_usable": len(os.sched_getaffinity(0)),
        "loadavg_at_start": load_at_start,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        **extra,
        "total_run_s": round(time.monotonic() - started, 1),
    }


class ForeignCpu:
    """Once a second, the CPU time of processes outside this benchmark's process tree: on a
    2-core machine, another workload running meanwhile skews every figure, and this names it.
    (Reading ~200 small /proc files a second costs this process a few ms per second.)"""

    def __init__(self) -> None:
        self.used: dict[int, float] = {}
        self.cmd: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _snapshot() -> dict[int, tuple[int, float]]:
        out = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                raw = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            f = raw[raw.rindex(")") + 2 :].split()
            out[int(entry.name)] = (int(f[1]), (int(f[11]) + int(f[12])) / CLK_TCK)
        return out

    def _run(self) -> None:
        me, prev = os.getpid(), self._snapshot()
        while not self._stop.wait(1.0):
            cur = self._snapshot()
            ours = {me}
            for _ in range(4):  # deep enough: servers, pool workers, bash -c "find | wc"
                ours |= {pid for pid, (ppid, _) in cur.items() if ppid in ours}
            for pid, (_, cpu) in cur.items():
                delta = cpu - prev[pid][1] if pid in prev else cpu  # or new since
                if pid not in ours and delta > 0:
                    self.used[pid] = self.used.get(pid, 0.0) + delta
                    if pid not in self.cmd:
                        try:
                            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                            self.cmd[pid] = cmd.replace(b"\0", b" ").decode(errors="replace")[:100]
                        except OSError:
                            self.cmd[pid] = "?"
            prev = cur

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def top(self, n: int = 5, least_s: float = 0.5) -> list[dict[str, Any]]:
        busy = sorted(self.used.items(), key=lambda kv: -kv[1])[:n]
        return [
            {"pid": pid, "cmd": self.cmd.get(pid) or "[kernel]", "cpu_s": round(cpu, 2)}
            for pid, cpu in busy
            if cpu >= least_s
        ]


async def against_server(
    server: Server, key: KeyPair, args: argparse.Namespace, inputs: dict[str, Any], workdir: Path
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    errors: dict[str, str] = {}
    async with HeaperClient(server.url, key, timeout=600) as c:
        await c.login()
        paths = check(await c.get("/api/openapi.json"), "openapi").get("paths", {})

        async def heap(name: str) -> str:
            return str(check(await c.post("/api/heap/add", json={"name": name}), "heap")["id"])

        async def up() -> dict[str, Any]:
            return await uploads(
                c,
                server.pid,
                await heap("bench uploads"),
                inputs["big"],
                inputs["direct"],
                args.chunk_mib * MiB,
            )

        async def th() -> dict[str, Any]:
            return await thumbnails(
                c,
                server.pid,
                await heap("bench photos"),
                inputs["images"],
                workdir,
                args.warm_s,
                args.install,
            )

        async def sc() -> dict[str, Any]:
            if "/api/scan_folder" not in paths:
                return {"skipped": "no scan_folder route in this build"}
            return await scans(
                c,
                server.pid,
                await heap("bench scan"),
                inputs["scan_root"] / "tree",
                args.scan_files,
            )

        phases: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = [
            ("uploads", up),
            ("thumbnails", th),
            ("scan", sc),
        ]
        for name, phase in phases:
            try:
                out[name] = await phase()
            except Exception as e:
                log(f"{name} failed: {e!r}")
                errors[name] = repr(e)[:1000]
                out[name] = {"error": repr(e)[:1000], "server_log_tail": server.log_tail(15)}
            if server.proc.poll() is not None:
                raise RuntimeError(f"the server died during {name}:\n{server.log_tail(20)}")
    out["phase_errors"] = errors
    return out


# -- orchestration ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--objects"]:  # files_backend = "s3" against a direct client of the store
        from bench_files_objects import main as objects

        return objects(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, under a minute in all: "
        + ", ".join(f"{k}={v}" for k, v in QUICK.items()),
    )
    p.add_argument("--size-mib", type=int, help="resumable upload size (256; quick 64)")
    p.add_argument("--direct-mib", type=int, help="one-request upload size (64; quick 32)")
    p.add_argument("--chunk-mib", type=int, default=8, help="resumable chunk size (8)")
    p.add_argument("--thumbs", type=int, help="12 MP photos to thumbnail (40; quick 12)")
    p.add_argument("--scan-files", type=int, help="files in the scanned tree (10000; quick 2000)")
    p.add_argument("--warm-s", type=float, help="seconds of warm thumbnail requests (3; quick 2)")
    p.add_argument(
        "--no-install",
        dest="install",
        action="store_false",
        help="do not apt-get install libvips-tools when vipsthumbnail is missing",
    )
    args = p.parse_args(argv)
    for k, v in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if min(args.size_mib, args.direct_mib, args.chunk_mib, args.thumbs, args.scan_files) < 1:
        p.error("sizes and counts must be >= 1")
    if args.chunk_mib > 64 or args.direct_mib > 256:
        p.error("--chunk-mib is at most 64 and --direct-mib at most 256 (server defaults)")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    out: dict[str, Any] = {
        "client": "heaper_trio.client.HeaperClient (httpx) under trio, in "
        "the benchmark process; baselines use httpx the same way"
    }
    server: Server | None = None
    with ForeignCpu() as foreign, tempfile.TemporaryDirectory(prefix="heaper-bench-files-") as tmp:
        workdir = Path(tmp)
        try:
            log(f"inputs: 2 x {args.size_mib} MiB, {args.direct_mib} MiB, {args.thumbs} photos")
            big = [random_file(workdir / f"big{n}.bin", args.size_mib * MiB) for n in PARALLEL]
            direct = random_file(workdir / "direct.bin", args.direct_mib * MiB)
            images = make_images(workdir / "photos", args.thumbs)
            scan_root = workdir / "scan_root"
            scan_root.mkdir()
            settle()

            log("baselines: disk, plain PUT, hypercorn PUT (no heaper server running)")
            base: dict[str, Any] = {"disk": disk_baseline(big[0], workdir)}
            chunk = args.chunk_mib * MiB
            base["plain_put"] = run_put_server(
                "plain_put", PLAIN_PUT, workdir, big[0], direct, chunk, False
            )
            base["hypercorn_put"] = run_put_server(
                "hypercorn_put", HYPERCORN_PUT, workdir, big[0], direct, chunk, True
            )

            data_dir = workdir / "data"
            data_dir.mkdir()
            env = server_env(HEAPER_SCAN_ROOTS=str(scan_root))
            server = start_heaper("heaper", data_dir, env, workdir)
            startup_s = server.wait_ready()
            log(f"heaper_trio up on {server.url} (pid {server.pid}) in {startup_s:.2f}s")
            inputs = {"big": big, "direct": direct, "images": images, "scan_root": scan_root}
            res = trio.run(against_server, server, KeyPair.generate(), args, inputs, workdir)
            rc = server.stop()
            lines = [ln for ln in server.log_lines() if ln.strip()]
            out["uploads"] = {
                "size_mib": args.size_mib,
                "chunk_mib": args.chunk_mib,
                "direct_mib": args.direct_mib,
                "server": res["uploads"],
                "baselines": base,
            }
            out["thumbnails"] = res["thumbnails"]
            out["scan"] = res["scan"]
            out["server_info"] = {
                "startup_s": round(startup_s, 3),
                "exit_code": rc,
                "env": {**SERVER_ENV, "HEAPER_SCAN_ROOTS": "<temp dir>"},
                "log": {
                    "lines": len(lines),
                    "tracebacks": sum("Traceback" in ln for ln in lines),
                    "tail": lines[-10:],
                },
            }
        finally:
            if server is not None:
                try:
                    server.stop()
                except Exception as e:
                    log(f"stopping the server: {e!r}")

    out["ratios"] = {
        "uploads": upload_ratios(out["uploads"]["server"], out["uploads"]["baselines"]),
        "thumbnails": out["thumbnails"].get("ratios", {}),
        "scan": out["scan"].get("ratios", {}),
    }
    notes = [f"{k} failed: {v}" for k, v in res["phase_errors"].items()]
    notes += contended({k: out[k] for k in ("uploads", "thumbnails", "scan")})
    if foreign.top():
        notes.append("processes outside this benchmark used CPU meanwhile; see machine.foreign_cpu")
    if out["server_info"]["log"]["lines"]:
        notes.append("heaper_trio wrote to stderr; see server_info.log")
    if out["thumbnails"].get("baselines", {}).get("vipsthumbnail", {}).get("reason"):
        notes.append(
            "vipsthumbnail baseline missing: "
            + out["thumbnails"]["baselines"]["vipsthumbnail"]["reason"]
        )
    out["notes"] = notes
    from importlib.metadata import version

    out["machine"] = machine(
        started,
        load_at_start,
        quick=args.quick,
        foreign_cpu=foreign.top(),
        versions={
            pkg: version(pkg)
            for pkg in ("hypercorn", "trio", "quart-trio", "httpx", "pillow", "heaper_trio")
        },
    )
    print(json.dumps(out, indent=2))
    return 1 if res["phase_errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
