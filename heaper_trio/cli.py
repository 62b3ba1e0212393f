"""``python -m heaper_trio``: serve (the default) and user administration.

Errors a self-hoster can fix (bad config, unusable data directory, unreachable database,
unknown user) print as one line and exit 2; SIGINT and SIGTERM shut down cleanly and exit 0.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import signal
import sys
import textwrap
from collections.abc import Awaitable, Callable, Sequence
from contextlib import nullcontext
from typing import Any

import trio

from heaper_trio import __version__, gc_tuning, logs
from heaper_trio.aio import open_asyncio_loop
from heaper_trio.datadir_lock import hold_data_dir
from heaper_trio.errors import HeaperError, StartupError
from heaper_trio.records import User
from heaper_trio.settings import BY_NAME, SETTINGS, Settings, load_settings, unknown_env_warnings
from heaper_trio.stdout_pipe import quiet_on_broken_pipe

log = logging.getLogger("heaper_trio")

DESCRIPTION = """\
heaper_trio: a self-hosted Heaper server.

With no command, `serve` runs. Settings come from (lowest first) defaults, a TOML config file
(--config or HEAPER_CONFIG), HEAPER_* environment variables, and these flags. See
docs/configuration.md for every setting."""

USERS_HELP = """\
Manage accounts. A user is named by id or base58 public key.
  list                     all accounts with state and admin flag
  approve USER             let a pending (or rejected) account log in
  reject USER              refuse an account and revoke its tokens
  make-admin USER          grant admin rights (and approve)
  remove-admin USER        take admin rights away (never from the last admin)
  revoke-tokens USER       invalidate every access and refresh token of the account"""


def _add_storage_flags(p: argparse.ArgumentParser) -> None:
    for name in ("data_dir", "database_url"):
        s = BY_NAME[name]
        p.add_argument(
            s.flag,
            dest=name,
            metavar=name.upper(),
            help=f"{s.help} [env {s.env}, default {s.default!r}]",
        )
    p.add_argument("--config", metavar="FILE", help="TOML config file [env HEAPER_CONFIG]")


# The serve flags also work without `serve` (the default command), so the top help lists them
# (a no-break space keeps each flag on one line with its value).
_SERVE_FLAGS = [*(f"{s.flag}\xa0{s.name.upper()}" for s in SETTINGS if s.cli), "--config\xa0FILE"]
SERVE_FLAGS_EPILOG = (
    "serve flags, also accepted without `serve` (`serve --help` explains each):\n"
    + (
        textwrap.fill("  ".join(_SERVE_FLAGS), 92, initial_indent="  ", subsequent_indent="  ")
    ).replace("\xa0", " ")
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m heaper_trio",
        description=DESCRIPTION,
        epilog=SERVE_FLAGS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"heaper_trio {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the server (default)",
        description="Run the server until SIGINT or SIGTERM.",
    )
    for s in SETTINGS:
        if s.cli and s.name not in ("data_dir", "database_url"):
            serve.add_argument(
                s.flag,
                dest=s.name,
                type=str if s.type is bool else s.type,  # booleans: settings.parse_bool
                metavar=s.name.upper(),
                help=f"{s.help} [env {s.env}, default {s.default!r}]",
            )
    _add_storage_flags(serve)
    # A worker started by the --workers supervisor (workers.py): its control socket
    serve.add_argument("--worker-control-fd", type=int, help=argparse.SUPPRESS)

    users = sub.add_parser(
        "users",
        help="list, approve, reject, make-admin, remove-admin, revoke-tokens",
        description=USERS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_storage_flags(users)
    users.add_argument("--json", action="store_true", help="print JSON instead of a table")
    users.add_argument(
        "action",
        choices=("list", "approve", "reject", "make-admin", "remove-admin", "revoke-tokens"),
    )
    users.add_argument("user", nargs="?", help="user id or base58 public key")

    admin_link = sub.add_parser(
        "admin-link",
        help="print a single-use link that opens the admin page signed in",
        description="Print a URL (public_url, else the server's host and port, + /admin#...) "
        "that signs an admin in to the admin page once, within --minutes. Works while the "
        "server runs; the secret after # never reaches access logs.",
    )
    _add_storage_flags(admin_link)
    for name in ("public_url", "host", "port"):
        s = BY_NAME[name]
        admin_link.add_argument(s.flag, dest=name, type=s.type, metavar=name.upper())
    admin_link.add_argument(
        "--user", metavar="USER", help="the admin (id or public key); default: the oldest admin"
    )
    admin_link.add_argument(
        "--minutes",
        type=int,
        default=10,
        choices=range(1, 61),
        metavar="1-60",
        help="how long the link works (default %(default)s)",
    )

    client = sub.add_parser(
        "client",
        help="talk to a running server as a user (login, me)",
        description="Log in to a server with a key file (created if missing) and print JSON: "
        "`login` prints the tokens, `me` the profile. For scripts and first checks.",
    )
    client.add_argument("action", choices=("login", "me"))
    client.add_argument(
        "--server",
        default=f"http://127.0.0.1:{BY_NAME['port'].default}",
        help="server URL (default %(default)s)",
    )
    client.add_argument(
        "--key",
        required=True,
        metavar="FILE",
        help="the user's Ed25519 key file (hex seed); created if missing",
    )
    from heaper_trio.ops import commands as ops_commands

    ops_commands.add_parsers(sub)  # backup, restore
    ops_commands.add_files_parser(sub)  # files migrate --to s3
    from heaper_trio import transfer_cli

    transfer_cli.add_parsers(sub)  # export, import
    return parser


def _settings_from(args: argparse.Namespace) -> Settings:
    overrides = {s.name: getattr(args, s.name, None) for s in SETTINGS}
    return load_settings(config_path=args.config, overrides=overrides)


def _configure_logging(settings: Settings, *, with_pid: bool = False) -> None:
    # several processes write to one log: text lines name the pid (JSON lines always do)
    logs.configure(settings.log_level, settings.log_format, with_pid=with_pid)


async def _serve(settings: Settings, control_fd: int | None = None) -> None:
    from heaper_trio.app import run_server
    from heaper_trio.workers import serve_as_worker

    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            # A worker may be asked to stop by its supervisor and signalled too (systemd
            # signals every process of the unit): only a second *signal* stops it at once.
            signalled = False
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    if signalled:
                        log.warning("second signal: stopping now")
                        nursery.cancel_scope.cancel()
                        return
                    signalled = True
                    log.info("%s received: shutting down", signal.Signals(signum).name)
                    shutdown.set()

        nursery.start_soon(watch_signals)
        if control_fd is None:
            await run_server(settings, shutdown=shutdown)
        else:
            await serve_as_worker(settings, control_fd, shutdown, nursery.cancel_scope.cancel)
        nursery.cancel_scope.cancel()


def _supervise(settings: Settings) -> int:
    from heaper_trio.workers import supervise

    outcome = trio.run(supervise, settings)
    if outcome.message:
        print(f"heaper_trio: {outcome.message}", file=sys.stderr)
    return outcome.code


def _user_row(u: User) -> dict[str, Any]:
    return {
        "id": u.id,
        "public_key": u.public_key,
        "state": u.state,
        "is_admin": u.is_admin,
        "email": u.email,
        "created_at": u.created_at,
    }


async def _users(settings: Settings, args: argparse.Namespace) -> int:
    from heaper_trio.services.admin import UserAdmin, open_user_admin

    if args.action != "list" and not args.user:
        raise StartupError(f"users {args.action}: name a user (id or public key)")
    async with open_asyncio_loop(), open_user_admin(settings) as admin:
        if args.action == "list":
            rows = [_user_row(u) for u in await admin.list_users()]
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                print(f"{'ID':32}  {'STATE':8}  {'ADMIN':5}  PUBLIC KEY")
                for r in rows:
                    print(
                        f"{r['id']:32}  {r['state']:8}  {str(r['is_admin']).lower():5}  "
                        f"{r['public_key']}"
                    )
            return 0
        actions: dict[str, Callable[[UserAdmin, str], Awaitable[User]]] = {
            "approve": UserAdmin.approve,
            "reject": UserAdmin.reject,
            "make-admin": UserAdmin.make_admin,
            "remove-admin": UserAdmin.remove_admin,
            "revoke-tokens": UserAdmin.revoke_tokens,
        }
        row = _user_row(await actions[args.action](admin, args.user))
        print(
            json.dumps(row)
            if args.json
            else f"{args.action}: {row['id']} is {row['state']}"
            f"{', admin' if row['is_admin'] else ''}"
        )
        return 0


async def _admin_link(settings: Settings, args: argparse.Namespace) -> int:
    from heaper_trio.services.admin import open_user_admin
    from heaper_trio.services.admin_links import create_admin_link

    async with open_asyncio_loop(), open_user_admin(settings) as admin:
        link = await create_admin_link(admin.storage, settings, args.user, ttl_s=args.minutes * 60)
    print(link.url)
    print(
        f"heaper_trio: signs in {link.user.id} once, within {args.minutes} minutes",
        file=sys.stderr,
    )
    return 0


async def _client(args: argparse.Namespace) -> int:
    import httpx

    from heaper_trio.client import HeaperClient, LoginPending, load_or_create_keypair

    async with HeaperClient(args.server, load_or_create_keypair(args.key)) as c:
        try:
            answer = await c.login()
            if args.action == "login":
                print(
                    json.dumps(
                        {
                            k: answer.get(k)
                            for k in (
                                "user_id",
                                "is_admin",
                                "accessToken",
                                "refreshToken",
                                "expires_at",
                                "server_public_key",
                            )
                        },
                        indent=2,
                    )
                )
            else:
                r = await c.post("/api/me")
                r.raise_for_status()
                print(json.dumps(r.json(), indent=2))
        except LoginPending as e:
            print(
                json.dumps(
                    {"user_id": c.user_id, "public_key": c.public_key, "approval_required": True},
                    indent=2,
                )
            )
            print(
                f"heaper_trio: {e}; an admin runs: python -m heaper_trio users approve "
                f"{c.public_key}",
                file=sys.stderr,
            )
            return 3
        except httpx.HTTPStatusError as e:
            print(f"heaper_trio: {e.response.status_code} {e.response.text}", file=sys.stderr)
            return 1
        except httpx.TransportError as e:
            print(f"heaper_trio: cannot reach {args.server}: {e}", file=sys.stderr)
            return 1
    return 0


@quiet_on_broken_pipe
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands: tuple[str, ...] = ("serve", "users", "admin-link", "client", "backup", "restore")
    commands += ("files", "export", "import", "-h", "--help", "--version")
    if not argv or argv[0] not in commands:
        argv = ["serve", *argv]  # `serve` is the default command, flags and all
    args = build_parser().parse_args(argv)
    command = args.command
    settings: Settings | None = None
    if command == "client":
        return trio.run(_client, args)
    if command in ("export", "import"):
        from heaper_trio import transfer_cli

        return transfer_cli.run(args)
    try:
        if command in ("backup", "restore", "files"):
            from heaper_trio.ops import commands as ops_commands

            wanted = command in ("backup", "files")  # restore takes no server settings
            return ops_commands.run(args, _settings_from(args) if wanted else None)
        settings = _settings_from(args)
        control_fd = getattr(args, "worker_control_fd", None)
        for warning in unknown_env_warnings():
            print(f"heaper_trio: warning: {warning}", file=sys.stderr)
        workers = settings.worker_count if command == "serve" else 1
        _configure_logging(settings, with_pid=workers > 1 or control_fd is not None)
        if workers > 1:
            return _supervise(settings)
        if command == "serve":
            gc_tuning.enable()
            # one server per SQLite data directory (datadir_lock); PostgreSQL servers share one
            sqlite = settings.engine == "sqlite"
            with hold_data_dir(settings.data_path) if sqlite else nullcontext():
                trio.run(_serve, settings, control_fd)
            global SERVED_CLEANLY
            SERVED_CLEANLY = True  # __main__ may skip the interpreter's teardown
            return 0
        if command == "admin-link":
            return trio.run(_admin_link, settings, args)
        return trio.run(_users, settings, args)
    except BaseException as e:
        # Nurseries wrap errors in exception groups; a lone StartupError inside is still
        # a one-line message, not a traceback.
        leaf = _single_leaf(e)
        if isinstance(leaf, StartupError):
            print(f"heaper_trio: {leaf}", file=sys.stderr)
            return 2
        if isinstance(leaf, HeaperError):
            print(f"heaper_trio: {leaf.message}", file=sys.stderr)
            return 2
        if isinstance(leaf, KeyboardInterrupt):  # Ctrl-C before the signal watcher ran
            return 130
        if settings and isinstance(leaf, OSError) and leaf.errno in _BIND_ERRORS:
            print(
                f"heaper_trio: host/port: cannot listen on {settings.host}:{settings.port}: "
                f"{leaf.strerror}",
                file=sys.stderr,
            )
            return 2
        raise


SERVED_CLEANLY = False  # set once a server has shut down and released everything
_BIND_ERRORS = {errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES}


def _single_leaf(e: BaseException) -> BaseException:
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return e
