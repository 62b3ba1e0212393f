"""What backup and restore share: the backup's layout and manifest names, the one-line error,
terminal progress, hashing copies, the temporary name renamed when complete, and finding the
PostgreSQL client programs."""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from heaper_trio.errors import StartupError

MANIFEST = "manifest.json"
FORMAT = "heaper_trio backup"
VERSION = 1
PG_DUMP = "postgres.dump"
CONFIG = "config.toml"
# the data directory's layout: services/file_store.FileStore.store and
# services/media/client_thumbnails.ClientThumbnails.root (not importable names there)
STORE = Path("files", "sha256")
CLIENT_THUMBNAILS = Path("thumbnails", "client")
HASH = re.compile(r"[0-9a-f]{64}")
CHUNK = 1 << 20


class BackupError(StartupError):
    """One line for the operator; the CLI prints it and exits 2."""


class Progress:
    """``\\r``-updated lines on a terminal (stderr), nothing otherwise."""

    def __init__(self, what: str, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.on = self.stream.isatty()
        self.what = what
        self._last = 0.0
        self._width = 0

    def show(self, text: str, force: bool = False) -> None:
        if not self.on:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        line = f"{self.what}: {text}"
        self.stream.write("\r" + line.ljust(self._width))
        self._width = len(line)
        self.stream.flush()

    def done(self, text: str) -> None:
        if self.on:
            self.show(text, force=True)
            self.stream.write("\n")
            self.stream.flush()

    def warn(self, text: str) -> None:
        if self.on and self._width:
            self.stream.write("\n")
            self._width = 0
        print(f"heaper_trio: {self.what}: warning: {text}", file=self.stream)


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# -- files ------------------------------------------------------------------------------------
def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hash_file(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def copy_hashed(src: Path, dst: Path) -> tuple[str, int]:
    """Copy (synced to disk) and hash in one read; (sha256, size)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    h, size = hashlib.sha256(), 0
    with src.open("rb") as fin, dst.open("wb") as fout:
        while chunk := fin.read(CHUNK):
            h.update(chunk)
            fout.write(chunk)
            size += len(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    shutil.copymode(src, dst)
    return h.hexdigest(), size


def store_rel(hash: str) -> Path:
    """A stored file's place under a data directory (``FileStore.store_path``)."""
    return STORE / hash[:2] / hash[2:4] / hash


def stored_hashes(data: Path) -> list[str]:
    root = data / STORE
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for p in root.glob("??/??/*")
        if HASH.fullmatch(p.name) and p == data / store_rel(p.name)
    )


def tree(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


# -- the temporary name -------------------------------------------------------------------------
def partial_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.partial-{os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(dest: Path) -> None:
    """Temporary directories of killed runs for the same DEST (their process is gone)."""
    for p in dest.parent.glob(f".{glob.escape(dest.name)}.partial-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def refuse_non_empty(path: Path, what: str) -> None:
    if path.is_dir() and not any(path.iterdir()):
        return
    if path.exists() or path.is_symlink():
        raise BackupError(f"{what}: {path} already exists and is not an empty directory")


def finish(stage: Path, dest: Path) -> None:
    """Rename the complete temporary directory to ``dest`` (an empty ``dest`` is replaced)."""
    fsync_dir(stage)
    os.rename(stage, dest)
    fsync_dir(dest.parent)


# -- PostgreSQL binaries ------------------------------------------------------------------------
def find_pg_binary(name: str) -> str:
    """As scripts/pg_cluster.sh looks: ``pg_config --bindir``, then PATH, then
    /usr/lib/postgresql/*/bin (newest first)."""
    dirs: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10
            )
            if out.returncode == 0 and out.stdout.strip():
                dirs.append(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    on_path = shutil.which(name)
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda d: [int(x) for x in re.findall(r"\d+", d)],
        reverse=True,
    )
    for found in [
        *(os.path.join(d, name) for d in dirs),
        on_path,
        *(os.path.join(d, name) for d in versions),
    ]:
        if found and os.access(found, os.X_OK):
            return found
    raise BackupError(
        f"{name} not found (looked in pg_config --bindir, PATH, /usr/lib/postgresql/*/bin); "
        "install the PostgreSQL client programs (Debian: apt install postgresql-client)"
    )


def last_line(text: bytes) -> str:
    lines = [ln for ln in text.decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "no message"
