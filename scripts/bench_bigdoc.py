#!/usr/bin/env python3
"""Push into a large document: does a typed word cost in proportion to the update or to the
document (issue 12 item 4)?

A real ``python -m heaper_trio`` server (SQLite, temporary data dir); one account, one heap.
For each size (default 0.8 MB and 5.8 MB of encoded Yjs state), a block made of paragraphs
is pushed whole once (not measured), then ``--edits`` single words are typed into one of its
paragraphs, each pushed on its own (``POST /api/sync/push``, one at a time) and timed; the
median and the server's CPU per push are reported, and the ratio between the sizes. The
anchor is the same push into a small note (3 paragraphs) in the same run: a push that costs
in proportion to the update takes about as long whatever the document's size.

    ./.venv/bin/python scripts/bench_bigdoc.py                # 0.8 and 5.8 MB, 15 edits each
    ./.venv/bin/python scripts/bench_bigdoc.py --sizes 0.8 --edits 30
    ./.venv/bin/python scripts/bench_bigdoc.py --engine postgres --database-url postgresql://...

On PostgreSQL the server runs on a scratch database of that cluster, dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pycrdt
import trio
from bench_delta import _admin_sql, start_heaper
from bench_http import log, proc_cpu_s

from heaper_trio.client import HeaperClient, KeyPair

LINE = "Some words of a long document, typed over the years, one paragraph after the other. "


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class BigBlock:
    def __init__(self, megabytes: float) -> None:
        self.id = str(uuid.uuid4())
        self.doc = pycrdt.Doc()
        content = self.doc.get("content_v0", type=pycrdt.XmlFragment)
        with self.doc.transaction():
            self.doc.get("meta_v0", type=pycrdt.Map)["type"] = "document"
            title = self.doc.get("title_v0", type=pycrdt.XmlFragment)
            title.children.append(pycrdt.XmlElement("paragraph", contents=[pycrdt.XmlText("Big")]))
            n = max(3, int(megabytes * 1e6 / (len(LINE) + 12)))
            for i in range(n):
                content.children.append(
                    pycrdt.XmlElement("paragraph", contents=[pycrdt.XmlText(f"{i} {LINE}")])
                )
        self.text = content.children[len(content.children) // 2].children[0]
        self.synced = b"\x00"

    def item(self, heap_id: str) -> dict[str, Any]:
        update = self.doc.get_update(self.synced)
        self.synced = self.doc.get_state()
        return {
            "block_id": self.id,
            "workspace_id": heap_id,
            "update": b64(update),
            "state_vector": b64(self.synced),  # the answer carries only what it lacks
        }


async def measure(client: HeaperClient, pid: int, heap_id: str, mb: float, edits: int) -> Any:
    block = BigBlock(mb)
    size = len(block.doc.get_update())
    t0 = time.perf_counter()
    r = await client.post("/api/sync/push", json={"blocks": [block.item(heap_id)]})
    assert r.json()["blocks"][0]["status"] == "created", r.text
    created_s = time.perf_counter() - t0
    times, cpu = [], []
    for k in range(edits):
        block.text.insert(3, f"w{k} ")
        item = block.item(heap_id)
        c0, t0 = proc_cpu_s(pid), time.perf_counter()
        r = await client.post("/api/sync/push", json={"blocks": [item]})
        times.append(time.perf_counter() - t0)
        cpu.append(proc_cpu_s(pid) - c0)
        assert r.json()["blocks"][0]["status"] == "ok", r.text
    log(f"{size / 1e6:.2f} MB: median {statistics.median(times) * 1000:.1f} ms")
    return {
        "document_bytes": size,
        "create_s": round(created_s, 2),
        "push_median_ms": round(statistics.median(times) * 1000, 1),
        "push_p90_ms": round(sorted(times)[int(len(times) * 0.9)] * 1000, 1),
        "server_cpu_ms_per_push": round(statistics.median(cpu) * 1000, 1),
    }


async def run(url: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    async with HeaperClient(url, KeyPair.generate(), timeout=600) as client:
        await client.login()
        heap = (await client.post("/api/heap/add", json={"name": "Big"})).json()["heap"]
        out: dict[str, Any] = {
            "anchor_small_note": await measure(client, pid, heap["id"], 0.0, args.edits)
        }
        for mb in args.sizes:
            out[f"{mb}MB"] = await measure(client, pid, heap["id"], mb, args.edits)
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=float, nargs="+", default=[0.8, 5.8])
    p.add_argument("--edits", type=int, default=15)
    p.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--database-url", default="")
    args = p.parse_args(argv)
    if (args.engine == "postgres") != bool(args.database_url):
        p.error("--database-url goes with --engine postgres, and only with it")
    cluster, url = args.database_url, ""
    if cluster:  # a scratch database of its own on that cluster
        name = "heaper_bench_bigdoc_" + uuid.uuid4().hex[:10]
        asyncio.run(_admin_sql(cluster, f"CREATE DATABASE {name}"))
        url = cluster.rsplit("/", 1)[0] + "/" + name
    try:
        with tempfile.TemporaryDirectory(prefix="heaper-bench-bigdoc-") as tmp:
            server = start_heaper(Path(tmp), url)
            try:
                server.wait_ready()
                out = trio.run(run, server.url, server.pid, args)
            finally:
                server.stop()
    finally:
        if cluster:
            asyncio.run(_admin_sql(cluster, f"DROP DATABASE IF EXISTS {name}"))
    out["engine"] = args.engine
    anchor = out["anchor_small_note"]["push_median_ms"]
    out["ratios_vs_small_note"] = {
        k: round(v["push_median_ms"] / anchor, 2) for k, v in out.items() if k.endswith("MB")
    }
    out["machine"] = {"nproc": os.cpu_count(), "loadavg_at_end": os.getloadavg()}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
