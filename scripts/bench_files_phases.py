"""Phases 2 and 3 of ``scripts/bench_files.py`` (thumbnails, folder scans) and the helpers the
three phases share. See that script's docstring for what is measured and why; this module is
not meant to be run on its own."""

from __future__ import annotations

import hashlib
import os
import random
import resource
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

import trio
from bench_http import CLK_TCK, log, proc_cpu_s

from heaper_trio.client import HeaperClient

MB = 1e6  # rates are in decimal MB/s, as disks and networks are quoted
MiB = 1 << 20
IMAGE_SIZE = (4032, 3024)  # 12 MP, a phone photo
THUMB_BOX = 256  # "small": what vipsthumbnail -s 256 and Pillow are asked for too
CONCURRENCY = 2  # = media_jobs' default and the cores of the machine this was written on
RUNNING = ("running", "aborting", "finishing")
POLL_S = 0.025
SCAN_TIMEOUT_S = 1800.0


# -- shared helpers ---------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def ms_stats(seconds: list[float]) -> dict[str, Any]:
    return {
        "n": len(seconds),
        "p50_ms": round(pct(seconds, 50) * 1e3, 1),
        "p99_ms": round(pct(seconds, 99) * 1e3, 1),
        "max_ms": round(max(seconds) * 1e3, 1) if seconds else 0.0,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def per_s(n: float, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else 0.0


def settle() -> None:
    """Write back what earlier steps left dirty, so it does not land in the next window."""
    os.sync()


class Window:
    """Wall seconds, a server process's CPU seconds and this (client) process's CPU seconds
    over a ``with`` block."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.seconds = self.cpu_s = self.client_cpu_s = self.busy_s = 0.0

    def __enter__(self) -> Self:
        self._c0 = proc_cpu_s(self.pid) if self.pid else 0.0
        self._p0 = time.process_time()
        self._b0 = machine_busy_s()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
        self.cpu_s = (proc_cpu_s(self.pid) - self._c0) if self.pid else 0.0
        self.client_cpu_s = time.process_time() - self._p0
        self.busy_s = machine_busy_s() - self._b0

    def util(self) -> dict[str, float]:
        """Cores' worth used by the server, this process (the client), and everything else
        on the machine (``other_cpu_util``: a baseline's own subprocess, kernel writeback, or
        a foreign process; the latter makes the window's figures suspect)."""
        s = self.seconds or 1e-9
        other = max(0.0, self.busy_s - self.cpu_s - self.client_cpu_s)
        return {
            "server_cpu_util": round(self.cpu_s / s, 3),
            "client_cpu_util": round(self.client_cpu_s / s, 3),
            "other_cpu_util": round(other / s, 3),
        }


def contended(tree: Any, path: str = "", limit: float = 0.3) -> list[str]:
    """Windows of at least half a second in which something else used over ``limit`` of a
    core (their figures are suspect on a 2-core machine)."""
    found = []
    if isinstance(tree, dict):
        if tree.get("other_cpu_util", 0) > limit and tree.get("seconds", 0) >= 0.5:
            found.append(f"{path}: the rest of the machine used {tree['other_cpu_util']} cores")
        for k, v in tree.items():
            found += contended(v, f"{path}.{k}" if path else k, limit)
    return found


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy (not idle, not waiting for I/O) since boot."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def check(r: Any, what: str, ok: tuple[int, ...] = (200,)) -> dict[str, Any]:
    if r.status_code not in ok:
        raise RuntimeError(f"{what} answered {r.status_code}: {r.text[:400]}")
    body = r.json()
    return body if isinstance(body, dict) else {"body": body}


async def closed_loop(
    n_workers: int, next_job: Callable[[], Any | None], run: Callable[[Any], Awaitable[None]]
) -> tuple[list[float], float]:
    """``n_workers`` tasks take jobs until ``next_job`` answers None; latencies and wall."""
    latencies: list[float] = []

    async def worker() -> None:
        while (job := next_job()) is not None:
            t = time.perf_counter()
            await run(job)
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(n_workers):
            nursery.start_soon(worker)
    return latencies, time.perf_counter() - t0


# -- phase 2: thumbnails ------------------------------------------------------------------------


def make_images(folder: Path, n: int) -> list[Path]:
    """``n`` distinct noisy 12 MP JPEGs (tests/media_samples.py), two processes at a time."""
    from tests.media_samples import noisy_jpeg

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"photo{i:03d}.jpg" for i in range(n)]
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(noisy_jpeg, paths, [IMAGE_SIZE] * n, [90] * n, range(n)))
    return paths


def find_vipsthumbnail(install: bool) -> tuple[str | None, str | None]:
    """The vipsthumbnail executable, installing Debian's libvips-tools if allowed and possible;
    else None and why."""
    exe = shutil.which("vipsthumbnail")
    if exe or not install:
        return exe, None if exe else "vipsthumbnail is not on PATH (--no-install given)"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "vipsthumbnail is not on PATH and apt-get as root is not available"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log("vipsthumbnail missing: apt-get install -y libvips-tools")
    out = subprocess.run(
        ["apt-get", "install", "-y", "libvips-tools"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    if out.returncode != 0:  # the package lists may be missing on a fresh machine
        subprocess.run(
            ["apt-get", "update"], capture_output=True, env=env, timeout=900, check=False
        )
        out = subprocess.run(
            ["apt-get", "install", "-y", "libvips-tools"],
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
            check=False,
        )
    exe = shutil.which("vipsthumbnail")
    if exe is None:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        return None, f"apt-get install -y libvips-tools failed: {' | '.join(tail)}"
    return exe, None


def vips_baseline(images: list[Path], out: Path, install: bool) -> dict[str, Any]:
    exe, reason = find_vipsthumbnail(install)
    if exe is None:
        return {"thumbs_per_s": None, "reason": reason}
    version = subprocess.run(
        [exe, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    out.mkdir()
    argv = [exe, "-s", str(THUMB_BOX), "-o", f"{out}/%s.webp[Q=80]", *map(str, images)]
    settle()
    cpu0, t0 = children_cpu_s(), time.perf_counter()
    run = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
    seconds, cpu = time.perf_counter() - t0, children_cpu_s() - cpu0
    made = len(list(out.glob("*.webp")))
    if run.returncode != 0 or made != len(images):
        return {
            "thumbs_per_s": None,
            "reason": f"vipsthumbnail exited {run.returncode} "
            f"with {made}/{len(images)} thumbnails: {run.stderr.strip()[-300:]}",
        }
    return {
        "command": f"vipsthumbnail -s {THUMB_BOX} -o DIR/%s.webp[Q=80] <{len(images)} files>",
        "version": version,
        "seconds": round(seconds, 3),
        "thumbs_per_s": per_s(len(images), seconds),
        "cpu_ms_per_thumb": round(cpu * 1e3 / len(images), 1),
    }


def _pillow_thumb(job: tuple[Path, Path]) -> None:
    from PIL import Image, ImageOps

    src, dst = job
    with Image.open(src) as im:
        im.thumbnail((THUMB_BOX, THUMB_BOX))  # JPEG draft (DCT scaling), reducing_gap 2
        ImageOps.exif_transpose(im).save(dst, "WEBP", quality=80)


def pillow_baseline(images: list[Path], out: Path) -> dict[str, Any]:
    out.mkdir()
    jobs = [(p, out / f"{p.stem}.webp") for p in images]
    settle()
    cpu0, t0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(_pillow_thumb, jobs))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {
        "method": f"Pillow open, thumbnail(({THUMB_BOX}, {THUMB_BOX})), exif_transpose, "
        f"WebP q80, {CONCURRENCY} threads in the benchmark process",
        "seconds": round(seconds, 3),
        "thumbs_per_s": per_s(len(images), seconds),
        "cpu_ms_per_thumb": round(cpu * 1e3 / len(images), 1),
    }


async def thumbnails(
    c: HeaperClient,
    pid: int,
    heap_id: str,
    images: list[Path],
    workdir: Path,
    warm_s: float,
    install: bool,
) -> dict[str, Any]:
    """Baselines first (the server sits idle: its CPU over them is reported), then upload,
    cold thumbnails, warm thumbnails."""
    n = len(images)
    out: dict[str, Any] = {
        "images": n,
        "image_px": list(IMAGE_SIZE),
        "image_mb_avg": round(sum(p.stat().st_size for p in images) / n / MB, 2),
        "concurrency": CONCURRENCY,
    }
    idle0 = proc_cpu_s(pid)
    log(f"thumbnails: vipsthumbnail over {n} images")
    vips = vips_baseline(images, workdir / "vips_out", install)
    log(
        f"thumbnails: vipsthumbnail {vips.get('thumbs_per_s')} thumbs/s"
        + (f" ({vips['reason']})" if vips.get("reason") else "")
    )
    pil = pillow_baseline(images, workdir / "pillow_out")
    log(f"thumbnails: Pillow {pil['thumbs_per_s']} thumbs/s")
    out["baselines"] = {
        "vipsthumbnail": vips,
        "pillow": pil,
        "server_idle_cpu_s": round(proc_cpu_s(pid) - idle0, 3),
    }

    log(f"thumbnails: uploading {n} images")
    hashes = []
    with Window(pid) as w:
        for i, path in enumerate(images):
            data = path.read_bytes()
            h = hashlib.sha256(data).hexdigest()
            r = await c.post(
                f"/api/upload/file/{heap_id}/photo-{i}",
                files={"file": (path.name, data, "image/jpeg")},
                data={"hash": h},
            )
            check(r, f"upload of {path.name}")
            hashes.append(h)
    out["upload"] = {"seconds": round(w.seconds, 3), "files_per_s": per_s(n, w.seconds)}

    async def get_thumb(h: str) -> None:
        r = await c.get(f"/api/file/{h}/thumbnail/small/x.jpg")
        if r.status_code != 200 or r.headers.get("content-type", "") != "image/webp":
            raise RuntimeError(
                f"thumbnail of {h} answered {r.status_code} "
                f"{r.headers.get('content-type')}: {r.text[:300]}"
            )

    settle()
    cold_jobs = iter(hashes)
    with Window(pid) as w:
        lat, _ = await closed_loop(CONCURRENCY, lambda: next(cold_jobs, None), get_thumb)
    out["cold"] = {
        "seconds": round(w.seconds, 3),
        "thumbs_per_s": per_s(n, w.seconds),
        **ms_stats(lat),
        "server_cpu_ms_per_thumb": round(w.cpu_s * 1e3 / n, 1),
        **w.util(),
    }
    log(f"thumbnails: cold {out['cold']['thumbs_per_s']} thumbs/s, p50 {out['cold']['p50_ms']} ms")

    deadline, k = 0.0, [0]

    def next_warm() -> str | None:
        if time.perf_counter() >= deadline:
            return None
        k[0] += 1
        return hashes[k[0] % n]

    deadline = time.perf_counter() + warm_s
    with Window(pid) as w:
        lat, _ = await closed_loop(CONCURRENCY, next_warm, get_thumb)
    out["warm"] = {
        "seconds": round(w.seconds, 3),
        "requests_per_s": per_s(len(lat), w.seconds),
        **ms_stats(lat),
        "server_cpu_us_per_req": round(w.cpu_s * 1e6 / max(1, len(lat)), 1),
        **w.util(),
    }
    log(f"thumbnails: warm {out['warm']['requests_per_s']} req/s")
    out["ratios"] = {
        "cold_vs_vipsthumbnail": ratio(out["cold"]["thumbs_per_s"], vips.get("thumbs_per_s")),
        "cold_vs_pillow": ratio(out["cold"]["thumbs_per_s"], pil["thumbs_per_s"]),
    }
    return out


# -- phase 3: folder scans -------------------------------------------------------------------


def make_tree(root: Path, n_files: int, per_folder: int = 100) -> dict[str, Any]:
    """``n_files`` files of 1-32 KiB random bytes, ``per_folder`` to a folder."""
    rnd = random.Random(7)
    total = 0
    for i in range(n_files):
        folder = root / f"d{i // per_folder:04d}"
        if i % per_folder == 0:
            folder.mkdir(parents=True)
        data = rnd.randbytes(rnd.randint(1024, 32 * 1024))
        (folder / f"f{i:06d}.bin").write_bytes(data)
        total += len(data)
    return {"files": n_files, "folders": -(-n_files // per_folder), "mb": round(total / MB, 1)}


def _find(tree: Path) -> int:
    out = subprocess.run(
        ["bash", "-c", 'find "$1" -type f | wc -l', "_", str(tree)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


def _walk_stat(tree: Path) -> int:
    n = 0
    for folder, _dirs, files in os.walk(tree):
        for name in files:
            os.stat(os.path.join(folder, name))
            n += 1
    return n


def _walk_hash(tree: Path) -> int:
    n = 0
    for folder, _dirs, files in os.walk(tree):
        for name in files:
            path = os.path.join(folder, name)
            os.stat(path)
            with open(path, "rb") as f:
                hashlib.file_digest(f, "sha256")
            n += 1
    return n


def scan_baselines(tree: Path, n_files: int) -> dict[str, Any]:
    """Median of 3 runs each; the tree was just written, so it is in the page cache, as it is
    for the server's scans right after."""
    out: dict[str, Any] = {}
    for name, fn, what in (
        ("find", _find, "find TREE -type f | wc -l"),
        ("os_walk_stat", _walk_stat, "Python os.walk + os.stat of every file"),
        (
            "os_walk_sha256",
            _walk_hash,
            (
                "Python os.walk + stat + SHA-256 of every file "
                "(the least a first scan must do; context)"
            ),
        ),
    ):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            count = fn(tree)
            times.append(time.perf_counter() - t0)
            if count != n_files:
                raise RuntimeError(f"{name} counted {count} files, expected {n_files}")
        s = sorted(times)[1]
        out[name] = {"method": what, "seconds": round(s, 4), "files_per_s": per_s(n_files, s)}
    return out


def _scans_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    scans = body.get("scans", body.get("body", []))
    return [s for s in scans if isinstance(s, dict)] if isinstance(scans, list) else []


async def run_scan(c: HeaperClient, pid: int, heap_id: str, tree: Path) -> dict[str, Any]:
    """POST /api/scan_folder, then poll GET /api/scans (the caller's jobs, finished ones too)
    until the job is no longer running."""
    with Window(pid) as w:
        started = check(
            await c.post("/api/scan_folder", json={"heap_id": heap_id, "path": str(tree)}),
            "POST /api/scan_folder",
            ok=(200, 201, 202),
        )
        scan_id = started.get("scan_id") or (started.get("scan") or {}).get("scan_id")
        last: dict[str, Any] = started.get("scan") or {}
        polls = 0
        with trio.fail_after(SCAN_TIMEOUT_S):
            while True:
                await trio.sleep(POLL_S)
                polls += 1
                body = check(await c.get("/api/scans?limit=100"), "GET /api/scans")
                mine = [
                    s
                    for s in _scans_of(body)
                    if s.get("scan_id") == scan_id
                    or (scan_id is None and s.get("path") == str(tree))
                ]
                if mine:
                    last = mine[0]
                if not mine or last.get("state") not in RUNNING:
                    break
    n = int(last.get("files_seen") or 0)
    keep = (
        "state",
        "files_seen",
        "files_done",
        "files_new",
        "files_changed",
        "files_unchanged",
        "files_missing",
        "folders",
        "duplicates",
        "skipped",
        "errors",
        "bytes_hashed",
        "files_per_s",
        "error",
    )
    return {
        "seconds": round(w.seconds, 3),
        "files_per_s": per_s(n, w.seconds),
        "server_cpu_s": round(w.cpu_s, 3),
        "server_cpu_ms_per_file": round(w.cpu_s * 1e3 / n, 3) if n else None,
        **w.util(),
        "polls": polls,
        "server_says": {k: last.get(k) for k in keep if k in last},
    }


async def scans(
    c: HeaperClient, pid: int, heap_id: str, tree: Path, n_files: int
) -> dict[str, Any]:
    log(f"scan: writing {n_files} files under {tree}")
    out: dict[str, Any] = {"tree": make_tree(tree, n_files)}
    settle()
    idle0 = proc_cpu_s(pid)
    out["baselines"] = scan_baselines(tree, n_files)
    out["baselines"]["server_idle_cpu_s"] = round(proc_cpu_s(pid) - idle0, 3)
    log(
        "scan: baselines "
        + ", ".join(
            f"{k} {v['files_per_s']} files/s"
            for k, v in out["baselines"].items()
            if isinstance(v, dict)
        )
    )
    for name in ("first_scan", "rescan_unchanged"):
        log(f"scan: {name}")
        out[name] = r = await run_scan(c, pid, heap_id, tree)
        log(
            f"scan: {name} {r['files_per_s']} files/s in {r['seconds']} s "
            f"({r['server_says'].get('state')})"
        )
        if r["server_says"].get("state") != "done":
            raise RuntimeError(f"{name} ended as {r['server_says']}")
    stats = await c.get(f"/api/heap/stats/{heap_id}")
    if stats.status_code == 200:
        out["heap_blocks_after"] = stats.json().get("blocks")
    b = out["baselines"]
    out["ratios"] = {
        f"{scan}_vs_{base}": ratio(out[scan]["files_per_s"], b[base]["files_per_s"])
        for scan in ("first_scan", "rescan_unchanged")
        for base in ("find", "os_walk_stat", "os_walk_sha256")
    }
    return out
