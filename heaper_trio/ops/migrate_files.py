"""``python -m heaper_trio files migrate --to s3``: an existing install's stored files and
thumbnails (generated and client-uploaded) copied into the bucket, before ``files_backend``
is switched to s3.

Resumable: an object already in the bucket with the file's size is skipped, so a run that was
stopped (or a second run after the server stored more files) copies only what is missing.
Verified: a stored file is hashed before it is sent (its name is its SHA-256; one that does
not match is reported and left out, never copied), and its size in the bucket is checked
after. The local copies stay: remove ``files/sha256`` once the server runs on the bucket.
Scanned folders are not touched: their files stay where they are.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import trio

from heaper_trio.errors import StartupError
from heaper_trio.ops.common import Progress
from heaper_trio.settings import Settings
from heaper_trio.storage.blobs.local import LocalObjects
from heaper_trio.storage.blobs.s3 import S3Objects

PARALLEL = 4  # objects in flight: small files are latency-bound, large ones go multipart


@dataclass
class MigrateReport:
    copied: int = 0
    skipped: int = 0  # in the bucket already, same size
    bytes_copied: int = 0
    damaged: list[str] = field(default_factory=list)  # content does not match the name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while data := f.read(1 << 20):
            digest.update(data)
    return digest.hexdigest()


async def migrate(settings: Settings, stream: IO[str] | None = None) -> MigrateReport:
    if not settings.s3_bucket:
        raise StartupError("s3_bucket: name the bucket to migrate into (and s3_endpoint)")
    source = LocalObjects(settings.data_path)
    target = S3Objects(settings.s3_bucket, endpoint=settings.s3_endpoint, region=settings.s3_region)
    await target.check()
    entries = await trio.to_thread.run_sync(source.keys)
    total = len(entries)
    report = MigrateReport()
    progress = Progress("migrating files", stream)
    slots = trio.Semaphore(PARALLEL)

    async def one(key: str, path: Path) -> None:
        async with slots:
            size = (await trio.to_thread.run_sync(os.stat, path)).st_size
            if await target.size(key) == size:
                report.skipped += 1
            elif key.startswith("files/") and await trio.to_thread.run_sync(
                _sha256, path
            ) != key.removeprefix("files/"):
                report.damaged.append(key)
            else:
                await target.put_file(key, path)
                if await target.size(key) != size:
                    raise StartupError(f"the bucket holds another size for {key}; run again")
                report.copied += 1
                report.bytes_copied += size
            done = report.copied + report.skipped + len(report.damaged)
            progress.show(
                f"{done}/{total} ({report.bytes_copied / 1024**2:.1f} MiB copied, "
                f"{report.skipped} there already)"
            )

    try:
        async with trio.open_nursery() as nursery:
            for key, path in entries:
                nursery.start_soon(one, key, path)
    finally:
        await target.aclose()
    progress.done(
        f"{report.copied} copied ({report.bytes_copied / 1024**2:.1f} MiB), "
        f"{report.skipped} there already, {len(report.damaged)} damaged"
    )
    return report


def run_migrate(settings: Settings, stream: IO[str] | None = None) -> int:
    """The command: 0 when every file is in the bucket, 1 when some were damaged."""
    report = trio.run(migrate, settings, stream)
    out = stream
    for key in report.damaged:
        print(f"damaged, not copied: {key} (its content does not match its hash)", file=out)
    print(
        f"{report.copied} copied, {report.skipped} already in the bucket"
        + (
            "; now set files_backend = s3 and restart"
            if not report.damaged
            else f", {len(report.damaged)} damaged"
        ),
        file=out,
    )
    return 1 if report.damaged else 0
