"""``--workers N``: N server processes on one port under one supervising parent.

The supervisor's rules (restart, backoff, giving up, stopping) are checked with tiny stand-in
workers that speak its control protocol; the whole thing runs for real on PostgreSQL: real
processes, real sockets, signals.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pycrdt
import pytest
import trio
import trio.testing

from heaper_trio.client import HeaperClient
from heaper_trio.errors import StartupError
from heaper_trio.protocol import messages as m
from heaper_trio.services import metrics
from heaper_trio.settings import AUTO_WORKERS_MAX, load_settings
from heaper_trio.workers import BACKOFF_FIRST, MAX_FAILURES, Outcome, Supervisor

from .live_client import LiveClient, live_client
from .metrics_support import scrape, value
from .test_cli import _env, cli
from .test_sync import ClientBlock, new_heap, push

NO_DATABASE = ("--database-url", "postgresql://127.0.0.1:1/none")  # nothing listens there

# -- settings ---------------------------------------------------------------------------------


def test_workers_resolve_per_engine() -> None:
    pg = "postgresql://u@127.0.0.1/db"
    assert load_settings(environ={}).worker_count == 1  # SQLite: one process
    auto = load_settings(environ={}, overrides={"database_url": pg}).worker_count
    assert auto == max(1, min(len(os.sched_getaffinity(0)) - 1, AUTO_WORKERS_MAX))
    assert load_settings(environ={"HEAPER_WORKERS": "3", "HEAPER_DATABASE_URL": pg}).workers == 3
    with pytest.raises(StartupError, match="workers: SQLite allows one server process"):
        load_settings(environ={}, overrides={"workers": 2})
    with pytest.raises(StartupError, match="at least 0"):
        load_settings(environ={}, overrides={"workers": -1, "database_url": pg})


def test_sqlite_with_two_workers_is_refused_in_one_line(tmp_path: Path) -> None:
    r = cli("--workers", "2", "--port", "0", "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 2, r.stderr
    refused = (
        "heaper_trio: workers: SQLite allows one server process (one writer), got 2; "
        "use workers = 1, or PostgreSQL (database_url) for more"
    )
    assert r.stderr.splitlines() == [refused]
    assert not (tmp_path / "d").exists()  # refused before anything was made


def test_port_in_use_is_one_line_from_the_supervisor(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = cli(*NO_DATABASE, "--workers", "2", "--port", str(port), "--data-dir", str(tmp_path))
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[-1] == (
        f"heaper_trio: host/port: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert "Traceback" not in r.stderr and "worker" not in r.stderr.splitlines()[-1]


def test_a_port_another_supervisor_shares_is_taken_too(tmp_path: Path) -> None:
    """Our workers listen with SO_REUSEPORT, which lets any process of the same user join the
    port: a second server started on it by mistake must refuse, not split the clients."""
    with socket.socket() as ours:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        ours.bind(("127.0.0.1", 0))
        ours.listen()
        port = ours.getsockname()[1]
        r = cli(*NO_DATABASE, "--workers", "2", "--port", str(port), "--data-dir", str(tmp_path))
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[-1] == (
        f"heaper_trio: host/port: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


@pytest.mark.slow  # scheduled first: left for the end it would run alone
def test_a_first_worker_that_cannot_reach_the_database_gives_its_one_line(
    tmp_path: Path,
) -> None:
    r = cli(*NO_DATABASE, "--workers", "2", "--port", "0", "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("heaper_trio:")]
    assert len(errors) == 1 and errors[0].startswith("heaper_trio: database_url: "), r.stderr
    assert "Traceback" not in r.stderr
    assert "worker 2" not in r.stderr  # the others never started


# -- the supervisor, with stand-in workers ------------------------------------------------------

STAND_IN = """
import socket, sys, time
from pathlib import Path
fd, plan, counter = int(sys.argv[1]), sys.argv[2].split(","), Path(sys.argv[3])
n = int(counter.read_text() or 0) if counter.exists() else 0
counter.write_text(str(n + 1))
step = plan[min(n, len(plan) - 1)]
control = socket.socket(fileno=fd)
if step.startswith("exit"):
    sys.exit(int(step[4:]))
control.sendall(b"ready\\n")
if step == "crash":
    time.sleep(0.05)
    sys.exit(1)
while True:  # serve until told to stop ("stubborn": only when told to stop now)
    message = control.recv(64)
    if not message or b"n" in message or (b"s" in message and step != "stubborn"):
        sys.exit(0)
"""


def stand_in(tmp_path: Path, plan: str) -> tuple[Supervisor, Path]:
    script = tmp_path / "worker.py"
    script.write_text(STAND_IN)
    counter = tmp_path / "starts"
    supervisor = Supervisor(
        1,
        env=dict(os.environ),
        graceful_timeout=1.0,
        command=lambda fd: [sys.executable, str(script), str(fd), plan, str(counter)],
    )
    return supervisor, counter


async def test_a_worker_that_keeps_failing_at_start_backs_off_then_gives_up(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    supervisor, counter = stand_in(tmp_path, "crash,exit1")
    started = trio.current_time()
    outcome = await supervisor.run()
    assert outcome.code == 1
    assert outcome.message == (
        f"workers: worker 1 failed {MAX_FAILURES} times in a row at start "
        "(last: exit status 1); stopping"
    )
    assert int(counter.read_text()) == MAX_FAILURES  # one that served briefly, then 4 more
    # waits between the restarts doubled: no spinning
    backoff = sum(BACKOFF_FIRST * 2**i for i in range(MAX_FAILURES - 1))
    assert trio.current_time() - started >= backoff


@pytest.mark.parametrize(
    "plan,code,message",
    [
        ("exit2", 2, None),  # a startup error: the worker printed its one line
        ("exit3", 1, "workers: the first worker exited (exit status 3) before it could serve"),
    ],
)
async def test_a_first_worker_that_cannot_start_stops_everything_at_once(
    tmp_path: Path, plan: str, code: int, message: str | None
) -> None:
    supervisor, counter = stand_in(tmp_path, plan)
    outcome = await supervisor.run()
    assert (outcome.code, outcome.message) == (code, message)
    assert int(counter.read_text()) == 1


async def test_a_worker_that_cannot_even_be_started_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-python"
    supervisor = Supervisor(
        2, env=dict(os.environ), graceful_timeout=1.0, command=lambda fd: [str(missing)]
    )
    outcome = await supervisor.run()
    assert outcome.code == 1
    assert outcome.message is not None
    assert outcome.message.startswith("workers: the first worker exited (could not start: ")
    assert str(missing) in outcome.message


async def test_a_crashed_worker_is_restarted_at_once_and_a_stop_is_graceful(
    tmp_path: Path,
) -> None:
    supervisor, counter = stand_in(tmp_path, "crash,serve")
    async with trio.open_nursery() as nursery:
        outcome: list[object] = []

        async def run() -> None:
            outcome.append(await supervisor.run())

        nursery.start_soon(run)
        with trio.fail_after(20):
            while not (counter.exists() and counter.read_text() == "2" and supervisor.live):
                await trio.sleep(0.02)
        supervisor.stopping.set()
    assert [(o.code, o.message) for o in outcome] == [(0, None)]  # type: ignore[attr-defined]


async def test_a_second_signal_stops_the_workers_at_once(tmp_path: Path) -> None:
    supervisor, _ = stand_in(tmp_path, "stubborn")  # ignores the graceful stop
    outcome: list[Outcome] = []

    async def run() -> None:
        outcome.append(await supervisor.run())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        with trio.fail_after(20):
            while not supervisor.ever_ready:  # the supervisor receives signals by now
                await trio.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)
        await supervisor.stopping.wait()
        await trio.sleep(0.3)
        assert supervisor.live  # still running: it ignored the first stop
        os.kill(os.getpid(), signal.SIGTERM)
        with trio.fail_after(5):  # not the 16 s until it would be killed
            while not outcome:
                await trio.sleep(0.02)
    assert outcome == [Outcome(0)]


# -- the real thing, on PostgreSQL --------------------------------------------------------------


class Supervised:
    """``python -m heaper_trio --workers 2 --port 0``, its stderr read as it comes."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.changed = trio.Event()
        self.closed = trio.Event()  # stderr reached its end

    @property
    def url(self) -> str:
        port = re.search(r"starting \d+ workers on [\d.]+:(\d+)", "".join(self.lines))
        assert port, self.lines
        return f"http://127.0.0.1:{port[1]}"

    def serving(self) -> dict[int, int]:
        """Worker slot -> pid of the worker that last said it serves."""
        found = re.findall(r"worker (\d+) serving \(pid (\d+)\)", "".join(self.lines))
        return {int(slot): int(pid) for slot, pid in found}

    async def read(self) -> None:
        assert self.proc.stderr is not None
        buffer = b""
        async for chunk in self.proc.stderr:
            buffer += chunk
            *done, buffer = buffer.split(b"\n")
            self.lines += [line.decode() + "\n" for line in done]
            self.changed.set()
            self.changed = trio.Event()
        self.closed.set()

    async def wait_for(self, predicate: object, timeout: float = 60) -> None:
        with trio.fail_after(timeout):
            while not predicate():  # type: ignore[operator]
                assert self.proc.returncode is None, "".join(self.lines)
                await self.changed.wait()


@asynccontextmanager
async def supervised(tmp_path: Path, database_url: str) -> AsyncIterator[Supervised]:
    env = _env(
        HEAPER_AUTH_RATE_LIMIT="10000",
        HEAPER_GRACEFUL_TIMEOUT="1",
        HEAPER_PG_POOL_MIN="1",
        HEAPER_PG_POOL_MAX="4",
    )
    args = ["--workers", "2", "--port", "0", "--data-dir", str(tmp_path / "data")]
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "heaper_trio", *args, "--database-url", database_url],
        env=env,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    server = Supervised(proc)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.read)
            yield server
            nursery.cancel_scope.cancel()
    finally:
        if proc.returncode is None:  # a test that failed midway: leave nothing behind
            with trio.CancelScope(shield=True):
                proc.send_signal(signal.SIGKILL)  # its workers see the control socket close
                await proc.wait()


def owner(local_port: int, server_port: int, pids: list[int]) -> int:
    """Which server process holds the accepted end of our connection from ``local_port``."""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    inodes = {
        row[9]
        for row in rows
        if int(row[1].split(":")[1], 16) == server_port
        and int(row[2].split(":")[1], 16) == local_port
    }
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return pid
    raise AssertionError(f"no worker holds the connection from port {local_port}")


async def health_pid(url: str) -> int:
    async with httpx.AsyncClient() as c:  # a new connection each time
        r = await c.get(url + "/api/health")
        assert r.status_code == 200, r.text
        return int(r.json()["server"]["pid"])


@pytest.mark.slow
@pytest.mark.engines("postgres")
async def test_two_workers_share_one_port_live_edits_restarts_and_stop(
    tmp_path: Path, database_url: str
) -> None:
    async with supervised(tmp_path, database_url) as server:
        await server.wait_for(lambda: len(server.serving()) == 2)
        url, pids = server.url, sorted(server.serving().values())
        port = int(url.rsplit(":", 1)[1])

        # New connections spread over both workers (the kernel hashes them over the sockets)
        seen: set[int] = set()
        asked = 0
        while len(seen) < 2 and asked < 64:
            seen.add(await health_pid(url))
            asked += 1
        assert seen == set(pids)
        # Either worker's /metrics counts both (one directory for their metric files): each
        # answered some of those checks, so one worker alone would count fewer
        shared = Path(worker_env(pids[0])[metrics.MULTIPROC_ENV])
        assert value(await scrape(url), HEALTH_COUNT, route="/api/health") == asked

        # A live edit made through one worker reaches a subscriber connected to the other
        async with HeaperClient(url) as client:
            await client.login()
            heap = await new_heap(client)
            block = ClientBlock()
            block.write("Across workers")
            assert (await push(client, block.push_item(heap["id"]))).status_code == 200
            block.synced = block.doc.get_state()
            address = f"{heap['id']}:{block.id}"
            by_worker: dict[int, LiveClient] = {}
            async with trio.open_nursery() as conns:
                for _ in range(32):
                    if len(by_worker) == 2:
                        break
                    live = await conns.start(_hold_live_client, url)
                    local = live.ws.local
                    assert not isinstance(local, str)
                    by_worker.setdefault(owner(local.port, port, pids), live)
                assert sorted(by_worker) == pids
                writer, reader = by_worker[pids[0]], by_worker[pids[1]]
                await writer.sync(address, client.access_token)
                mirror = pycrdt.Doc()
                mirror.apply_update(await reader.sync(address, client.access_token))
                block.meta["crossed"] = True
                await writer.send(m.SyncUpdate(address, block.pending()))
                got = await reader.expect(m.SyncUpdate, timeout=10)
                mirror.apply_update(got.update)
                assert mirror.get("meta_v0", type=pycrdt.Map)["crossed"] is True
                conns.cancel_scope.cancel()

        # A worker killed with SIGKILL: the port keeps answering, and it comes back
        async with trio.open_nursery() as conns:  # a live connection of its own dies with it
            await _live_on(conns, url, pids, pids[0])
            assert value(await scrape(url), "heaper_ws_connections") >= 1
            os.kill(pids[0], signal.SIGKILL)
            conns.cancel_scope.cancel()
        for _ in range(5):
            assert await health_pid(url) == pids[1]
        await server.wait_for(lambda: pids[0] not in server.serving().values())
        restarted = server.serving()
        assert pids[1] in restarted.values() and len(restarted) == 2
        new_pid = next(p for p in restarted.values() if p != pids[1])
        assert "exited (killed by SIGKILL); restarting it" in "".join(server.lines)
        seen = set()
        for _ in range(64):
            seen.add(await health_pid(url))
            if len(seen) == 2:
                break
        assert seen == {new_pid, pids[1]}
        with trio.fail_after(10):  # its gauges went with it; its counters stay
            while value(samples := await scrape(url), "heaper_ws_connections"):
                await trio.sleep(0.05)
        assert value(samples, HEALTH_COUNT, route="/api/health") >= asked + 5

        # SIGTERM: every worker stops gracefully and the parent exits 0
        server.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            code = await server.proc.wait()
        with trio.fail_after(5):
            await server.closed.wait()
        log = "".join(server.lines)
        assert code == 0, log
        assert "SIGTERM received: shutting down 2 workers" in log
        assert log.count("the supervisor asked to stop: shutting down") == 2
        assert "Traceback" not in log
        for pid in (new_pid, pids[1]):
            assert not Path(f"/proc/{pid}").exists()
        assert not shared.exists()


HEALTH_COUNT = "heaper_http_request_duration_seconds_count"


def worker_env(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [item.decode().split("=", 1) for item in f.read().split(b"\0") if b"=" in item]
    return dict(pairs)


async def _live_on(nursery: trio.Nursery, url: str, pids: list[int], pid: int) -> LiveClient:
    """A live connection held open (in ``nursery``) by the worker ``pid`` (of ``pids``)."""
    port = int(url.rsplit(":", 1)[1])
    for _ in range(32):
        live: LiveClient = await nursery.start(_hold_live_client, url)
        local = live.ws.local
        assert not isinstance(local, str)
        if owner(local.port, port, pids) == pid:
            return live
    raise AssertionError("no connection reached the worker")


async def _hold_live_client(url: str, task_status: trio.TaskStatus[LiveClient]) -> None:
    async with live_client(url) as live:
        task_status.started(live)
        await trio.sleep_forever()
