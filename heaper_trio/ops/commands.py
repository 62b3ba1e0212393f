"""The ``backup``, ``restore`` and ``files`` subcommands of ``python -m heaper_trio`` (cli.py
adds these parsers and hands the parsed arguments here)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from heaper_trio.settings import BY_NAME, Settings

COMMANDS = ("backup", "restore", "files")


def add_parsers(sub: Any) -> None:
    backup = sub.add_parser(
        "backup",
        help="a consistent backup of the data (while the server runs)",
        description="Back up the database (SQLite online backup, or pg_dump for PostgreSQL), "
        "the stored files it references, the server key, client thumbnails and the config "
        "file into DEST, a new or empty directory, with a manifest of every file's SHA-256. "
        "Name the server's data directory and database as the server gets them (flags, "
        "HEAPER_* variables or --config). Progress shows on a terminal; otherwise it is quiet.",
    )
    backup.add_argument("dest", metavar="DEST", help="new (or empty) directory to write")
    for name in ("data_dir", "database_url"):
        s = BY_NAME[name]
        backup.add_argument(s.flag, dest=name, metavar=name.upper(), help=f"{s.help} [env {s.env}]")
    backup.add_argument("--config", metavar="FILE", help="TOML config file [env HEAPER_CONFIG]")

    restore = sub.add_parser(
        "restore",
        help="check a backup and restore it into a new data directory",
        description="Check every file of the backup against its manifest (SHA-256 and size; "
        "the SQLite database also with PRAGMA integrity_check) and restore it into NEW, a "
        "data directory that does not exist yet (or is empty). A PostgreSQL backup also needs "
        "--database-url naming a new, empty database, which pg_restore fills. Nothing is put "
        "in place unless all of it checks.",
    )
    restore.add_argument("src", metavar="SRC", help="the backup directory")
    restore.add_argument("--data-dir", dest="restore_dir", metavar="NEW", required=True)
    restore.add_argument(
        "--database-url",
        dest="restore_url",
        metavar="URL",
        default="",
        help="PostgreSQL backups: the new, empty database to restore into",
    )


def add_files_parser(sub: Any) -> None:
    files = sub.add_parser(
        "files",
        help="move stored files between backends",
        description="migrate --to s3: copy every stored file and thumbnail of the "
        "data directory into the bucket (s3_endpoint, s3_bucket, s3_region; credentials from "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), skipping what is there already with "
        "its size, so it can be stopped and run again; each file is checked against its hash "
        "first. Then set files_backend = s3. Progress shows on a terminal.",
    )
    files.add_argument("action", choices=["migrate"])
    files.add_argument("--to", choices=["s3"], required=True, dest="to")
    for name in ("data_dir", "s3_endpoint", "s3_bucket", "s3_region"):
        s = BY_NAME[name]
        files.add_argument(s.flag, dest=name, metavar=name.upper(), help=f"{s.help} [env {s.env}]")
    files.add_argument("--config", metavar="FILE", help="TOML config file [env HEAPER_CONFIG]")


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    if args.command == "files" and settings is not None:
        from heaper_trio.ops.migrate_files import run_migrate

        return run_migrate(settings)
    if args.command == "backup" and settings is not None:
        from heaper_trio.ops.backup import backup

        backup(settings, args.dest, args.config or os.environ.get("HEAPER_CONFIG") or None)
        return 0
    from heaper_trio.ops.restore import restore

    restore(args.src, args.restore_dir, args.restore_url)
    return 0
