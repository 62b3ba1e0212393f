"""Support for the jobs tests: a folder scan that runs until it is aborted (counting a file
every 20 ms), so a test can hold a job running as long as it needs, in this process
(``endless_scans``) or in a server subprocess (``python -m tests.jobs_support`` = the CLI with
that scan), which a test can kill."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from heaper_trio import cli
from heaper_trio.services.scans.folder import FolderScan

from .live_client import live_client
from .process_support import wait_healthy
from .test_cli import _env, _free_port

ROOT = Path(__file__).resolve().parent.parent


async def endless_scan(self: FolderScan) -> None:
    """``FolderScan.run``'s stand-in: ends only when the job's work scope is cancelled."""
    job = self.job
    with job.work_scope:
        while True:
            job.files_seen += 1
            job.files_done += 1
            job.bytes += 1
            job.current_path = f"{job.path}/{job.files_done}"
            await trio.sleep(0.02)


def endless_scans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FolderScan, "run", endless_scan)


class ServerProcess:
    """``python -m tests.jobs_support`` on a free port, output in a file."""

    def __init__(self, data_dir: Path, database_url: str, log_path: Path, **env: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        args = [sys.executable, "-m", "tests.jobs_support", "--port", str(self.port)]
        args += ["--workers", "1", "--data-dir", str(data_dir), "--database-url", database_url]
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                args,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env(
                    HEAPER_AUTH_RATE_LIMIT="10000",
                    HEAPER_PG_POOL_MIN="1",
                    HEAPER_PG_POOL_MAX="4",
                    HEAPER_GRACEFUL_TIMEOUT="1",
                    **env,
                ),
            )

    async def wait_ready(self) -> None:
        await wait_healthy(self.url, self.proc, lambda: self.log_path.read_text(errors="replace"))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


async def collect_events(
    url: str,
    token: str,
    into: list[tuple[float, dict[str, Any]]],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The owner's job events on ``url`` (the legacy /api/ws: one JSON event a message)."""
    async with live_client(url, "/api/ws") as legacy:
        await legacy.ws.send_message(json.dumps({"token": token}))
        await legacy.ws.get_message()
        task_status.started()
        while True:
            into.append((trio.current_time(), json.loads(await legacy.ws.get_message())))


if __name__ == "__main__":
    FolderScan.run = endless_scan  # type: ignore[method-assign]
    sys.exit(cli.main())
