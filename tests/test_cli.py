"""``python -m heaper_trio`` as a self-hoster runs it: a real process, real signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from heaper_trio.client import HeaperClient, KeyPair, LoginPending

from .auth_support import verify_session
from .process_support import wait_healthy

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEAPER_")}
    env.update(extra)
    return env


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "heaper_trio", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or _env(),
    )


async def cli_here(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str
) -> subprocess.CompletedProcess[str]:
    """The CLI's ``main`` run in this process, for commands whose subject is what they do, not
    the interpreter starting (each ``cli`` call pays ~2 s of CPU for start-up and imports;
    the entry point itself is run as a process by the other tests here). The server they act
    on is still another process. ``HEAPER_*`` variables are left out, as ``cli`` does."""
    from heaper_trio.cli import main

    for name in [k for k in os.environ if k.startswith("HEAPER_")]:
        monkeypatch.delenv(name)
    capsys.readouterr()
    code = await trio.to_thread.run_sync(main, list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out, err)


class ServerProcess:
    def __init__(self, data_dir: Path, database_url: str, *extra: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [
            sys.executable,
            "-m",
            "heaper_trio",
            "--port",
            str(self.port),
            "--data-dir",
            str(data_dir),
            *extra,
        ]
        if database_url:
            args += ["--database-url", database_url]
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(HEAPER_AUTH_RATE_LIMIT="10000"),
        )

    async def wait_ready(self) -> None:
        await wait_healthy(self.url, self.proc, self.proc.communicate)

    async def health(self) -> str:
        async with httpx.AsyncClient() as c:
            return str((await c.get(self.url + "/api/health")).json()["database"]["status"])

    def stop(self, sig: int) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err

    def kill(self) -> None:
        """Teardown for a test that failed midway: never leave a server behind."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


async def test_serve_and_stop_cleanly_on_sigterm_and_sigint(
    tmp_path: Path, database_url: str
) -> None:
    key = KeyPair.generate()  # the same admin across restarts: state persists
    # Both signals reach the one watcher in cli._serve, whatever the engine: SIGINT once, on
    # SQLite, and the engine's own close after a signal is SIGTERM's run on each engine.
    signals = (signal.SIGTERM, signal.SIGINT) if not database_url else (signal.SIGTERM,)
    for sig in signals:
        server = ServerProcess(tmp_path / "data", database_url)
        try:
            await server.wait_ready()
            async with HeaperClient(server.url, key) as c:
                await c.login()
                assert (await c.post("/api/me")).status_code == 200
            code, err = server.stop(sig)
        finally:
            server.kill()
        assert code == 0, err
        assert "Traceback" not in err, err
        assert "shutting down" in err


async def test_users_commands(
    tmp_path: Path,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = tmp_path / "data"
    flags = ["--data-dir", str(data)] + (["--database-url", database_url] if database_url else [])

    async def users(*args: str) -> subprocess.CompletedProcess[str]:
        return await cli_here(capsys, monkeypatch, "users", *args)

    server = ServerProcess(data, database_url)
    await server.wait_ready()
    try:
        async with HeaperClient(server.url) as admin, HeaperClient(server.url) as bob:
            await admin.login()
            with pytest.raises(LoginPending):
                await bob.login()

            listed = json.loads(cli("users", "list", "--json", *flags).stdout)
            states = {u["public_key"]: (u["state"], u["is_admin"]) for u in listed}
            assert states == {
                admin.public_key: ("approved", True),
                bob.public_key: ("pending", False),
            }
            table = (await users("list", *flags)).stdout
            assert bob.public_key in table and "pending" in table

            # approve by public key, then use the account
            r = await users("approve", bob.public_key, *flags)
            assert r.returncode == 0 and "approved" in r.stdout, r.stderr
            await bob.login()
            assert (await bob.post("/api/me")).json()["is_admin"] is False

            # make-admin by id
            assert bob.user_id
            r = await users("make-admin", bob.user_id, "--json", *flags)
            assert json.loads(r.stdout)["is_admin"] is True
            assert (await bob.post("/api/me")).json()["is_admin"] is True

            # revoke-tokens: the access token dies at once
            assert (await users("revoke-tokens", bob.user_id, *flags)).returncode == 0
            assert (await bob.post("/api/me")).json()["error"] == "token_revoked"

            # reject: cannot log in any more
            assert (await users("reject", bob.public_key, *flags)).returncode == 0
            r2 = await verify_session(bob.http, bob.key, await bob.challenge())
            assert r2.json()["error"] == "account_rejected"

            unknown = await users("approve", "nobody", *flags)
            assert unknown.returncode == 2 and "nobody" in unknown.stderr
            assert "Traceback" not in unknown.stderr
            missing = await users("approve", *flags)
            assert missing.returncode == 2 and "name a user" in missing.stderr
    finally:
        server.stop(signal.SIGTERM)
        server.kill()


def test_help_reads_well() -> None:
    top = cli("--help")
    assert top.returncode == 0
    for word in ("serve", "users", "client", "HEAPER_", "docs/configuration.md"):
        assert word in top.stdout
    serve = cli("serve", "--help").stdout
    for flag in ("--host", "--port", "--data-dir", "--database-url", "--config"):
        assert flag in serve
    assert "HEAPER_PORT" in serve
    users = cli("users", "--help").stdout
    for action in ("list", "approve", "reject", "make-admin", "revoke-tokens"):
        assert action in users


@pytest.mark.parametrize(
    "args,env,needle",
    [
        (["--port", "notaport"], {}, "--port"),
        ([], {"HEAPER_PORT": "x"}, "HEAPER_PORT"),
        ([], {"HEAPER_DATABASE_URL": "mysql://nope"}, "HEAPER_DATABASE_URL"),
        (["--database-url", "postgresql://127.0.0.1:1/none"], {}, "database_url"),
    ],
)
def test_bad_config_fails_at_start_naming_the_key(
    tmp_path: Path, args: list[str], env: dict[str, Any], needle: str
) -> None:
    r = cli(*args, "--data-dir", str(tmp_path / "d"), env=_env(**env))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_config_file_fails_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "h.toml"
    cfg.write_text("portt = 1\n")
    r = cli("--config", str(cfg), "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 2 and "'portt'" in r.stderr and "Traceback" not in r.stderr


def test_unusable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = cli("--data-dir", str(blocker / "sub"))
    assert r.returncode == 2 and "data_dir" in r.stderr and "Traceback" not in r.stderr


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = cli("--port", str(port), "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 2, r.stderr
    assert "cannot listen" in r.stderr and str(port) in r.stderr
    assert "Traceback" not in r.stderr


# The client command speaks HTTP only: which engine the server stores with changes nothing it
# does (its postgres run was four more process start-ups proving the same).
@pytest.mark.engines("sqlite")
async def test_client_command_logs_in_with_a_key_file(tmp_path: Path, database_url: str) -> None:
    server = ServerProcess(tmp_path / "data", database_url)
    try:
        await server.wait_ready()
        key = tmp_path / "me.key"
        r = await trio.to_thread.run_sync(
            cli, "client", "me", "--server", server.url, "--key", str(key)
        )
        assert r.returncode == 0, r.stderr
        me = json.loads(r.stdout)
        assert me["is_admin"] is True and key.exists()
        assert me["public_key"] == KeyPair.load(key).public_key
        r = await trio.to_thread.run_sync(
            cli, "client", "login", "--server", server.url, "--key", str(key)
        )
        assert json.loads(r.stdout)["accessToken"]
        # A second identity waits for approval: exit 3 and the command to approve it.
        r = await trio.to_thread.run_sync(
            cli, "client", "me", "--server", server.url, "--key", str(tmp_path / "other.key")
        )
        assert r.returncode == 3 and "users approve" in r.stderr
    finally:
        server.stop(signal.SIGTERM)
        server.kill()


@pytest.mark.engines("postgres")
async def test_two_processes_share_one_postgres_database(tmp_path: Path, database_url: str) -> None:
    data = tmp_path / "shared-data"
    a = ServerProcess(data, database_url)
    b = ServerProcess(data, database_url)
    try:
        await a.wait_ready()
        await b.wait_ready()
        async with HeaperClient(a.url) as on_a, HeaperClient(b.url, on_a.key) as on_b:
            await on_a.login()
            # A token issued by one process is good on the other.
            on_b.access_token, on_b.refresh_token = on_a.access_token, on_a.refresh_token
            assert (await on_b.post("/api/me")).json()["is_admin"] is True
            first_refresh = on_a.refresh_token
            await on_b.refresh()  # rotated on B ...
            r = await on_a.http.post(
                "/api/auth/refresh_token",  # ... replayed on A
                headers={"Authorization": f"Bearer {first_refresh}"},
            )
            assert r.json()["error"] == "refresh_token_reused"
            assert (await a.health()) == (await b.health()) == "ok"
    finally:
        for p in (a, b):
            p.stop(signal.SIGTERM)
            p.kill()
