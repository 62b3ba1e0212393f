"""``python -m heaper_trio restore SRC --data-dir NEW [--database-url URL]``: check a backup
(every file against the manifest's SHA-256 and size, stored files against their names, the
SQLite database with ``PRAGMA integrity_check``) while copying it into a new data directory
under a temporary name; a PostgreSQL backup goes into a new, empty database with
``pg_restore`` in one transaction. Nothing is renamed into place unless all of it checks."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from heaper_trio.ops.common import (
    FORMAT,
    MANIFEST,
    PG_DUMP,
    STORE,
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
)
from heaper_trio.storage import snapshot as snap


def read_manifest(src: Path) -> dict[str, Any]:
    path = src / MANIFEST
    if not src.is_dir():
        raise BackupError(f"restore: {src} is not a directory")
    if not path.is_file():
        raise BackupError(f"restore: {src} has no {MANIFEST}: not a complete backup")
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
            raise ValueError("not a heaper_trio backup manifest")
    except (ValueError, AttributeError) as e:
        raise BackupError(f"restore: {path} is damaged: {e}") from None
    if manifest.get("version") != VERSION:
        raise BackupError(f"restore: backup format version {manifest.get('version')} is unknown")
    return dict(manifest)


def restore(src: str | Path, data_dir: str | Path, database_url: str = "") -> dict[str, Any]:
    """Check the backup at ``src`` and bring it back into the new ``data_dir`` (and, for a
    PostgreSQL backup, the empty database at ``database_url``); returns the manifest."""
    src = Path(src).expanduser().absolute()
    dest = Path(data_dir).expanduser().absolute()
    manifest = read_manifest(src)
    engine = manifest.get("engine")
    if engine == "postgres" and not database_url:
        raise BackupError(
            "restore: this backup holds a PostgreSQL database: pass --database-url of a new, "
            "empty database"
        )
    if engine == "sqlite" and database_url:
        raise BackupError("restore: this backup holds a SQLite database: leave out --database-url")
    refuse_non_empty(dest, "restore: data_dir")
    if engine == "postgres":
        pg_restore = find_pg_binary("pg_restore")
        try:
            empty = snap.pg_is_empty(database_url)
        except Exception as e:
            raise BackupError(f"restore: database_url: cannot connect: {e}") from None
        if not empty:
            raise BackupError("restore: database_url: the database is not empty; create a new one")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(dest)
        stage = partial_name(dest)
        stage.mkdir(mode=0o700)  # it holds the server key
    except OSError as e:
        raise BackupError(f"restore: cannot write {dest}: {e.strerror or e}") from None
    try:
        _restore_into(stage, src, manifest)
        if engine == "postgres":
            _pg_restore(pg_restore, src / PG_DUMP, database_url)
        finish(stage, dest)
    except OSError as e:  # disk full, permissions: one line, nothing left behind
        shutil.rmtree(stage, ignore_errors=True)
        where = f"{e.filename}: " if e.filename else ""
        raise BackupError(f"restore: {where}{e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return manifest


def _restore_into(stage: Path, src: Path, manifest: dict[str, Any]) -> None:
    progress = Progress("restore")
    files: dict[str, Any] = manifest["files"]
    total = sum(int(e.get("size", 0)) for e in files.values())
    done = 0
    for i, (rel, entry) in enumerate(sorted(files.items())):
        progress.show(
            f"checking and copying {i}/{len(files)} ({human_size(done)} of {human_size(total)})"
        )
        p = Path(rel)
        if p.is_absolute() or ".." in p.parts or rel == MANIFEST:
            raise BackupError(f"restore: the manifest names {rel!r}: the backup is damaged")
        if p.parts[: len(STORE.parts)] == STORE.parts and p != store_rel(entry.get("sha256", "")):
            raise BackupError(
                f"restore: {rel} is not where its hash puts it: the backup is damaged"
            )
        source = src / p
        if not source.is_file():
            raise BackupError(f"restore: {rel} is missing from the backup: the backup is damaged")
        if p.as_posix() == PG_DUMP:
            sha, size = hash_file(source)  # pg_restore reads it in place
        else:
            sha, size = copy_hashed(source, stage / p)
        if size != entry.get("size") or sha != entry.get("sha256"):
            raise BackupError(
                f"restore: {rel} does not match the manifest "
                f"({size} bytes, sha256 {sha[:12]}…; expected {entry.get('size')} bytes, "
                f"{str(entry.get('sha256'))[:12]}…): the backup is damaged"
            )
        done += size
    if manifest.get("engine") == "sqlite":
        problem = snap.sqlite_check(stage / snap.DB_FILE)
        if problem is not None:
            raise BackupError(f"restore: the database fails its integrity check: {problem}")
    for h, why in (manifest.get("missing") or {}).items():
        progress.warn(f"file {h} was not in the backup ({why})")
    for d in sorted({(stage / r).parent for r in files}, reverse=True):
        if d.is_dir():
            fsync_dir(d)
    progress.done(f"{len(files)} files, {human_size(total)}, checked")


def _pg_restore(pg_restore: str, dump: Path, url: str) -> None:
    progress = Progress("restore")
    progress.show("pg_restore", force=True)
    out = subprocess.run(
        [
            pg_restore,
            "--no-owner",
            "--exit-on-error",
            "--single-transaction",
            f"--dbname={url}",
            str(dump),
        ],
        capture_output=True,
    )
    if out.returncode != 0:
        raise BackupError(f"restore: pg_restore failed: {last_line(out.stderr)}")
    progress.done("database restored")
