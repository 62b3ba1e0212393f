"""Running ``python -m heaper_trio export|import`` (the parsers are in
:mod:`heaper_trio.transfer_cli`, which the command line imports cheaply). Both log in to a
running server with the heap owner's key file, as ``client`` does."""

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
from heaper_trio.client.transfer.vault import ZipLimits


def run(args: argparse.Namespace) -> int:
    return trio.run(run_async, args)


async def run_async(args: argparse.Namespace) -> int:
    """The command in a running trio loop; answers the exit status (2: one line on stderr)."""
    bar = Bar(args.command, quiet=args.quiet)
    async with HeaperClient(args.server, load_or_create_keypair(args.key)) as client:
        try:
            await client.login()
            if args.command == "export":
                report: Any = await export_heap(client, args.heap, Path(args.dest), bar=bar)
            else:
                limits = ZipLimits(
                    args.zip_max_total_mib << 20, args.zip_max_entry_mib << 20, args.zip_max_entries
                )
                report = await import_source(
                    client, Path(args.src), args.heap, bar=bar, zip_limits=limits
                )
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
