#!/usr/bin/env python3
"""``scripts/bench_files.py --objects``: heaper_trio on an object store (``files_backend =
"s3"``) against a direct client of the same store, the same bytes, in the same run.

What it measures, ``--runs`` (3) times, interleaved (the order rotates each run), reporting
the median of each figure and of each run's ratio:

* ``server``: a file of ``--size-mib`` (64) MiB of random bytes sent as a resumable upload
  (``--chunk-mib`` (8) MiB chunks, one at a time, then complete: parts in the store, joined,
  hashed as it streams back, copied under ``files/<hash>``), then downloaded whole through
  ``/api/file/<hash>/raw`` (ranged GETs of the store with read-ahead) and as ``--ranges``
  (32) ranged GETs of 1 MiB at random offsets, through the server.
* ``direct``: boto3 (the server's client), in this process, against the same store: the same
  bytes uploaded as a multipart upload of the same part size, downloaded whole, and the same
  ranges fetched, one at a time.
* ``compare`` (with ``--compare DIR``): the server again, importing the heaper_trio tree at
  DIR (another checkout: the code before a change), on the same store, in the same runs.
* ``server_on_local_disk`` (with ``--local``): the server on ``files_backend = "local"``.

``ratios`` are server / direct MB/s: what the server's path (HTTP in, a local spool per
chunk, the hash, the copy; HTTP out for downloads) costs next to talking to the store directly.
Each run uses fresh bytes (a new hash), so no upload is deduplicated.

The store: moto's standalone server on loopback (started here) unless ``--s3-endpoint`` and
``--s3-bucket`` name another one (MinIO, Garage; credentials from ``AWS_*`` variables). moto
keeps objects in its process memory and is itself Python, so on it both sides are bounded
by moto: the ratios say more than the absolute figures. One JSON object goes to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import trio
from bench_files import machine, server_env, start_heaper
from bench_files_phases import MB, MiB, check
from bench_files_uploads import random_file
from bench_http import Server, free_port, log, stop_servers_on_sigterm
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from heaper_trio.client import HeaperClient, KeyPair

RANGE = MiB
METRICS = ("upload_MBps", "download_MBps", "ranges_MBps")


def mbps(nbytes: int, seconds: float) -> float:
    return round(nbytes / MB / seconds, 1) if seconds > 0 else 0.0


def start_moto(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "moto.log").open("wb"),
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("moto's server did not start") from None
            time.sleep(0.1)


def direct(
    client: Any, bucket: str, src: Path, size: int, chunk: int, ranges: list[int]
) -> dict[str, Any]:
    key = f"bench/{uuid.uuid4().hex}"
    cfg = TransferConfig(multipart_threshold=chunk, multipart_chunksize=chunk, max_concurrency=1)
    t = time.perf_counter()
    client.upload_file(str(src), bucket, key, Config=cfg)
    up = time.perf_counter() - t
    t = time.perf_counter()
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    got = 0
    while data := body.read(MiB):
        got += len(data)
    whole = time.perf_counter() - t
    assert got == size
    t = time.perf_counter()
    for first in ranges:
        r = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={first}-{first + RANGE - 1}")
        r["Body"].read()
    ranged = time.perf_counter() - t
    return {
        "upload_MBps": mbps(size, up),
        "download_MBps": mbps(size, whole),
        "ranges_MBps": mbps(RANGE * len(ranges), ranged),
        "range_ms_mean": round(ranged / len(ranges) * 1000, 2),
    }


async def through_server(
    url: str, key: KeyPair, src: Path, size: int, sha: str, chunk: int, ranges: list[int]
) -> dict[str, Any]:
    async with HeaperClient(url, key, timeout=600) as c:
        await c.login()
        heap = check(await c.post("/api/heap/add", json={"name": "bench"}), "heap")["id"]
        block = f"bench-{sha[:12]}"  # a block of its own each run (ids are global)
        t = time.perf_counter()
        init = check(
            await c.post(
                f"/api/upload/init/{heap}/{block}",
                json={"hash": sha, "size": size, "chunk_size": chunk, "name": "b.bin"},
            ),
            "init",
        )
        step = init["chunk_size"]
        with open(src, "rb") as f:  # noqa: ASYNC230 - the page cache; nothing else runs
            for i in range(init["total_chunks"]):
                f.seek(i * step)
                check(
                    await c.put(
                        f"/api/upload/chunk/{heap}/{block}/{sha}/{i}", content=f.read(step)
                    ),
                    "chunk",
                )
        chunks = time.perf_counter() - t
        check(await c.post(f"/api/upload/complete/{heap}/{block}/{sha}"), "complete")
        up = time.perf_counter() - t
        t = time.perf_counter()
        got = 0
        async with c.http.stream(
            "GET", f"/api/file/{sha}/raw/b.bin", headers=c.auth_headers()
        ) as r:
            async for data in r.aiter_bytes(MiB):
                got += len(data)
        whole = time.perf_counter() - t
        assert got == size, got
        t = time.perf_counter()
        for first in ranges:
            r = await c.get(
                f"/api/file/{sha}/raw/b.bin",
                headers={"Range": f"bytes={first}-{first + RANGE - 1}"},
            )
            assert r.status_code == 206 and len(r.content) == RANGE
        ranged = time.perf_counter() - t
    return {
        "upload_MBps": mbps(size, up),
        "chunks_MBps": mbps(size, chunks),
        "complete_s": round(up - chunks, 3),
        "download_MBps": mbps(size, whole),
        "ranges_MBps": mbps(RANGE * len(ranges), ranged),
        "range_ms_mean": round(ranged / len(ranges) * 1000, 2),
    }


def fresh(path: Path, run: int) -> str:
    """New bytes at the file's start (so a new hash: nothing deduplicated); its SHA-256."""
    with open(path, "r+b") as f:
        f.write(run.to_bytes(8, "big") + os.urandom(24))
        f.seek(0)
        return hashlib.file_digest(f, "sha256").hexdigest()


def median_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: round(statistics.median(r[k] for r in results), 3) for k in results[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=64)
    p.add_argument("--chunk-mib", type=int, default=8)
    p.add_argument("--ranges", type=int, default=32)
    p.add_argument("--runs", type=int, default=3, help="interleaved runs; medians reported")
    p.add_argument("--compare", type=Path, help="another heaper_trio tree, measured alike")
    p.add_argument("--local", action="store_true", help="also a server on the local disk")
    p.add_argument("--s3-endpoint", default="")
    p.add_argument("--s3-bucket", default="")
    args = p.parse_args(argv)
    stop_servers_on_sigterm()  # a SIGTERM still stops the servers
    size, chunk = args.size_mib * MiB, args.chunk_mib * MiB
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-secret")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    started, load_at_start = time.monotonic(), [round(x, 2) for x in os.getloadavg()]
    moto = None
    servers: dict[str, Server] = {}
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="heaper-bench-objects-") as tmp:
        workdir = Path(tmp)
        try:
            endpoint, bucket = args.s3_endpoint, args.s3_bucket or f"bench-{uuid.uuid4().hex[:8]}"
            if not endpoint:
                moto, endpoint = start_moto(workdir)
            client = boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
            )
            if not args.s3_bucket:
                client.create_bucket(Bucket=bucket)
            src = random_file(workdir / "big.bin", size).path
            rng = random.Random(7)
            ranges = [rng.randrange(0, size - RANGE) for _ in range(args.ranges)]
            s3 = {
                "HEAPER_FILES_BACKEND": "s3",
                "HEAPER_S3_ENDPOINT": endpoint,
                "HEAPER_S3_BUCKET": bucket,
            }
            sides = {"server": server_env(**s3)}
            if args.compare:
                sides["compare"] = server_env(code=args.compare.resolve(), **s3)
            if args.local:
                sides["server_on_local_disk"] = server_env()
            for name, env in sides.items():
                (workdir / name).mkdir()
                servers[name] = start_heaper(name, workdir / name, env, workdir)
                servers[name].wait_ready()
            order = ["direct", *sides]
            keys = {name: KeyPair.generate() for name in sides}
            for run in range(args.runs):
                for name in order[run % len(order) :] + order[: run % len(order)]:
                    sha = fresh(src, run * 10 + order.index(name))
                    log(f"run {run + 1}/{args.runs}: {name}, {args.size_mib} MiB")
                    if name == "direct":
                        got = direct(client, bucket, src, size, chunk, ranges)
                    else:
                        url, key = servers[name].url, keys[name]  # the first user: approved
                        got = trio.run(through_server, url, key, src, size, sha, chunk, ranges)
                    results.setdefault(name, []).append(got)
        finally:
            for server in servers.values():
                server.stop()
            if moto is not None:
                moto.terminate()
                moto.wait(10)
    out: dict[str, Any] = {
        "store": "moto (loopback, in memory)" if not args.s3_endpoint else args.s3_endpoint,
        "size_mib": args.size_mib,
        "chunk_mib": args.chunk_mib,
        "ranges": {"count": args.ranges, "size_mib": RANGE // MiB},
        "runs": args.runs,
        "compare": str(args.compare) if args.compare else None,
        **{name: median_of(runs) for name, runs in results.items()},
    }
    for name in sides:  # each run's ratio to the direct client of the same run, then medians
        out[f"ratios_{name}" if name != "server" else "ratios"] = {
            k: round(
                statistics.median(
                    s[k] / d[k] for s, d in zip(results[name], results["direct"], strict=True)
                ),
                3,
            )
            for k in METRICS
        }
    out["per_run"] = results
    out["machine"] = machine(started, load_at_start)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
