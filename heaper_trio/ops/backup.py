"""``python -m heaper_trio backup DEST``: a consistent backup of a running server.

A backup is a directory laid out like a data directory (the SQLite database or a
``pg_dump`` archive, the server key, the file store, client thumbnails) plus the config file
the server ran with and ``manifest.json``: every file's SHA-256 and size. It is built under a
hidden temporary name beside DEST and renamed to DEST once complete, manifest last: a backup
killed half way never looks complete (a later backup removes its leftovers).

Consistency, while the server runs: the store writes a file's bytes before the database row
that names them, and deletes bytes only after deleting the row, so the database never
references bytes the store lacks. The order here is:

1. copy every file the store holds now (the store is content-addressed: a file never changes);
2. take the database snapshot (SQLite online backup; PostgreSQL: ``pg_dump`` of an exported
   snapshot) and read the stored files it references;
3. copy the referenced files uploaded between 1 and 2, and drop copies of files the snapshot
   does not reference (deleted, or uploaded after it: they are not in the backup).

Step 1 makes a file deleted after the snapshot (emptying the trash during a long backup)
harmless: its bytes were copied before. Only a file both uploaded during step 1 and deleted
for good right after step 2 can be gone; it is listed under ``missing`` in the manifest with
a warning, and the backup still completes (its block comes back without those bytes).

With ``files_backend = "s3"`` the stored files are in the bucket, not here: the backup holds
the database, key, thumbnails and config, says so in the manifest (``files_in_bucket``) and on
the terminal, and the bucket is backed up by the store's own means (versioning, replication;
docs/self-hosting.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from heaper_trio import __version__
from heaper_trio.keys import SERVER_KEY_FILE
from heaper_trio.ops.common import (
    CLIENT_THUMBNAILS,
    CONFIG,
    FORMAT,
    MANIFEST,
    PG_DUMP,
    VERSION,
    BackupError,
    Progress,
    copy_hashed,
    find_pg_binary,
    finish,
    fsync_dir,
    hash_file,
    human_size,
    last_line,
    partial_name,
    refuse_non_empty,
    remove_leftovers,
    store_rel,
    stored_hashes,
    tree,
)
from heaper_trio.settings import Settings
from heaper_trio.storage import database_exists
from heaper_trio.storage import snapshot as snap


def backup(settings: Settings, dest: str | Path, config_path: str | None = None) -> dict[str, Any]:
    """Write a complete backup to ``dest`` (new or empty); returns the manifest."""
    data = settings.data_path
    dest = Path(dest).expanduser().absolute()
    key = data / SERVER_KEY_FILE
    if not database_exists(settings):
        raise BackupError(f"backup: no database in {data}; pass the server's --data-dir")
    if not key.is_file():
        raise BackupError(f"backup: no server key in {data}; pass the server's --data-dir")
    refuse_non_empty(dest, "backup")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(dest)
        stage = partial_name(dest)
        stage.mkdir(mode=0o700)  # it holds the server key
    except OSError as e:
        raise BackupError(f"backup: cannot write {dest}: {e.strerror or e}") from None
    try:
        manifest = _backup_into(stage, settings, config_path)
        finish(stage, dest)
        return manifest
    except OSError as e:  # disk full, permissions: one line, nothing left behind
        shutil.rmtree(stage, ignore_errors=True)
        where = f"{e.filename}: " if e.filename else ""
        raise BackupError(f"backup: {where}{e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _backup_into(stage: Path, settings: Settings, config_path: str | None) -> dict[str, Any]:
    data = settings.data_path
    progress = Progress("backup")
    entries: dict[str, dict[str, Any]] = {}
    missing: dict[str, str] = {}

    def add(rel: Path, sha: str, size: int) -> None:
        entries[rel.as_posix()] = {"sha256": sha, "size": size}

    # 1. what the store holds now
    early: dict[str, int] = {}
    damaged: set[str] = set()
    in_bucket = settings.files_backend == "s3"
    if in_bucket:
        progress.warn(
            f"stored files are in the bucket {settings.s3_bucket!r}, not copied here: "
            "back it up by the store's own means (docs/self-hosting.md)"
        )
    hashes = [] if in_bucket else stored_hashes(data)
    copied = 0
    for i, h in enumerate(hashes):
        progress.show(f"files {i}/{len(hashes)} ({human_size(copied)})")
        try:
            sha, size = copy_hashed(data / store_rel(h), stage / store_rel(h))
        except FileNotFoundError:
            continue  # deleted meanwhile: unreferenced already
        copied += size
        if sha != h:
            damaged.add(h)
            (stage / store_rel(h)).unlink()
            continue
        early[h] = size
    # 2. the database snapshot and the files it references
    progress.show("database", force=True)
    if settings.engine == "sqlite":
        db = stage / snap.DB_FILE
        try:
            snap.sqlite_copy(data / snap.DB_FILE, db)
        except Exception as e:
            raise BackupError(f"backup: cannot copy the SQLite database: {e}") from None
        problem = snap.sqlite_check(db)
        if problem is not None:
            raise BackupError(f"backup: the live database fails its integrity check: {problem}")
        referenced = snap.sqlite_stored_files(db)
        add(Path(snap.DB_FILE), *hash_file(db))
    else:
        referenced = asyncio.run(_pg_dump(settings.database_url, stage / PG_DUMP))
        add(Path(PG_DUMP), *hash_file(stage / PG_DUMP))
    # 3. referenced files uploaded since step 1; copies nobody references go
    wanted = {} if in_bucket else dict(referenced)
    for h in sorted(set(early) - set(wanted)):
        (stage / store_rel(h)).unlink()
    for h in sorted(wanted):
        rel = store_rel(h)
        if h in early:
            add(rel, h, early[h])
            continue
        if h in damaged:
            missing[h] = "its bytes in the store do not match their hash"
            continue
        try:
            sha, got = copy_hashed(data / rel, stage / rel)
        except FileNotFoundError:
            missing[h] = "gone from the store (deleted after the snapshot, or lost)"
            continue
        if sha != h:
            (stage / rel).unlink()
            missing[h] = "its bytes in the store do not match their hash"
            continue
        add(rel, sha, got)
    for h, why in missing.items():
        progress.warn(f"file {h}: {why}; the backup goes on without it")
    # 4. the key, client thumbnails, the config file
    add(Path(SERVER_KEY_FILE), *copy_hashed(data / SERVER_KEY_FILE, stage / SERVER_KEY_FILE))
    for p in tree(data / CLIENT_THUMBNAILS):
        rel = p.relative_to(data)
        try:
            add(rel, *copy_hashed(p, stage / rel))
        except FileNotFoundError:
            pass  # its block went meanwhile
    if config_path:
        try:
            add(Path(CONFIG), *copy_hashed(Path(config_path), stage / CONFIG))
        except OSError as e:
            raise BackupError(f"backup: cannot read config file {config_path}: {e}") from None
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "heaper_trio": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "engine": settings.engine,
        "database": PG_DUMP if settings.engine == "postgres" else snap.DB_FILE,
        "config": str(Path(config_path).absolute()) if config_path else None,
        "stored_files": len(wanted) - len(missing),
        "missing": missing,
        "files_in_bucket": settings.s3_bucket if in_bucket else None,
        "files": entries,
    }
    for d in sorted({(stage / r).parent for r in entries}, reverse=True):
        fsync_dir(d)
    out = stage / MANIFEST
    with out.open("w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    total = sum(e["size"] for e in entries.values())
    progress.done(f"{len(entries)} files, {human_size(total)}, complete")
    return manifest


async def _pg_dump(url: str, out: Path) -> list[tuple[str, int]]:
    pg_dump = find_pg_binary("pg_dump")

    async def dump(snapshot: str, files: list[tuple[str, int]]) -> list[tuple[str, int]]:
        proc = await asyncio.create_subprocess_exec(
            pg_dump,
            "--format=custom",
            f"--snapshot={snapshot}",
            f"--file={out}",
            f"--dbname={url}",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise BackupError(f"backup: pg_dump failed: {last_line(err)}")
        return files

    try:
        return await snap.pg_with_snapshot(url, dump)
    except BackupError:
        raise
    except Exception as e:
        raise BackupError(f"backup: database_url: cannot read the database: {e}") from None
