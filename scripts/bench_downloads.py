#!/usr/bin/env python3
"""Download and small-answer cost of a real heaper_trio server, against another tree measured
alternately in the same run (``--compare DIR``; without it, this tree against itself).

Every HTTP write goes through hypercorn's ``TCPServer.protocol_send``, which web/send_bound.py
replaces (a deadline only while a write waits for a client). Two loads touch it: whole
downloads of a stored file over loopback (each 1 MiB write fills the socket and waits) and
small answers one after another (``GET /api/health``, one write each). For each, the server's
CPU per GB or per request (``/proc/PID/stat``) and the rate; ``ratios`` are this tree / the
compared one, per round, with medians and ranges::

    ./.venv/bin/python scripts/bench_downloads.py --compare /path/to/other/tree --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_files import machine, server_env, start_heaper
from bench_http import CLK_TCK

from heaper_trio.client import HeaperClient

ROOT = Path(__file__).resolve().parent.parent


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def prepare(url: str, size: int) -> tuple[str, str]:
    """(token, file hash) of a stored file of ``size`` bytes."""
    async with HeaperClient(url) as client:
        await client.login()
        r = await client.post("/api/heap/add", json={"name": "bench"})
        heap = r.json()["heap"]["id"]
        data = os.urandom(size)
        r = await client.post(
            f"/api/upload/file/{heap}/blk-bench", files={"file": ("f.bin", data, "x/y")}
        )
        assert r.status_code == 200, r.text
        return str(client.access_token), str(r.json()["file_hash"])


def measure(url: str, pid: int, token: str, file_hash: str, downloads: int, smalls: int) -> dict:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        got = 0
        cpu0, t0 = cpu_s(pid), time.perf_counter()
        for _ in range(downloads):
            with http.stream("GET", f"/api/file/{file_hash}/raw/f.bin") as r:
                for part in r.iter_bytes(1 << 20):
                    got += len(part)
        cpu1, t1 = cpu_s(pid), time.perf_counter()
        for _ in range(smalls):
            assert http.get("/api/health").status_code == 200
        cpu2, t2 = cpu_s(pid), time.perf_counter()
    gb = got / 1e9
    return {
        "download_mb_s": round(got / 1e6 / (t1 - t0), 1),
        "download_cpu_s_per_gb": round((cpu1 - cpu0) / gb, 3),
        "small_req_s": round(smalls / (t2 - t1), 1),
        "small_cpu_us_per_req": round((cpu2 - cpu1) / smalls * 1e6, 1),
    }


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": min(values), "max": max(values)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--compare", type=Path, default=ROOT, help="the other tree (default: this)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--size-mib", type=int, default=64)
    p.add_argument("--downloads", type=int, default=4, help="whole downloads per round")
    p.add_argument("--smalls", type=int, default=1500, help="small requests per round")
    args = p.parse_args()
    started, load = time.monotonic(), [round(x, 2) for x in os.getloadavg()]
    trees = {"this": ROOT, "compare": args.compare.resolve()}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="bench_downloads_") as tmp:
        work = Path(tmp)
        servers = {
            name: start_heaper(name, work / name, server_env(code=code), work)
            for name, code in trees.items()
        }
        try:
            prepared = {}
            for name, server in servers.items():
                server.wait_ready()
                prepared[name] = trio.run(prepare, server.url, args.size_mib << 20)
            for i in range(args.rounds):
                order = list(servers) if i % 2 == 0 else list(reversed(servers))
                for name in order:
                    s = servers[name]
                    runs[name].append(
                        measure(s.url, s.pid, *prepared[name], args.downloads, args.smalls)
                    )
        finally:
            for server in servers.values():
                server.stop()
    keys = runs["this"][0].keys()
    result = {
        "trees": {k: str(v) for k, v in trees.items()},
        "runs": runs,
        "this": {k: summary([r[k] for r in runs["this"]]) for k in keys},
        "compare": {k: summary([r[k] for r in runs["compare"]]) for k in keys},
        "ratios": {
            k: summary([a[k] / b[k] for a, b in zip(runs["this"], runs["compare"], strict=True)])
            for k in keys
        },
        "machine": machine(started, load),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
