"""Fixtures: real servers on ephemeral loopback ports, over both storage engines.

PostgreSQL comes from ``HEAPER_TEST_DATABASE_URL`` (``.ci/run`` starts a throwaway cluster and
sets it) or, failing that, from a cluster this session starts with ``scripts/pg_cluster.sh``.
With ``HEAPER_TEST_REQUIRE_POSTGRES=1`` (CI) a missing PostgreSQL fails the run instead of
skipping the postgres half of the suite. Every test gets its own database, made ahead and
dropped behind on worker threads (``DatabaseSupply``).

Under pytest-xdist (``scripts/test.sh`` runs ``-n``) every worker is its own session: its own
``DatabaseSupply`` (names are random, so workers never share a database), its own servers on
ephemeral ports and its own temporary directories.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import uuid
import warnings
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import trio

from heaper_trio import logs
from heaper_trio.app import RunningServer, run_server
from heaper_trio.client import HeaperClient, KeyPair
from heaper_trio.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ["sqlite", "postgres"]

# Tests that hold the wall clock to a bound a busy machine breaks. scripts/test.sh runs the
# suite on several workers without them (``--serial skip``), then them alone, one at a time
# (``--serial only``). A test can also carry ``@pytest.mark.serial`` itself.
SERIAL = {
    # progress events 0.4 s apart must arrive within 0.6 s (it failed beside the fuzz run)
    "tests/test_scans.py::test_thousands_of_files_abort_then_full_rescan",
    # median delivery between two server processes under 100 ms
    "tests/test_live_processes.py::test_live_edits_and_events_cross_processes_quickly",
    # awareness delivered and expired within 1000 ms
    "tests/test_live_node.py::test_awareness_comes_and_goes_with_the_socket",
    # a 0.6 s heartbeat timeout: under load the claiming process was reaped as dead
    "tests/test_jobs_scan_routing.py::test_a_scan_of_another_machines_folder_is_queued_and_run_there",
    # the 408 comes within a 2 s window around its deadline
    "tests/test_harden_slow_uploads.py::test_a_body_below_the_minimum_rate_gets_408_and_leaves_nothing",
    # eight trickling PUTs must keep their slots (deadlines in real time) while another user
    # uploads: under a loaded CI run their deadlines passed first (held 3, not 8)
    "tests/test_harden_slow_uploads.py::test_slow_chunk_puts_are_capped_per_user_and_cut_at_their_deadline",
}


@pytest.fixture(autouse=True)
def _no_cli_log_handler_left_behind() -> Iterator[None]:
    """A test that runs ``cli.main`` in-process installs the server's stderr handler on the
    root logger, bound to that test's captured stderr: left there, every later test on the
    worker logs into a closed file ("--- Logging error ---" on its own stderr)."""
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == logs.HANDLER_NAME]:
        root.removeHandler(handler)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--engine",
        choices=ENGINES,
        action="append",
        help="run the behaviour suite on this engine only (repeatable)",
    )
    parser.addoption(
        "--serial",
        choices=["include", "skip", "only"],
        default="include",
        help="tests marked serial (timed against the wall clock): run them with "
        "the rest (include, the default), leave them out (skip), or run only them",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests SERIAL names, and keep or drop the serial ones as ``--serial`` says."""
    checked: set[str] = set()
    for item in items:
        path = item.nodeid.split("::")[0]
        module = getattr(item, "module", None)
        if path not in checked and module is not None:  # a renamed test must not slip out
            checked.add(path)
            for listed in SERIAL:
                listed_path, _, name = listed.partition("::")
                if listed_path == path and not hasattr(module, name):
                    raise pytest.UsageError(
                        f"tests/conftest.py SERIAL names {listed}, which {path} no longer defines"
                    )
        if f"{path}::{getattr(item, 'originalname', item.name)}" in SERIAL:
            item.add_marker(pytest.mark.serial)
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the same order on every worker
        # The slow tests first: one left for the end runs alone while the other workers idle.
        items.sort(key=lambda i: i.get_closest_marker("slow") is None)
    mode = config.getoption("serial")
    if mode == "include":
        return
    wanted = mode == "only"
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        (keep if (item.get_closest_marker("serial") is not None) == wanted else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine" in metafunc.fixturenames:
        engines = metafunc.config.getoption("engine") or ENGINES
        only = metafunc.definition.get_closest_marker("engines")
        if only is not None:  # a test about one engine's own mechanism
            engines = [e for e in engines if e in only.args]
        metafunc.parametrize("engine", engines)


# -- PostgreSQL -------------------------------------------------------------------------------


def _with_db(dsn: str, dbname: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + dbname))


def _psql(dsn: str, sql: str) -> None:
    subprocess.run(
        ["psql", "-q", "-v", "ON_ERROR_STOP=1", dsn, "-c", sql],
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str | None]:
    dsn = os.environ.get("HEAPER_TEST_DATABASE_URL")
    if dsn:
        yield dsn
        return
    required = os.environ.get("HEAPER_TEST_REQUIRE_POSTGRES") == "1"
    if shutil.which("psql") is None:
        if required:
            pytest.fail(
                "PostgreSQL is required (HEAPER_TEST_REQUIRE_POSTGRES=1) but psql is missing"
            )
        yield None
        return
    # Not under pytest's tmp dir: its parents are private to us, and as root the cluster runs
    # as the postgres user, which must be able to reach the directory.
    cluster = Path(tempfile.mkdtemp(prefix="heaper-test-pg-"))
    try:
        out = subprocess.run(
            [str(ROOT / "scripts" / "pg_cluster.sh"), "start", str(cluster)],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        shutil.rmtree(cluster, ignore_errors=True)
        detail = getattr(e, "stderr", "") or ""
        if required:
            pytest.fail(f"could not start PostgreSQL: {e}\n{detail}")
        warnings.warn(
            f"postgres tests skipped: could not start PostgreSQL: {e} {detail}", stacklevel=2
        )
        yield None
        return
    dsn = out.stdout.strip().splitlines()[-1]
    try:
        # A throwaway cluster need not survive a power cut: without fsync, CREATE DATABASE and
        # every commit stop waiting on the disk (scripts/test.sh does the same for CI's)
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            _psql(dsn, f"ALTER SYSTEM SET {setting} = off")
        _psql(dsn, "SELECT pg_reload_conf()")
        yield dsn
    finally:
        subprocess.run(
            [str(ROOT / "scripts" / "pg_cluster.sh"), "stop", str(cluster)],
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(cluster, ignore_errors=True)


class DatabaseSupply:
    """Fresh, empty databases, created ahead of the tests that take them and dropped behind.

    CREATE DATABASE and DROP DATABASE each wait on fsync (0.2 to 0.6 s on the CI machine); in
    line they were about half of a postgres test's wall time. On two worker threads they
    overlap the tests instead. A database is still never handed out twice.
    """

    AHEAD = 2  # databases being created while a test runs

    def __init__(self, admin_dsn: str) -> None:
        self._admin = admin_dsn
        self._threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-db")
        self._ready: deque[Future[str]] = deque()
        self._dropping: list[Future[None]] = []

    def _create(self) -> str:
        name = "t_" + uuid.uuid4().hex[:16]
        _psql(self._admin, f"CREATE DATABASE {name}")
        return name

    def _drop(self, name: str) -> None:
        _psql(self._admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def take(self) -> str:
        """A database no test has used (its DSN); waits only if none is ready yet."""
        while len(self._ready) <= self.AHEAD:
            self._ready.append(self._threads.submit(self._create))
        return _with_db(self._admin, self._ready.popleft().result())

    def give_back(self, dsn: str) -> None:
        self._dropping.append(self._threads.submit(self._drop, urlsplit(dsn).path.lstrip("/")))

    def close(self) -> None:
        """Drop what was made ahead and wait for every drop; a failed drop fails the session."""
        for made in self._ready:
            if made.exception() is None:  # (a failed CREATE left nothing to drop)
                self._dropping.append(self._threads.submit(self._drop, made.result()))
        self._threads.shutdown(wait=True)
        failed = [f.exception() for f in self._dropping if f.exception() is not None]
        if failed:
            raise RuntimeError(f"{len(failed)} test databases could not be dropped: {failed[0]}")


@pytest.fixture(scope="session")
def pg_databases(pg_admin_dsn: str | None) -> Iterator[DatabaseSupply | None]:
    if pg_admin_dsn is None:
        yield None
        return
    supply = DatabaseSupply(pg_admin_dsn)
    try:
        yield supply
    finally:
        supply.close()


@pytest.fixture
def database_url(engine: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """Empty for SQLite; a fresh, empty PostgreSQL database for postgres. (Asked for lazily:
    a ``--engine sqlite`` run never starts a PostgreSQL cluster.)"""
    if engine == "sqlite":
        yield ""
        return
    pg_databases: DatabaseSupply | None = request.getfixturevalue("pg_databases")
    if pg_databases is None:
        pytest.skip("no PostgreSQL available (set HEAPER_TEST_DATABASE_URL)")
    dsn = pg_databases.take()
    try:
        yield dsn
    finally:
        pg_databases.give_back(dsn)


# -- servers ----------------------------------------------------------------------------------


@pytest.fixture
def make_settings(tmp_path: Path, database_url: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "data_dir": str(tmp_path / "data"),
            "database_url": database_url,
            "auth_rate_limit": 100_000,  # tests log in a lot
            "graceful_timeout": 1.0,
            "pg_pool_min": 1,
            "pg_pool_max": 4,
        }
        base.update(overrides)
        return load_settings(environ={}, overrides=base)

    return make


StartServer = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def start_server(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> AsyncIterator[StartServer]:
    """Start a real server (settings overrides as keyword arguments); stopped at teardown."""
    events: list[trio.Event] = []

    async def start(**overrides: Any) -> RunningServer:
        shutdown = trio.Event()
        events.append(shutdown)
        running: RunningServer = await nursery.start(
            partial(run_server, make_settings(**overrides), shutdown=shutdown)
        )
        return running

    yield start
    for ev in events:
        ev.set()


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    return await start_server()


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    """Scan roots for ``scan_server``: each user's own folder is ``<roots>/<user id>``."""
    path = tmp_path / "roots"
    path.mkdir()
    return path


@pytest.fixture
async def scan_server(start_server: StartServer, roots: Path) -> RunningServer:
    return await start_server(scan_roots=str(roots), scan_jobs=2)


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture
async def make_client(server: RunningServer) -> AsyncIterator[Callable[..., HeaperClient]]:
    """``make_client(key=None)``: a HeaperClient for the server, closed at teardown."""
    clients: list[HeaperClient] = []

    def make(key: KeyPair | None = None, url: str | None = None) -> HeaperClient:
        c = HeaperClient(url or server.url, key)
        clients.append(c)
        return c

    yield make
    for c in clients:
        await c.aclose()


@pytest.fixture
async def admin(make_client: Callable[..., HeaperClient]) -> HeaperClient:
    """The first account on the server: approved and admin."""
    c = make_client()
    await c.login()
    return c


@pytest.fixture
async def eve(
    admin: HeaperClient, server: RunningServer, make_client: Callable[..., HeaperClient]
) -> HeaperClient:
    """Eve: a second approved account (approved as the CLI does it), for "not yours" tests."""
    from heaper_trio.client import LoginPending
    from heaper_trio.services.accounts import find_user

    client = make_client()
    with pytest.raises(LoginPending):
        await client.login()
    user = await find_user(server.services.storage, client.public_key)
    await server.services.storage.set_user_state(user.id, "approved", 1)
    await client.login()
    return client


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The contract's error envelope, with this status (and code, when given)."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body["success"] is False, body
    assert isinstance(body["message"], str) and body["message"], body
    if code is not None:
        assert body["error"] == code, body
    return body
