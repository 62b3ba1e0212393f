#!/usr/bin/env python3
"""HTTP push on PostgreSQL against a raw asyncpg insert per commit, in the same run (issue 12
item 4): ``bench_sync.py``'s baseline and push-throughput phases only (no big heaps), so the
group commit can be measured in a minute.

The baseline is ``bench_sync.postgres_baseline`` (asyncpg ``executemany`` into a logged scratch
table, one transaction per row and per 100 rows); the pushes are ``bench_sync.throughput``
(single blocks one stream at a time, 16 concurrent streams, batches of 100). Prints ONE JSON
object with both and the ratios::

    ./.venv/bin/python scripts/bench_pg_push.py --database-url postgresql://...  --duration 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import trio
from bench_http import stop_servers_on_sigterm
from bench_sync import CONCURRENCY, postgres_baseline, start_heaper, throughput

from heaper_trio.client import HeaperClient, KeyPair


async def pushes(url: str, server: Any, args: argparse.Namespace) -> dict[str, Any]:
    async with HeaperClient(url, KeyPair.generate(), timeout=300) as client:
        await client.login()
        heap = (await client.post("/api/heap/add", json={"name": "Push"})).json()["heap"]
        return await throughput(client, heap["id"], args, server)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url", required=True)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=0.5)
    args = p.parse_args(argv)
    stop_servers_on_sigterm()  # a SIGTERM still stops the server
    out: dict[str, Any] = {}
    out["baseline"] = asyncio.run(postgres_baseline(args.database_url, 60, args.duration))
    with tempfile.TemporaryDirectory(prefix="heaper-bench-pgpush-") as tmp:
        server = start_heaper(Path(tmp), "postgres", args.database_url)
        try:
            server.wait_ready()
            out["push_throughput"] = trio.run(pushes, server.url, server, args)
        finally:
            server.stop()
    base1 = out["baseline"]["rows_1_per_commit"]["rows_per_s"]
    tp = out["push_throughput"]
    out["ratios_vs_asyncpg_1_row_commits"] = {
        "single_sequential": round(tp["single_sequential"]["updates_per_s"] / base1, 3),
        f"single_concurrency{CONCURRENCY}": round(
            tp[f"single_concurrency{CONCURRENCY}"]["updates_per_s"] / base1, 3
        ),
    }
    out["machine"] = {"nproc": os.cpu_count(), "loadavg_at_end": os.getloadavg()}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
