"""Upload folders that no upload row names: a crash between a discard's row and its folder,
or an older bug, left them, and nothing else would ever remove them. The expiry sweep
(``FileService.expire``) and each process at start remove those untouched for
``upload_expiry_hours``.

A folder with a row is never touched, however old; a young one is spared whatever its row:
upload ids are new for every row, so a row still being created only ever names a folder made
a moment ago (or none yet), never an old one. Folders are listed first and rows asked second,
and each is looked at again just before it goes: a late chunk writer that made it young
again (it removes its own) keeps it.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from heaper_trio.services.files import FileService

log = logging.getLogger(__name__)
BATCH = 500  # folder names asked of the database at once


def _untouched_folders(uploads: Path, before: float) -> list[str]:
    """Names of the folders under ``uploads`` last changed before ``before`` (seconds)."""
    try:
        entries = os.scandir(uploads)
    except FileNotFoundError:
        return []
    with entries:
        return [
            e.name
            for e in entries
            if e.is_dir(follow_symlinks=False) and e.stat(follow_symlinks=False).st_mtime < before
        ]


def _remove_if_untouched(folder: Path, before: float) -> bool:
    """Removed, unless it changed meanwhile (a late chunk writer: it removes its own)."""
    try:
        if os.stat(folder, follow_symlinks=False).st_mtime >= before:
            return False
    except FileNotFoundError:
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True


async def sweep_orphan_folders(files: FileService, now: float) -> int:
    """Remove the upload folders no upload row names, untouched for ``upload_expiry_hours``
    (``now`` in seconds); how many."""
    before = now - files.settings.upload_expiry_hours * 3600
    names = await files._probe_fs(_untouched_folders, files.uploads, before)
    removed = 0
    for start in range(0, len(names), BATCH):
        batch = names[start : start + BATCH]
        present = await files.storage.uploads_present(batch)
        for name in batch:
            if name not in present and await files._io(
                _remove_if_untouched, files.uploads / name, before
            ):
                files.hashes.drop(name)
                log.info("removed upload folder %s: no upload of that id", name)
                removed += 1
    return removed
