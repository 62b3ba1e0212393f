#!/usr/bin/env python3
"""The CPU of a push without HTTP: authentication, ``DocumentService.push`` (check, apply,
project, commit through the storage's writer, the answer's diff) and the answer's JSON, from
16 concurrent tasks in the server's own process, against another checkout in the same run.

Why: ``bench_push.py`` measures the whole server through wrk, which on a loaded machine moves
by more than the changes it is meant to judge; this leaves the HTTP stack out and counts the
CPU time of the process (all its threads: the SQLite writer too) per update, which other load
disturbs less. Each measurement runs in a fresh process on the given checkout
(``PYTHONPATH``), the two checkouts interleaved; the JSON gives each run, the medians and the
ratio (this ÷ compared: below 1 is less CPU). SQLite only, in a temporary data dir::

    ./.venv/bin/python scripts/bench_push_inproc.py --compare /work/wt/before --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


async def _measure(streams: int, per_stream: int) -> dict[str, float]:
    """One measurement, in this process, on the heaper_trio that ``PYTHONPATH`` names."""
    import trio
    from bench_sync import EditedBlock

    from heaper_trio.app import RunningServer, run_server
    from heaper_trio.client import HeaperClient, KeyPair
    from heaper_trio.settings import load_settings
    from heaper_trio.web.json_sync import push_json, push_request

    with tempfile.TemporaryDirectory() as tmp:
        overrides = {"host": "127.0.0.1", "port": 0, "data_dir": tmp + "/data"}
        settings = load_settings(environ={}, overrides={**overrides, "graceful_timeout": 1.0})
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            running: RunningServer = await nursery.start(
                partial(run_server, settings, shutdown=shutdown)
            )
            services = running.services
            async with HeaperClient(running.url, KeyPair.generate()) as client:
                await client.login()
                heap = (await client.post("/api/heap/add", json={"name": "x"})).json()["heap"]
                token = client.access_token or ""
            rnd = random.Random(7)
            pools = [[EditedBlock(rnd) for _ in range(10)] for _ in range(streams)]
            user = await services.accounts.authenticate(token)
            for pool in pools:  # created and cached, not measured
                for b in pool:
                    await services.documents.push(user, [push_request(b.push_item(heap["id"]))])
            bodies = []
            for pool in pools:
                items = []
                for i in range(per_stream):
                    b = pool[i % len(pool)]
                    b.type_word()
                    items.append(json.dumps(b.push_item(heap["id"])))
                bodies.append(items)

            async def stream(items: list[str]) -> None:
                for raw in items:
                    me = await services.accounts.authenticate(token)
                    outcomes = await services.documents.push(me, [push_request(json.loads(raw))])
                    assert outcomes[0].status.value == "ok", outcomes[0]
                    json.dumps([push_json(o) for o in outcomes])

            cpu0, wall0 = time.process_time(), time.perf_counter()
            async with trio.open_nursery() as pushing:
                for items in bodies:
                    pushing.start_soon(stream, items)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            shutdown.set()
    total = streams * per_stream
    return {
        "cpu_us_per_update": round(cpu / total * 1e6, 1),
        "updates_per_s": round(total / wall, 1),
    }


def _run_in(tree: Path, streams: int, per_stream: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    argv = [sys.executable, __file__, "--one", str(tree), "--streams", str(streams)]
    argv += ["--per-stream", str(per_stream)]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"{tree}: {out.stderr[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--compare", type=Path, help="another checkout, measured in the same runs")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--per-stream", type=int, default=150, help="updates per stream")
    p.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # a child: measure, print
    args = p.parse_args(argv)
    if args.one:
        sys.path[:0] = [str(args.one), str(HERE)]
        import trio

        print(json.dumps(trio.run(_measure, args.streams, args.per_stream)))
        return 0
    trees = {"this": HERE.parent}
    if args.compare:
        trees["compare"] = args.compare.resolve()
    runs: list[dict[str, Any]] = []
    for run in range(args.runs):
        order = list(trees.items())
        one = {}
        for label, tree in order if run % 2 == 0 else order[::-1]:
            one[label] = _run_in(tree, args.streams, args.per_stream)
            print(f"[bench] run {run} {label}: {one[label]}", file=sys.stderr)
        runs.append(one)
    out: dict[str, Any] = {"trees": {k: str(v) for k, v in trees.items()}, "runs": runs}
    for label in trees:
        out[label] = {
            k: statistics.median(r[label][k] for r in runs)
            for k in ("cpu_us_per_update", "updates_per_s")
        }
    if args.compare:
        ratios = [r["this"]["cpu_us_per_update"] / r["compare"]["cpu_us_per_update"] for r in runs]
        out["cpu_per_update_this_vs_compare"] = {
            "median": round(statistics.median(ratios), 3),
            "runs": [round(x, 3) for x in ratios],
        }
    out["machine"] = {"nproc": os.cpu_count(), "loadavg_at_end": os.getloadavg()}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
