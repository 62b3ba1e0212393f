"""``python -m heaper_trio admin-link`` and ``users remove-admin`` beside a running server, on
both engines. ``cli.main`` runs in a thread of its own (its own trio run and database
connections), as in ``test_admin_browser.py``: the command's whole path without an
interpreter start; ``test_cli.py`` covers the process-level behaviour of the commands."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from heaper_trio import cli
from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient, LoginPending


async def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                return cli.main(list(args))
            except SystemExit as e:  # argparse
                return int(e.code or 0)

    code = await trio.to_thread.run_sync(run)
    return code, out.getvalue(), err.getvalue()


def storage_flags(server: RunningServer) -> list[str]:
    settings = server.services.settings
    flags = ["--data-dir", str(settings.data_path)]
    return flags + (["--database-url", settings.database_url] if settings.database_url else [])


async def test_admin_link_and_remove_admin_commands(
    server: RunningServer, admin: HeaperClient, make_client: Callable[..., HeaperClient]
) -> None:
    flags = storage_flags(server)
    code, out, err = await run_cli("admin-link", *flags, "--port", "8123", "--minutes", "2")
    assert code == 0, err
    assert out.startswith("http://127.0.0.1:8123/admin#") and out.count("\n") == 1
    assert admin.user_id in err and "2 minutes" in err

    bob = make_client()
    with pytest.raises(LoginPending):
        await bob.login()
    if server.services.storage.engine == "sqlite":  # the same on PostgreSQL (~1 s a call)
        code, _, err = await run_cli("admin-link", *flags, "--user", bob.public_key)
        assert code == 2 and "not an approved admin" in err and "Traceback" not in err
        code, _, err = await run_cli("admin-link", *flags, "--user", "nobody")
        assert code == 2 and "nobody" in err
        code, _, err = await run_cli("admin-link", *flags, "--minutes", "0")
        assert code == 2 and "--minutes" in err

    code, _, err = await run_cli("users", "remove-admin", admin.public_key, *flags)
    assert code == 2 and "last admin" in err
    assert (await run_cli("users", "make-admin", bob.public_key, *flags))[0] == 0
    code, out, err = await run_cli("users", "remove-admin", admin.public_key, *flags)
    assert code == 0 and "approved" in out and "admin" not in out.split("approved")[1], err
    # The server hears it (on PostgreSQL: its user-row cache, by NOTIFY, which lands within
    # moments of the commit): no admin routes now.
    with trio.fail_after(5):
        while (await admin.get("/api/admin/users")).status_code != 403:
            await trio.sleep(0.02)


@pytest.mark.engines("sqlite")
async def test_admin_link_refuses_a_directory_without_a_database(tmp_path: Path) -> None:
    code, _, err = await run_cli("admin-link", "--data-dir", str(tmp_path / "none"))
    assert code == 2 and "no database in" in err
    assert not (tmp_path / "none").exists()
