"""The ``export`` and ``import`` subcommands' parsers (cli.py adds them). Kept apart from
:mod:`heaper_trio.client.transfer`, which is imported only when one of them runs: the client
package pulls in httpx, pycrdt and markdown-it, which ``serve`` and ``users`` do not need."""

from __future__ import annotations

import argparse
from typing import Any

COMMANDS = ("export", "import")
DEFAULT_SERVER = "http://127.0.0.1:8470"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--heap", required=True, metavar="ID", help="the heap's id")
    p.add_argument("--server", default=DEFAULT_SERVER, help="server URL (default %(default)s)")
    p.add_argument("--key", required=True, metavar="FILE", help="the heap owner's Ed25519 key file")
    p.add_argument("--quiet", action="store_true", help="no progress bar, even on a terminal")
    p.add_argument("--json", action="store_true", help="print a JSON report on stdout")


def add_parsers(sub: Any) -> None:
    export = sub.add_parser(
        "export",
        help="write a heap as Markdown files (a folder or a .zip)",
        description="Export a heap from a running server as Markdown, one file per block "
        "(front matter: id, type, title, tags, dates), mentions and page links as relative "
        "links, files in files/. DEST is a new (or empty) folder, or a path ending in .zip. "
        "A progress bar shows on a terminal; otherwise it is quiet.",
    )
    export.add_argument("dest", metavar="DEST")
    _common(export)
    imp = sub.add_parser(
        "import",
        help="read Markdown files (an export, an Obsidian vault) into a heap",
        description="Import a folder of Markdown notes (an export, or an Obsidian-style vault: "
        "[[wiki links]], ![[embeds]], #tags, front matter, nested folders) or an exported .zip "
        "into an existing heap of a running server, as new blocks; files are uploaded. "
        "Nothing outside SRC is read: links, symbolic links and absolute paths that leave it "
        "are skipped.",
    )
    imp.add_argument("src", metavar="SRC")
    _common(imp)
    # A zip is unpacked whole before anything is sent; these bound what it may unpack to.
    imp.add_argument(
        "--zip-max-total-mib",
        type=_at_least_one,
        default=8192,
        metavar="MIB",
        help="a .zip SRC may unpack to this much in all (default %(default)s); past it, or past "
        "the free space, the import stops before sending anything",
    )
    imp.add_argument(
        "--zip-max-entry-mib",
        type=_at_least_one,
        default=2048,
        metavar="MIB",
        help="largest single file a .zip SRC may unpack (default %(default)s)",
    )
    imp.add_argument(
        "--zip-max-entries",
        type=_at_least_one,
        default=100_000,
        metavar="N",
        help="most files and folders a .zip SRC may hold (default %(default)s)",
    )


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def run(args: argparse.Namespace) -> int:
    from heaper_trio.client.transfer.commands import run as run_transfer

    return run_transfer(args)
