"""The ``export`` and ``import`` subcommands of ``python -m heaper_trio`` (cli.py adds these
parsers and hands the parsed arguments here). Both log in to a running server with the heap
owner's key file, as ``client`` does."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import trio

from heaper_trio.client.errors import HeaperError, LoginPending
from heaper_trio.client.session import HeaperClient, load_or_create_keypair
from heaper_trio.client.transfer.export import TransferError, export_heap
from heaper_trio.client.transfer.importer import import_source
from heaper_trio.client.transfer.progress import Bar

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


def run(args: argparse.Namespace) -> int:
    return trio.run(_run, args)


async def _run(args: argparse.Namespace) -> int:
    bar = Bar(args.command, quiet=args.quiet)
    async with HeaperClient(args.server, load_or_create_keypair(args.key)) as client:
        try:
            await client.login()
            if args.command == "export":
                report: Any = await export_heap(client, args.heap, Path(args.dest), bar=bar)
            else:
                report = await import_source(client, Path(args.src), args.heap, bar=bar)
        except LoginPending as e:
            return _fail(
                f"{e}; an admin runs: python -m heaper_trio users approve {client.public_key}", 3
            )
        except TransferError as e:
            return _fail(str(e))
        except HeaperError as e:
            return _fail(f"{args.command}: {e.message} ({e.code})")
        except httpx.TransportError as e:
            return _fail(f"{args.command}: cannot reach {args.server}: {e}")
        except httpx.HTTPStatusError as e:
            return _fail(f"{args.command}: {e.response.status_code} from {args.server}")
    if args.json:
        print(json.dumps(asdict(report), indent=2, sort_keys=True))
    return 0


def _fail(line: str, status: int = 2) -> int:
    print(f"heaper_trio: {line}", file=sys.stderr)
    return status
