"""A path too long to index is left out of a scan, on both engines alike. PostgreSQL's btree
entries hold at most 2,704 bytes, and before the limit one such path failed the whole scan
there (``internal_error``, nothing indexed) while SQLite indexed it."""

from __future__ import annotations

import secrets
from pathlib import Path

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.services.scans.walk import MAX_INDEXED_PATH_BYTES

from .conftest import assert_error
from .test_scans import scan, write
from .test_sync import new_heap


async def test_a_path_too_long_to_index_is_skipped_not_fatal(
    scan_server: RunningServer, roots: Path
) -> None:
    async with HeaperClient(scan_server.url) as boss:
        await boss.login()  # the first account: an admin, who may scan anywhere under a root
        await _scan_deep_tree(boss, roots)


async def _scan_deep_tree(boss: HeaperClient, roots: Path) -> None:
    heap = await new_heap(boss)
    tree = roots / "deep"
    write(tree / "ok.txt", "fine")
    deep = tree
    while len(str(deep)) < MAX_INDEXED_PATH_BYTES - 66:  # random names: nothing to compress
        deep = deep / secrets.token_hex(16)
    assert MAX_INDEXED_PATH_BYTES - 66 <= len(str(deep)) < MAX_INDEXED_PATH_BYTES - 33
    write(deep / "fits.txt", "just under")
    # Past the limit, and past what a PostgreSQL index entry holds (the failure before it).
    over = deep.joinpath(*(secrets.token_hex(16) for _ in range(25))) / "x.txt"
    assert len(str(over)) > 2704
    write(over, "over")
    job = await scan(boss, heap["id"], tree)
    assert job["state"] == "done", job
    assert job["files_new"] == 2 and job["skipped"] == 1, job
    # A scan path past the limit is refused up front.
    far = deep / secrets.token_hex(16) / secrets.token_hex(16)
    assert len(str(far)) > MAX_INDEXED_PATH_BYTES
    far.mkdir(parents=True)
    r = await boss.post("/api/scan_folder", json={"heap_id": heap["id"], "path": str(far)})
    assert_error(r, 400, "invalid_field")
