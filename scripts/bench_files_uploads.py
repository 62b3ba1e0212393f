"""Phase 1 of ``scripts/bench_files.py``: uploads (resumable and one-request) and their
baselines (disk, plain loopback PUT, bare hypercorn PUT). See that script's docstring for what
is measured and why. Run on its own, it measures uploads only, interleaved with the anchor
(``main``): each round PUTs the whole file to a bare hypercorn app, then the same chunks one at
a time, then a resumable upload to heaper_trio of fresh content 1 and 4 chunks at a time; it
prints ONE JSON object: medians and ratios to the bare PUT of the same run::

    .venv/bin/python scripts/bench_files_uploads.py --size-mib 128 --rounds 3
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
from bench_files_phases import MB, MiB, Window, check, per_s, ratio, settle
from bench_http import Server, free_port, log, stop_servers_on_sigterm

from heaper_trio.client import HeaperClient

PARALLEL = (1, 4)  # chunks in flight at once

PLAIN_PUT = textwrap.dedent("""
    import os, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    OUT = sys.argv[2]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects
        # headers and body go out in two sends: with Nagle on, the second waits for the
        # client's delayed ACK (~40 ms per request)
        disable_nagle_algorithm = True

        def _answer(self, body=b'{"success":true}'):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._answer()

        def do_PUT(self):
            left = int(self.headers["Content-Length"])
            name = self.path.strip("/").replace("/", "_") or "body"
            with open(os.path.join(OUT, name), "wb") as f:
                while left:
                    data = self.rfile.read(min(left, 1 << 20))
                    if not data:
                        raise ConnectionError("body cut short")
                    f.write(data)
                    left -= len(data)
                f.flush()
                os.fsync(f.fileno())
            self._answer()

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
""")

HYPERCORN_PUT = textwrap.dedent("""
    import os, sys
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    OUT = sys.argv[2]
    BODY = b'{"success":true}'

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
        name = scope["path"].strip("/").replace("/", "_") or "body"
        f = open(os.path.join(OUT, name), "wb") if scope["method"] == "PUT" else None
        try:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return
                if f is not None:
                    f.write(message.get("body", b""))
                if not message.get("more_body"):
                    break
            if f is not None:
                f.flush()
                await trio.to_thread.run_sync(os.fsync, f.fileno())
        finally:
            if f is not None:
                f.close()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(BODY)).encode())]})
        await send({"type": "http.response.body", "body": BODY})

    cfg = Config()
    cfg.bind = ["127.0.0.1:" + sys.argv[1]]
    cfg.keep_alive_timeout = 30  # as heaper_trio's hypercorn_config
    cfg.accesslog = None
    trio.run(serve, app, cfg)
""")


@dataclass(frozen=True)
class Source:
    path: Path
    size: int
    sha256: str


def random_file(path: Path, size: int) -> Source:
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            data = os.urandom(min(left, 8 * MiB))
            digest.update(data)
            f.write(data)
            left -= len(data)
    return Source(path, size, digest.hexdigest())


async def file_body(path: Path, offset: int, length: int) -> AsyncIterator[bytes]:
    """A body streamed from a file (in the page cache) in 1 MiB pieces."""
    with open(path, "rb") as f:  # noqa: ASYNC230 - page-cache reads, nothing else runs
        f.seek(offset)
        while length:
            data = f.read(min(length, MiB))
            if not data:
                raise RuntimeError(f"{path} is shorter than expected")
            length -= len(data)
            yield data


async def put_range(
    http: httpx.AsyncClient | HeaperClient, url: str, src: Source, offset: int, length: int
) -> httpx.Response:
    return await http.put(
        url,
        content=file_body(src.path, offset, length),
        headers={"Content-Length": str(length), "Content-Type": "application/octet-stream"},
    )


async def send_chunks(
    src: Source, chunk: int, parallel: int, send: Callable[[int, int, int], Awaitable[None]]
) -> None:
    """Chunks ``[i*chunk, (i+1)*chunk)`` sent by ``parallel`` tasks taking the next index."""
    indexes = iter(range(max(1, -(-src.size // chunk))))

    async def worker() -> None:
        for i in indexes:
            await send(i, i * chunk, min(chunk, src.size - i * chunk))

    async with trio.open_nursery() as nursery:
        for _ in range(parallel):
            nursery.start_soon(worker)


def rate(w: Window, nbytes: int) -> dict[str, Any]:
    return {
        "seconds": round(w.seconds, 3),
        "mb_per_s": per_s(nbytes / MB, w.seconds),
        "server_cpu_s": round(w.cpu_s, 3),
        **w.util(),
    }


# -- baselines ---------------------------------------------------------------------------------


def disk_baseline(src: Source, folder: Path) -> dict[str, Any]:
    out = {}
    for name, hashing in (("write_fsync", False), ("copy_sha256_fsync", True)):
        target = folder / f"disk-{name}.bin"
        settle()
        with Window(None) as w:
            digest = hashlib.sha256()
            with open(src.path, "rb") as f, open(target, "wb") as o:
                while data := f.read(MiB):
                    if hashing:
                        digest.update(data)
                    o.write(data)
                o.flush()
                os.fsync(o.fileno())
        target.unlink()
        out[name] = {"seconds": round(w.seconds, 3), "mb_per_s": per_s(src.size / MB, w.seconds)}
    return out


async def put_baseline(
    url: str, pid: int, a: Source, direct: Source, chunk: int, whole_only: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        await http.get("/")  # open the connection outside the windows

        async def send(tag: str, i: int, offset: int, length: int) -> None:
            check(await put_range(http, f"/{tag}/{i}", a, offset, length), f"PUT chunk {i}")

        settle()
        with Window(pid) as w:
            check(await put_range(http, "/whole", a, 0, a.size), "PUT whole")
        out["whole"] = rate(w, a.size)
        if whole_only:
            return out
        for p in PARALLEL:
            settle()
            with Window(pid) as w:
                await send_chunks(a, chunk, p, partial(send, f"c{p}"))
            out[f"chunks_{p}"] = rate(w, a.size)
        settle()
        with Window(pid) as w:
            check(await put_range(http, "/direct", direct, 0, direct.size), "PUT direct")
        out["direct_file"] = rate(w, direct.size)
    return out


def run_put_server(
    name: str, code: str, workdir: Path, a: Source, direct: Source, chunk: int, whole_only: bool
) -> dict[str, Any]:
    app, outdir = workdir / f"{name}.py", workdir / f"{name}_out"
    app.write_text(code)
    outdir.mkdir()
    port = free_port()
    server = Server(
        name,
        [sys.executable, str(app), str(port), str(outdir)],
        dict(os.environ),
        port,
        "/",
        workdir,
    )
    try:
        server.wait_ready()
        result = trio.run(put_baseline, server.url, server.pid, a, direct, chunk, whole_only)
    finally:
        server.stop()
        for f in outdir.iterdir():
            f.unlink()
    for k, v in result.items():
        log(f"{name} {k}: {v['mb_per_s']} MB/s")
    return result


# -- against the server ----------------------------------------------------------------------------


async def resumable(
    c: HeaperClient, pid: int, heap_id: str, block_id: str, src: Source, chunk: int, parallel: int
) -> dict[str, Any]:
    base = f"{heap_id}/{block_id}"

    async def send(i: int, offset: int, length: int) -> None:
        check(
            await put_range(c, f"/api/upload/chunk/{base}/{src.sha256}/{i}", src, offset, length),
            f"chunk {i}",
        )

    settle()
    with Window(pid) as total:
        with Window(pid) as w_init:
            init = check(
                await c.post(
                    f"/api/upload/init/{base}",
                    json={
                        "hash": src.sha256,
                        "size": src.size,
                        "chunk_size": chunk,
                        "name": src.path.name,
                        "mime_type": "application/octet-stream",
                    },
                ),
                "init",
            )
        if init.get("status") != "ready":
            raise RuntimeError(f"init answered {init}")
        with Window(pid) as w_chunks:
            await send_chunks(src, chunk, parallel, send)
        with Window(pid) as w_complete:
            done = check(await c.post(f"/api/upload/complete/{base}/{src.sha256}"), "complete")
    if done.get("status") != "complete" or done.get("file_hash") != src.sha256:
        raise RuntimeError(f"complete answered {done}")
    return {
        "chunks": init.get("total_chunks"),
        "parallel": parallel,
        "end_to_end": rate(total, src.size),
        "init_s": round(w_init.seconds, 3),
        "chunk_phase": rate(w_chunks, src.size),
        "complete": {
            "seconds": round(w_complete.seconds, 3),
            "server_cpu_s": round(w_complete.cpu_s, 3),
        },
    }


async def direct_upload(c: HeaperClient, pid: int, heap_id: str, src: Source) -> dict[str, Any]:
    settle()
    with Window(pid) as w, open(src.path, "rb") as f:  # noqa: ASYNC230 - as in file_body
        done = check(
            await c.post(
                f"/api/upload/file/{heap_id}/direct-1",
                files={"file": (src.path.name, f, "application/octet-stream")},
                data={"hash": src.sha256},
            ),
            "direct upload",
        )
    if done.get("file_hash") != src.sha256:
        raise RuntimeError(f"direct upload answered {done}")
    return rate(w, src.size)


async def uploads(
    c: HeaperClient, pid: int, heap_id: str, sources: list[Source], direct: Source, chunk: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p, src in zip(PARALLEL, sources):
        log(f"uploads: resumable, {p} chunk(s) at a time")
        out[f"resumable_{p}"] = r = await resumable(c, pid, heap_id, f"big-{p}", src, chunk, p)
        log(
            f"uploads: resumable_{p}: {r['end_to_end']['mb_per_s']} MB/s end to end, "
            f"chunks {r['chunk_phase']['mb_per_s']} MB/s, complete {r['complete']['seconds']} s"
        )
    log("uploads: direct (multipart)")
    out["direct"] = await direct_upload(c, pid, heap_id, direct)
    log(f"uploads: direct {out['direct']['mb_per_s']} MB/s")
    return out


def upload_ratios(up: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    put, hyp, disk = base["plain_put"], base["hypercorn_put"], base["disk"]
    if "error" in up:
        return {}
    out: dict[str, Any] = {}
    for p in PARALLEL:
        r = up[f"resumable_{p}"]
        out[f"resumable_{p}_end_to_end_vs_plain_put"] = ratio(
            r["end_to_end"]["mb_per_s"], put["whole"]["mb_per_s"]
        )
        out[f"resumable_{p}_chunk_phase_vs_plain_put_chunks_{p}"] = ratio(
            r["chunk_phase"]["mb_per_s"], put[f"chunks_{p}"]["mb_per_s"]
        )
        out[f"resumable_{p}_complete_s_vs_local_copy_sha256_fsync_s"] = ratio(
            r["complete"]["seconds"], disk["copy_sha256_fsync"]["seconds"]
        )
    out["direct_vs_plain_put_same_file"] = ratio(
        up["direct"]["mb_per_s"], put["direct_file"]["mb_per_s"]
    )
    out["context_hypercorn_put_vs_plain_put"] = ratio(
        hyp["whole"]["mb_per_s"], put["whole"]["mb_per_s"]
    )
    out["context_plain_put_vs_disk_write_fsync"] = ratio(
        put["whole"]["mb_per_s"], disk["write_fsync"]["mb_per_s"]
    )
    return out


# -- standalone: uploads only, interleaved with the bare hypercorn PUT -------------------------


def variant(base: Source, path: Path, n: int) -> Source:
    """``base`` with its first 8 bytes replaced: new content (the server would deduplicate a
    file it has), the rest straight from the page cache."""
    digest = hashlib.sha256()
    with open(base.path, "rb") as f, open(path, "wb") as o:
        head = n.to_bytes(8, "big") + f.read(MiB)[8:]
        while head:
            digest.update(head)
            o.write(head)
            head = f.read(8 * MiB)
    return Source(path, base.size, digest.hexdigest())


async def interleaved(
    hyp: Server, heapers: list[Server], base: Source, work: Path, chunk: int, rounds: int
) -> dict[str, list[dict[str, Any]]]:
    """Each round: the whole file PUT to bare hypercorn, the same chunks PUT to it one at a
    time, then resumable uploads to each heaper_trio (chunks 1 and 4 at a time; with
    ``--against``, the two servers take turns going first) of fresh content."""
    from heaper_trio.client import KeyPair

    runs: dict[str, list[dict[str, Any]]] = {}
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=hyp.url, timeout=600))
        await http.get("/")
        clients: list[tuple[Server, HeaperClient, str]] = []
        for heaper in heapers:
            c = await stack.enter_async_context(
                HeaperClient(heaper.url, KeyPair.generate(), timeout=600)
            )
            await c.login()
            heap = check(await c.post("/api/heap/add", json={"name": "bench"}), "heap")["id"]
            clients.append((heaper, c, heap))
        n = 0
        for r in range(rounds):

            async def put(tag: str, i: int, offset: int, length: int) -> None:
                check(await put_range(http, f"/{tag}/{i}", base, offset, length), "PUT")

            settle()
            with Window(hyp.pid) as w:
                check(await put_range(http, f"/whole{r}", base, 0, base.size), "PUT whole")
            runs.setdefault("hypercorn_put_whole", []).append(rate(w, base.size))
            settle()
            with Window(hyp.pid) as w:
                await send_chunks(base, chunk, 1, partial(put, f"c{r}"))
            runs.setdefault("hypercorn_put_chunks_1", []).append(rate(w, base.size))
            for f in (work / "hyp_out").iterdir():
                f.unlink()
            for p in PARALLEL:
                turn = clients if r % 2 == 0 else clients[::-1]
                for heaper, c, heap in turn:
                    n += 1
                    src = variant(base, work / "variant.bin", n)
                    res = await resumable(c, heaper.pid, heap, f"b{n}", src, chunk, p)
                    runs.setdefault(f"{prefix(heaper.name)}resumable_{p}", []).append(res)
            log(f"round {r + 1}/{rounds} done")
    return runs


def prefix(server: str) -> str:
    """Keys of this checkout's server as they always were; ``against_`` for the other."""
    return "" if server == "heaper" else f"{server}_"


def median_of(runs: list[dict[str, Any]], *keys: str) -> float:
    values: list[float] = []
    for run in runs:
        value: Any = run
        for k in keys:
            value = value[k]
        values.append(value)
    return sorted(values)[len(values) // 2]


def main() -> int:
    import argparse
    import json
    import tempfile

    p = argparse.ArgumentParser(description="resumable uploads vs a bare hypercorn PUT")
    p.add_argument("--size-mib", type=int, default=128)
    p.add_argument("--chunk-mib", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--against",
        type=Path,
        help="another checkout of heaper_trio (e.g. main): its server takes turns with this "
        "one in every round, so a change is measured before and after in the same run",
    )
    args = p.parse_args()
    stop_servers_on_sigterm()  # a SIGTERM still stops the servers
    chunk = args.chunk_mib * MiB
    with tempfile.TemporaryDirectory(prefix="heaper-bench-uploads-") as tmp:
        work = Path(tmp)
        base = random_file(work / "base.bin", args.size_mib * MiB)
        (work / "hyp.py").write_text(HYPERCORN_PUT)
        (work / "hyp_out").mkdir()
        (work / "data").mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEAPER_")}
        env.update(HEAPER_AUTH_RATE_LIMIT="100000", HEAPER_LOG_LEVEL="warning")
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        hp, sp = free_port(), free_port()
        argv = [sys.executable, str(work / "hyp.py"), str(hp), str(work / "hyp_out")]
        hyp = Server("hypercorn_put", argv, dict(os.environ), hp, "/", work)
        argv = [sys.executable, "-m", "heaper_trio", "--port", str(sp), "--data-dir"]
        heapers = [Server("heaper", [*argv, str(work / "data")], env, sp, "/api/health", work)]
        if args.against is not None:
            (work / "data_against").mkdir()
            env2 = {**env, "PYTHONPATH": str(args.against.resolve())}
            ap = free_port()
            argv2 = [sys.executable, "-m", "heaper_trio", "--port", str(ap), "--data-dir"]
            heapers.append(
                Server(
                    "against", [*argv2, str(work / "data_against")], env2, ap, "/api/health", work
                )
            )
        try:
            hyp.wait_ready()
            for heaper in heapers:
                heaper.wait_ready()
            runs = trio.run(interleaved, hyp, heapers, base, work, chunk, args.rounds)
        finally:
            hyp.stop()
            for heaper in heapers:
                heaper.stop()
    anchor = median_of(runs["hypercorn_put_whole"], "mb_per_s")
    out: dict[str, Any] = {
        "size_mib": args.size_mib,
        "chunk_mib": args.chunk_mib,
        "rounds": args.rounds,
        "median_mb_per_s": {
            "hypercorn_put_whole": anchor,
            "hypercorn_put_chunks_1": median_of(runs["hypercorn_put_chunks_1"], "mb_per_s"),
        },
        "ratios_to_hypercorn_put_whole": {},
        "ratios_per_round": {},
        "complete_s_per_round": {},
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "runs": runs,
    }
    hyp_runs = runs["hypercorn_put_whole"]
    for name in [h.name for h in heapers]:
        for p_ in PARALLEL:
            key = f"{prefix(name)}resumable_{p_}"
            ups = runs[key]
            for phase in ("end_to_end", "chunk_phase"):
                mbs = median_of(ups, phase, "mb_per_s")
                out["median_mb_per_s"][f"{key}_{phase}"] = mbs
                out["ratios_to_hypercorn_put_whole"][f"{key}_{phase}"] = ratio(mbs, anchor)
                # each round's ratio to its own anchor: the spread under a noisy machine
                out["ratios_per_round"][f"{key}_{phase}"] = [
                    ratio(u[phase]["mb_per_s"], h["mb_per_s"])
                    for u, h in zip(ups, hyp_runs, strict=True)
                ]
            out["median_mb_per_s"][f"{key}_complete_s"] = median_of(ups, "complete", "seconds")
            out["complete_s_per_round"][key] = [u["complete"]["seconds"] for u in ups]
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
