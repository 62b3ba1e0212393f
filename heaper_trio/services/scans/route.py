"""Which machine scans a folder (issue 14, item 1): a scan root belongs to a machine, and the
job that scans it runs in a server process of that machine.

A process asked to scan a folder that it cannot find under its own ``scan_roots`` queues the
job instead of refusing it (``queueable``) when another live process on the database has a
scan root around that path (``under_a_root``; each process advertises its roots); a
process that finds the folder under its roots claims it (``on_this_machine``) and then checks
the user's right to it exactly as for a request of its own (``scans/walk``), so the asking
process never decides what another machine scans. These are the file-system checks, run in a
worker thread; the queue itself is the jobs table (``scans/registry``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from heaper_trio.errors import HeaperError
from heaper_trio.records.jobs import JobProcess, JobRecord
from heaper_trio.services.scans.walk import MAX_PATH, allowed_bases, resolve_scan_path

# The refusals that only say "not on this machine": another machine may have the folder.
ELSEWHERE_CODES = frozenset({"scanning_disabled", "scan_path_forbidden", "not_a_directory"})


def on_this_machine(path: str, roots: Sequence[os.PathLike[str] | str], data_dir: str) -> bool:
    """Whether ``path`` is a folder under one of this machine's scan roots (whoever asks:
    the user's own right is checked after)."""
    try:
        resolve_scan_path(path, allowed_bases(roots, "", True), data_dir)
    except HeaperError:
        return False
    return True


def queueable(
    path: str, error: HeaperError, roots: Sequence[os.PathLike[str] | str], data_dir: str
) -> bool:
    """Whether a local refusal ``error`` of ``path`` may be a folder of another machine: an
    absolute path, without ``..``, that is not a folder under this machine's roots (a folder
    here that the user may not scan is refused here, as before)."""
    return (
        error.code in ELSEWHERE_CODES
        and 0 < len(path) <= MAX_PATH
        and "\x00" not in path
        and os.path.isabs(path)
        and ".." not in path.replace("\\", "/").split("/")
        and not on_this_machine(path, roots, data_dir)
    )


def under_a_root(path: str, roots: Sequence[str]) -> bool:
    """Whether ``path`` lies under one of ``roots`` (as written: another machine's roots
    cannot be resolved here; the process that claims the job resolves the path itself)."""
    if not os.path.isabs(path):
        return False
    path = os.path.normpath(path)
    return any(os.path.commonpath([path, root]) == root for root in roots if os.path.isabs(root))


def queued_row(owner_id: str, heap_id: str, path: str, process: JobProcess) -> JobRecord:
    """A queued scan's row: what a process of the right machine needs to run it (the owner,
    whose rights it checks itself, the heap and the path as asked)."""
    now = int(time.time() * 1000)
    return JobRecord(
        id=os.urandom(16).hex(),
        owner_id=owner_id,
        heap_id=heap_id,
        kind="scan",
        path=os.path.normpath(path),
        state="queued",
        process=process,  # the asking process, until one claims it
        created_at=now,
        heartbeat_at=now,
    )
