"""A file larger than the server's storage can hold (EFBIG: the file system's largest file, or
the process's RLIMIT_FSIZE) is ``507 file_too_large_to_store``, never a 500: for a chunk, a
one-request upload and ``complete``; and the real errno of a real file size limit is what the
upload code maps (a subprocess with a small RLIMIT_FSIZE: the limit is per process)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

import heaper_trio.services.files as files_module
from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient

from .conftest import assert_error
from .test_harden_uploads import init, send_chunks, temp_files
from .test_sync import new_heap
from .test_uploads import CHUNK, sha

real_write = files_module._write


def too_large(out: Any, chunk: Any) -> None:
    raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))


async def test_a_file_too_large_for_the_storage_is_507_with_its_own_code(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    heap_id = (await new_heap(admin))["id"]
    data = os.urandom(CHUNK * 2 + 5)
    h = sha(data)
    files = server.services.files
    await init(admin, heap_id, "blk-big", data)

    monkeypatch.setattr(files_module, "_write", too_large)
    r = await admin.put(f"/api/upload/chunk/{heap_id}/blk-big/{h}/0", content=data[:CHUNK])
    assert_error(r, 507, "file_too_large_to_store")
    r = await admin.post(f"/api/upload/file/{heap_id}/blk-d", files={"file": ("d.bin", data)})
    assert_error(r, 507, "file_too_large_to_store")
    assert not temp_files(server) and not files.store_path(h).exists()

    monkeypatch.setattr(files_module, "_write", real_write)
    await send_chunks(admin, heap_id, "blk-big", h, data)
    r = await admin.put(f"/api/upload/chunk/{heap_id}/blk-big/{h}/1", content=data[CHUNK:-5])
    assert r.status_code == 200, r.text  # a resend: copied in at complete, through _write
    monkeypatch.setattr(files_module, "_write", too_large)
    r = await admin.post(f"/api/upload/complete/{heap_id}/blk-big/{h}")
    assert_error(r, 507, "file_too_large_to_store")
    assert not files.store_path(h).exists() and not temp_files(server)


LIMITED = """
import fcntl, resource, sys
from pathlib import Path
from heaper_trio.errors import HeaperError, disk_full_is_507
from heaper_trio.services.upload_layout import open_data
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
try:
    with disk_full_is_507():
        open_data(Path(sys.argv[1]), 1 << 20, fcntl.LOCK_SH)  # sized for the upload: EFBIG
except HeaperError as e:
    print(e.status, e.code)
"""


async def test_a_real_file_size_limit_is_mapped(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-c", LIMITED, str(tmp_path / "u1")],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    )
    assert done.stdout.split() == ["507", "file_too_large_to_store"], done.stderr
