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
import signal
import statistics
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

import pycrdt
import trio
from bench_delta import _admin_sql, start_heaper
from bench_http import _children, log, proc_cpu_s, stop_servers_on_sigterm

from heaper_trio.client import HeaperClient, KeyPair

LINE = "Some words of a long document, typed over the years, one paragraph after the other. "


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class BigBlock:
    def __init__(self, megabytes: float) -> None:
        self.id = str(uuid.uuid4())
        self.doc: pycrdt.Doc[Any] = pycrdt.Doc()
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


def rss_mb(pid: int) -> float:
    """The server's resident set (VmRSS) with its workers', in MB."""
    total = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total = int(line.split()[1]) / 1024
    return total + sum(rss_mb(child) for child in _children(pid))


async def create(client: HeaperClient, heap_id: str, mb: float) -> tuple[BigBlock, float]:
    block = BigBlock(mb)
    t0 = time.perf_counter()
    r = await client.post("/api/sync/push", json={"blocks": [block.item(heap_id)]})
    assert r.json()["blocks"][0]["status"] == "created", r.text
    return block, time.perf_counter() - t0


async def type_word(client: HeaperClient, pid: int, heap_id: str, block: BigBlock, k: int) -> Any:
    block.text.insert(3, f"w{k} ")
    item = block.item(heap_id)
    c0, t0 = proc_cpu_s(pid), time.perf_counter()
    r = await client.post("/api/sync/push", json={"blocks": [item]})
    took, cpu = time.perf_counter() - t0, proc_cpu_s(pid) - c0
    assert r.json()["blocks"][0]["status"] == "ok", r.text
    return took, cpu


def start_py_spy(args: argparse.Namespace, pid: int) -> subprocess.Popen[bytes]:
    """py-spy sampling the server while the edits run (speedscope for .json, else raw)."""
    fmt = "speedscope" if args.py_spy.endswith(".json") else "raw"
    argv = [args.py_spy_bin, "record", "-p", str(pid), "-o", args.py_spy, "-r", "200"]
    argv += ["--nonblocking", "-f", fmt]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def run(url: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every block is created first; then the edits go round the blocks, small note first, so
    each size's pushes are interleaved with the anchor's (the machine's noise hits all alike)."""
    async with HeaperClient(url, KeyPair.generate(), timeout=600) as client:
        await client.login()
        heap = (await client.post("/api/heap/add", json={"name": "Big"})).json()["heap"]
        names = ["anchor_small_note", *(f"{mb}MB" for mb in args.sizes)]
        blocks: dict[str, Any] = {}
        out: dict[str, dict[str, Any]] = {}
        for name, mb in zip(names, [0.0, *args.sizes], strict=True):
            blocks[name], created_s = await create(client, heap["id"], mb)
            out[name] = {
                "document_bytes": len(blocks[name].doc.get_update()),
                "create_s": round(created_s, 2),
            }
        times: dict[str, list[float]] = {n: [] for n in names}
        cpus: dict[str, list[float]] = {n: [] for n in names}
        for name in names:  # one warm-up push each (the first after a create fills caches)
            await type_word(client, pid, heap["id"], blocks[name], -1)
        rss_before = rss_mb(pid)
        spy = start_py_spy(args, pid) if args.py_spy else None
        if spy is not None:
            await trio.sleep(1.0)
        for k in range(args.edits):
            for name in names:
                took, cpu = await type_word(client, pid, heap["id"], blocks[name], k)
                times[name].append(took)
                cpus[name].append(cpu)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        rss_after = rss_mb(pid)
        for name in names:
            t = sorted(times[name])
            out[name].update(
                push_median_ms=round(statistics.median(t) * 1000, 1),
                push_spread_ms=[
                    round(t[len(t) // 4] * 1000, 1),
                    round(t[-1 - len(t) // 4] * 1000, 1),
                ],
                server_cpu_ms_per_push=round(sum(cpus[name]) / len(cpus[name]) * 1000, 1),
            )
            log(f"{name}: median {out[name]['push_median_ms']} ms")
        # each round's ratio against the anchor's push in the same round, then the median
        out["ratios_vs_small_note"] = {
            n: round(
                statistics.median(a / b for a, b in zip(times[n], times[names[0]], strict=True)), 2
            )
            for n in names[1:]
        }
        out["server_rss_mb"] = {
            "after_creates": round(rss_before, 1),
            "after_edits": round(rss_after, 1),
            "growth_per_push_kb": round(
                (rss_after - rss_before) * 1024 / (args.edits * len(names)), 1
            ),
        }
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=float, nargs="+", default=[0.8, 5.8])
    p.add_argument("--edits", type=int, default=15)
    p.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--database-url", default="")
    p.add_argument("--workers", type=int, default=1, help="server processes (py-spy needs 1)")
    p.add_argument(
        "--py-spy", default="", help="profile the server during the edits into this file"
    )
    p.add_argument("--py-spy-bin", default=str(Path(sys.executable).parent / "py-spy"))
    args = p.parse_args(argv)
    stop_servers_on_sigterm()  # a SIGTERM still stops the servers
    if (args.engine == "postgres") != bool(args.database_url):
        p.error("--database-url goes with --engine postgres, and only with it")
    cluster, url = args.database_url, ""
    if cluster:  # a scratch database of its own on that cluster
        name = "heaper_bench_bigdoc_" + uuid.uuid4().hex[:10]
        asyncio.run(_admin_sql(cluster, f"CREATE DATABASE {name}"))
        url = cluster.rsplit("/", 1)[0] + "/" + name
    try:
        with tempfile.TemporaryDirectory(prefix="heaper-bench-bigdoc-") as tmp:
            workers = {"HEAPER_WORKERS": str(args.workers)}
            server = start_heaper(Path(tmp), url, workers)
            try:
                server.wait_ready()
                out = trio.run(run, server.url, server.pid, args)
            finally:
                server.stop()
    finally:
        if cluster:
            asyncio.run(_admin_sql(cluster, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    out["engine"] = args.engine
    out["machine"] = {"nproc": os.cpu_count(), "loadavg_at_end": os.getloadavg()}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
