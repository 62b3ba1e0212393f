"""Small things a self-hoster trips over (issue 13, item 7), each checked as they would meet it:
real processes, real pipes, real locks.

- a second server on one SQLite data directory is refused with one line (and a kill -9 leaves
  no stale lock); admin commands still run beside the server;
- ``users list --json | head`` and ``client me | head`` end quietly (exit 141), no traceback;
- settings: any case for choices, one boolean rule, a warning naming the closest known
  variable for a misspelt ``HEAPER_*``, a data directory that is a file said in words;
- the top-level ``--help`` lists the serve flags that work without ``serve``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from heaper_trio.cli import build_parser
from heaper_trio.client import HeaperClient
from heaper_trio.datadir_lock import LOCK_FILE, hold_data_dir
from heaper_trio.errors import StartupError
from heaper_trio.settings import SETTINGS
from heaper_trio.stdout_pipe import SIGPIPE_STATUS, quiet_on_broken_pipe
from tests.test_cli import ServerProcess, _env, cli


def run_into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """The command with its stdout a pipe nobody reads any more: what `| head` leaves behind
    once head has exited, without the race (head exiting before or after the write)."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run(
            [sys.executable, "-m", "heaper_trio", *args],
            stdout=w,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env=_env(),
        )
    finally:
        os.close(w)


# -- one server per SQLite data directory ----------------------------------------------------


def test_the_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    data = tmp_path / "new" / "data"  # made if missing
    with hold_data_dir(data):
        assert (data / LOCK_FILE).read_text().strip() == str(os.getpid())
        # flock conflicts between open files even inside one process
        busy = f"in use by another server \\(pid {os.getpid()}"
        with pytest.raises(StartupError, match=busy), hold_data_dir(data):
            pass
    with hold_data_dir(data):  # released at the end of the block
        pass


def test_the_lock_on_an_unusable_directory_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StartupError, match="data_dir: cannot use"), hold_data_dir(blocker / "x"):
        pass


@pytest.mark.slow
async def test_a_second_server_on_one_sqlite_data_dir_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = ServerProcess(data, "")
    try:
        await first.wait_ready()
        # another port, so only the data directory is shared
        second = await trio.to_thread.run_sync(lambda: cli("--data-dir", str(data), "--port", "0"))
        assert second.returncode == 2, second
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert lines[0].startswith(f"heaper_trio: data_dir: {data} is in use by another server")
        assert f"(pid {first.proc.pid})" in lines[0]
        # admin commands open the database beside the running server, as before
        listed = await trio.to_thread.run_sync(
            lambda: cli("users", "list", "--json", "--data-dir", str(data))
        )
        assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr
        # kill -9: the kernel drops the lock with the process, nothing stale is left
        first.proc.kill()
        first.proc.communicate()
        again = ServerProcess(data, "")
        try:
            await again.wait_ready()
            code, err = again.stop(signal.SIGTERM)
            assert code == 0, err
        finally:
            again.kill()
    finally:
        first.kill()


# -- `| head` ends quietly ----------------------------------------------------------------------


@pytest.mark.slow
async def test_output_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data, "")
    try:
        await server.wait_ready()
        async with HeaperClient(server.url) as admin:
            await admin.login()
        key = str(tmp_path / "me.key")
        for args in (
            ("users", "list", "--json", "--data-dir", str(data)),
            ("users", "list", "--data-dir", str(data)),
            ("client", "me", "--server", server.url, "--key", key),
            ("client", "login", "--server", server.url, "--key", key),
        ):
            r = await trio.to_thread.run_sync(lambda a=args: run_into_closed_pipe(*a))
            # 141 = 128 + SIGPIPE, as cat or grep report it; and not a word on stderr
            assert (r.returncode, r.stderr) == (SIGPIPE_STATUS, ""), (args, r.stderr)
        # and through a shell, as typed: `true` has gone before the JSON is written
        command = f"{sys.executable} -m heaper_trio users list --json --data-dir '{data}' | true"
        shell = await trio.to_thread.run_sync(
            lambda: subprocess.run(
                ["bash", "-o", "pipefail", "-c", command],
                capture_output=True,
                text=True,
                timeout=60,
                env=_env(),
            )
        )
        assert shell.returncode in (0, SIGPIPE_STATUS) and shell.stderr == "", shell
    finally:
        server.kill()  # SQLite survives a kill (the lock test stops a server gracefully)


def test_a_broken_pipe_elsewhere_is_still_a_traceback() -> None:
    """Only a closed stdout is taken quietly: a socket's or a child's broken pipe is a bug."""

    @quiet_on_broken_pipe
    def main() -> int:
        raise BaseExceptionGroup("nursery", [BrokenPipeError("some socket")])

    with pytest.raises(BaseExceptionGroup):
        main()


# -- settings as a self-hoster types them -------------------------------------------------------


def test_env_any_case_one_bool_rule_and_a_warning_for_a_typo(tmp_path: Path) -> None:
    env = _env(
        HEAPER_LOG_LEVEL="DEBUG",
        HEAPER_AUTO_APPROVE="1",
        HEAPER_ACCESS_LOG="Yes",
        HEAPER_SQLITE_SYNCHRONOUS="normal",
        HEAPER_PROT="9000",
    )
    # `users list` on a directory without a database: the settings are read (and accepted:
    # DEBUG lines show), the warning comes first, the missing database last
    r = cli("users", "list", "--data-dir", str(tmp_path / "none"), env=env)
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert lines[0] == (
        "heaper_trio: warning: unknown environment variable HEAPER_PROT is ignored; "
        "did you mean HEAPER_PORT?"
    )
    assert lines[-1].startswith("heaper_trio: data_dir: no database in"), lines
    assert any(" DEBUG " in line for line in lines) and "Traceback" not in r.stderr


def test_a_bad_boolean_is_refused_naming_the_variable(tmp_path: Path) -> None:
    r = cli("--data-dir", str(tmp_path / "d"), env=_env(HEAPER_AUTO_APPROVE="maybe"))
    assert r.returncode == 2
    assert r.stderr == "heaper_trio: HEAPER_AUTO_APPROVE: expected bool, got 'maybe'\n"


@pytest.mark.parametrize("command", [[], ["users", "list"]])
def test_data_dir_naming_a_file_says_what_is_wrong(tmp_path: Path, command: list[str]) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("")
    r = cli(*command, "--data-dir", str(blocker))
    assert r.returncode == 2
    assert r.stderr == (
        f"heaper_trio: command line: data_dir: {blocker} is a file, not a directory\n"
    )


# -- the top-level help ---------------------------------------------------------------------------


def test_top_level_help_shows_the_serve_flags() -> None:
    top = cli("--help")
    assert top.returncode == 0
    flat = " ".join(top.stdout.split())
    assert "serve flags, also accepted without `serve`" in flat
    flags = [s for s in SETTINGS if s.cli]
    assert {"--host", "--port", "--data-dir", "--database-url", "--workers"} <= {
        s.flag for s in flags
    }
    for s in flags:
        assert f"{s.flag} {s.name.upper()}" in flat, s.flag
    assert "--config FILE" in flat
    # ... and each of them is what serve takes (cli.main puts `serve` in front of them)
    parser = build_parser()
    for s in flags:
        value = "postgresql://x/y" if s.name == "database_url" else "1"
        args = parser.parse_args(["serve", s.flag, value, "--config", "c.toml"])
        assert getattr(args, s.name) is not None and args.config == "c.toml"
