"""Schemathesis against a live server: the OpenAPI document must tell the truth.

Every operation of ``/api/openapi.json`` is fuzzed with every check (``--checks all``: no 500s,
statuses, content types, headers and bodies as documented, bad input refused, good input
accepted, auth not ignored, ...) by the ``st`` command line, run as a subprocess against this
process's server. The run is seeded and deterministic, with a real access token and real ids
(a heap, a block, an uploaded file and its client thumbnail) offered as values for the
matching parameters, so requests reach past "unknown id" into the handlers.

Excluded, with reasons:

- ``GET /api/openapi.json`` is left out by Schemathesis itself: it is the document it loads
  (and it is read in full by every run, and checked by tests/test_openapi.py).
- ``GET /ws`` and ``GET /api/ws`` are WebSocket endpoints (documented as a GET answered with
  101). Schemathesis speaks plain HTTP and cannot perform the upgrade, so none of its checks
  can pass or mean anything there; the protocol is tested by tests/test_live_*.py.

This runs on SQLite only: the document and the validation are the same code on both engines,
and a second full run would double the suite's longest test.

``scripts/fuzz.sh`` runs the same thing for much longer (``python -m tests.test_fuzz_api``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from heaper_trio import crdt
from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient

ROOT = Path(__file__).resolve().parent.parent
SEED = 90_013  # scripts/fuzz.sh's default seed (CI runs derandomized: the same cases always)
CI_EXAMPLES = 40  # per operation and phase; ~3,200 cases in total (at least 2,000 asserted)
CI_MIN_CASES = 2_000
# A time box for the whole run (about 35 s on a shared 2-core machine). Not st's --max-time:
# that is a budget st spends in full, repeating fuzzing until it is gone.
CI_TIME_BOX = 180
EXCLUDED_PATHS = ("/ws", "/api/ws")  # WebSocket upgrades: see the module docstring


CURSORS_ENV = "HEAPER_FUZZ_CURSORS"
# The run's real tokens, and a file the hooks append one line to for each request that carried
# one of them and was answered 401: an operation sent no valid token, or got one and refused it,
# so it was not exercised. (POST /api/auth/refresh_token is left out: its token is rotated by its
# first call, and every later call is a reuse, refused by design.)
REFRESH_LABEL = "POST /api/auth/refresh_token"
TOKEN_ENV = "HEAPER_FUZZ_TOKEN"
REFUSED_ENV = "HEAPER_FUZZ_REFUSED_LOG"


def register_hooks() -> None:
    """Schemathesis hooks (this module is ``SCHEMATHESIS_HOOKS`` in the ``st`` process) for the
    two things JSON Schema has no words for, so that valid requests are really valid:

    - the formats of keys and signatures (canonical base58 of exactly 32 and 64 bytes);
    - a ``cursor`` of ``POST /api/heap`` (and of its GET form's query): an opaque token only
      the server makes, for one sort and direction. A schema-valid request gets a real one for
      its sort and order; a negative one keeps whatever was generated (a cursor that is not one
      is a 400).
    """
    import base58
    import schemathesis
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    def b58(size: int) -> Any:
        return st.binary(min_size=size, max_size=size).map(
            lambda raw: base58.b58encode(raw).decode()
        )

    schemathesis.openapi.format("base58-ed25519-public-key", b58(32))
    schemathesis.openapi.format("base58-ed25519-signature", b58(64))
    cursors: dict[str, str] = json.loads(os.environ.get(CURSORS_ENV) or "{}")

    @schemathesis.hook
    def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
        body = {
            ("POST", "/api/heap"): case.body,
            ("GET", "/api/heap"): case.query,
        }.get((case.operation.method.upper(), case.operation.path))
        if not isinstance(body, dict) or not isinstance(body.get("cursor"), str):
            return
        meta = case.meta
        if meta is None or meta.generation.mode != GenerationMode.POSITIVE:
            return
        sort = body.get("sort", "updated")
        order = body.get("order", "asc" if sort == "title" else "desc")
        body["cursor"] = cursors[f"{sort}:{order}"]

    @schemathesis.hook
    def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
        """Keep every failure but two kinds of "schema-violating request accepted" that are
        the same bytes on the wire as a valid request (st counts what is dropped):

        - a multipart text field that "became" a number or boolean: form fields are text,
          so ``mime_type=1704`` is the string "1704";
        - ``since`` of ``GET /api/sync/delta`` that is no number at all: the published API
          reads it as 0, as its description says (a number out of range is still a 400).
        """
        if getattr(failure, "code", None) != "ST201":
            return True
        message = str(getattr(failure, "message", ""))
        if case.media_type == "multipart/form-data" and re.search(
            r"in body - violates `type` at /properties/\w+ \(was string, became "
            r"(integer|number|boolean)\)",
            message,
        ):
            return False
        if case.operation.label == "GET /api/sync/delta" and "`since` in query" in message:
            since = (case.query or {}).get("since")
            number = isinstance(since, int) and not isinstance(since, bool)
            return number or (isinstance(since, str) and bool(re.fullmatch(r"-?[0-9]+", since)))
        return True

    real = {f"Bearer {token}" for token in json.loads(os.environ.get(TOKEN_ENV) or "[]")}
    refused_log = os.environ.get(REFUSED_ENV)

    @schemathesis.hook
    def after_call(context: Any, case: Any, response: Any) -> None:
        if response.status_code != 401 or not refused_log or case.operation.label == REFRESH_LABEL:
            return
        if not case.operation.definition.raw.get("security"):
            return  # a login route: its 401 is about the signature, not the bearer
        if response.request.headers.get("Authorization") not in real:
            return  # no token, or one st generated: refusing it is right
        with open(refused_log, "a", encoding="utf-8") as log:
            answer = " ".join(response.content[:200].decode(errors="replace").split())
            log.write(f"{case.operation.label}\t{answer}\n")


if os.environ.get("SCHEMATHESIS_HOOKS") == __name__:
    register_hooks()


@dataclass
class Prepared:
    """What a real client has made before the fuzzer starts: ids the fuzzer may use."""

    token: str
    refresh_token: str
    heaps: list[str]
    throwaway_heaps: list[str]  # offered to DELETE /api/heap/{id}, so the main one survives
    blocks: list[str]
    file_hash: str
    file_id: str
    thumbnail: tuple[str, str] = ("image", "small")
    pending: tuple[str, str] = ("", "")  # (block, hash) of an upload waiting for its one chunk
    cursors: dict[str, str] = field(default_factory=dict)  # "sort:order" -> a real cursor


def _png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 60, 20)).save(out, format="PNG")
    return out.getvalue()


async def prepare(client: HeaperClient) -> Prepared:
    """Log in and make one of everything the routes take an id of."""
    await client.login()
    heap = (await client.post("/api/heap/add", json={"name": "fuzz"})).json()["heap"]
    spare = []
    for i in range(3):
        r = await client.post("/api/heap/add", json={"name": f"spare {i}"})
        spare.append(r.json()["id"])
    update = crdt.new_block_document(block_type="document", title="fuzzed")
    r = await client.post(
        "/api/sync/push",
        json={
            "blocks": [
                {
                    "block_id": "fuzz-doc",
                    "workspace_id": heap["id"],
                    "update": crdt.encode_b64(update),
                }
            ]
        },
    )
    assert r.status_code == 200 and r.json()["blocks"][0]["status"] == "created", r.text
    png = _png()
    digest = hashlib.sha256(png).hexdigest()
    r = await client.post(
        f"/api/upload/file/{heap['id']}/fuzz-file", files={"file": ("red.png", png, "image/png")}
    )
    assert r.status_code == 200, r.text
    file_id = r.json()["file_id"]
    r = await client.post(
        f"/api/upload/thumbnail/fuzz-file/{digest}/small",
        files={"thumbnail": ("t.png", png, "image/png")},
        data={"type": "image", "size": "small"},
    )
    assert r.status_code == 200, r.text
    # A resumable upload of one byte, started and never sent: chunk PUTs then reach a session
    pending = hashlib.sha256(b"z").hexdigest()
    r = await client.post(
        f"/api/upload/init/{heap['id']}/fuzz-pending",
        json={"hash": pending, "size": 1, "chunk_size": 65_536},
    )
    assert r.status_code == 200 and r.json()["status"] == "ready", r.text
    cursors = {}
    for sort in ("created", "updated", "title"):
        for order in ("asc", "desc"):
            r = await client.post(
                "/api/heap", json={"heap_id": heap["id"], "sort": sort, "order": order, "limit": 1}
            )
            cursors[f"{sort}:{order}"] = r.json()["next_cursor"]
    # A second session of the same account, whose refresh token POST /api/auth/refresh_token
    # may rotate (and, reused, revoke) without touching the token the fuzzer sends elsewhere.
    async with HeaperClient(client.base_url, client.key) as other:
        await other.login()
        assert other.refresh_token
        refresh = other.refresh_token
    assert client.access_token
    return Prepared(
        client.access_token,
        refresh,
        [heap["id"]],
        spare,
        [heap["root_block_id"], "fuzz-doc", "fuzz-file"],
        digest,
        file_id,
        pending=("fuzz-pending", pending),
        cursors=cursors,
    )


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def config_toml(p: Prepared) -> str:
    """Schemathesis configuration: real ids as dictionaries that generated values are drawn
    from half of the time (the other half stays random, so "unknown id" is fuzzed too)."""
    dictionaries = {
        "heaps": p.heaps,
        "spare_heaps": p.throwaway_heaps,
        "blocks": p.blocks,
        "hashes": [p.file_hash],
        "keys": [p.file_hash, p.file_id],
        "thumb_names": list(p.thumbnail),
        "sizes": ["tiny", "small", "medium", "large", "300"],
        "file_blocks": [p.blocks[-1]],
        "pending_blocks": [p.pending[0]],
        "pending_hashes": [p.pending[1]],
        "indexes": ["0"],
    }
    bind = {
        "path.heap_id": "heaps",
        "path.heapId": "heaps",
        "path.id": "heaps",
        "query.workspace_id": "heaps",
        "query.heap_id": "heaps",
        "body.heap_id": "heaps",
        "body.workspace_id": "heaps",
        "body.blocks[*].workspace_id": "heaps",
        "body.blocks[*].block_id": "blocks",
        "path.block_id": "blocks",
        "path.blockKey": "blocks",
        "body.block_id": "blocks",
        "body.block_ids[*]": "blocks",
        "body.tag": "blocks",
        "path.hash": "hashes",
        "path.file_hash": "hashes",
        "body.file_hash": "hashes",
        "body.hash": "hashes",
        "path.key": "keys",
        "body.file_id": "keys",
        "path.thumbnail_type": "thumb_names",
        "path.thumbnail_size": "thumb_names",
        "path.thumbnail_key": "thumb_names",
        "path.size": "sizes",
    }
    lines: list[str] = []
    for name, values in dictionaries.items():
        lines += [f"[dictionaries.{name}]", f"values = {_toml_list(values)}", ""]
    # No NUL in generated text: the server refuses it in every string (400 invalid_value: no
    # store can hold it), a rule JSON Schema has no words for short of a pattern on each one.
    # (Lone surrogates st does not generate: its codec is UTF-8.)
    lines += ["[generation]", "allow-x00 = false", ""]
    lines.append("[parameters]")
    for key, dictionary in bind.items():
        lines.append(f'"{key}" = {{ dictionary = "{dictionary}", probability = 0.5 }}')
    # What a valid request may be answered with besides 2xx, 401, 403, 404, 409 and 429:
    # 422 "schema-valid, but the content is not acceptable" (not a Yjs update, bytes that do
    #     not match their hash, not an image): no schema says what makes content valid;
    # 413 a limit that is a server setting (max_chunk_bytes, max_sync_batch, ...), which the
    #     static document cannot know.
    accepted = ["2XX", "3XX", "401", "403", "404", "409", "413", "422", "429"]
    lines += ["", "[checks.positive_data_acceptance]", f"expected-statuses = {accepted}"]
    # upload/init: at most 10,000 chunks (size / chunk_size) is a rule between two fields
    # that JSON Schema cannot state; breaking it is 400 invalid_value (details give limits).
    # One `include-name` ("METHOD path") per entry: st ORs the include-* keys of an entry, so
    # include-path plus include-method would apply it to every POST (that once sent the refresh
    # token below as the bearer of every POST operation: 401 for all of them).
    lines += [
        "",
        "[[operations]]",
        'include-name = "POST /api/upload/init/{heap_id}/{block_id}"',
        "[operations.checks.positive_data_acceptance]",
        f"expected-statuses = {[*accepted, '400']}",
    ]
    lines += [
        "",
        "[[operations]]",
        f'include-name = "{REFRESH_LABEL}"',
        "[operations.headers]",
        f'Authorization = "Bearer {p.refresh_token}"',
    ]
    lines += [
        "",
        "[[operations]]",
        'include-name = "DELETE /api/heap/{id}"',
        "[operations.parameters]",
        '"path.id" = { dictionary = "spare_heaps", probability = 0.5 }',
    ]
    # Operations whose ids must all match at once (a 1-in-3 block times a 1-in-2 hash rarely
    # does): the pending upload for chunk PUTs, the file's block for its thumbnails.
    chunk = "PUT /api/upload/chunk/{heap_id}/{block_id}/{hash}/{index}"
    per_operation = {
        chunk: {
            "path.block_id": "pending_blocks",
            "path.hash": "pending_hashes",
            "path.index": "indexes",
        },
        "POST /api/upload/thumbnail/{block_id}/{file_hash}/{thumbnail_key}": {
            "path.block_id": "file_blocks"
        },
        "GET /api/download/thumbnail/{block_id}/{file_hash}/{thumbnail_type}/{thumbnail_size}": {
            "path.block_id": "file_blocks"
        },
    }
    # A chunk's length must be the one its upload session expects (400 chunk_size_mismatch):
    # state the document cannot know, as upload/init's chunk count above.
    for name, params in per_operation.items():
        lines += ["", "[[operations]]", f'include-name = "{name}"', "[operations.parameters]"]
        lines += [
            f'"{key}" = {{ dictionary = "{dictionary}", probability = 0.7 }}'
            for key, dictionary in params.items()
        ]
        if name == chunk:
            lines += [
                "[operations.checks.positive_data_acceptance]",
                f"expected-statuses = {[*accepted, '400']}",
            ]
    lines.append("")
    return "\n".join(lines)


@dataclass
class FuzzResult:
    exit_code: int
    output: str
    cases: int
    failures: int
    seconds: float
    operations: int
    refused: list[str] = field(default_factory=list)  # "label\tanswer": a real token's 401s


def st_command(
    url: str,
    p: Prepared,
    *,
    config: Path,
    examples: int,
    seed: int | None,
    max_time: int | None,
    workers: int,
    report: Path,
) -> list[str]:
    """``seed=None``: derandomized (the same cases every run, for CI); a seed: a seeded random
    run, so long runs with other seeds explore cases CI never sends."""
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    cmd = [
        st,
        "--config-file",
        str(config),
        "run",
        f"{url}/api/openapi.json",
        "--checks",
        "all",
        "--mode",
        "all",
        "--header",
        f"Authorization: Bearer {p.token}",
        "--max-examples",
        str(examples),
        *(["--generation-deterministic"] if seed is None else ["--seed", str(seed)]),
        "--workers",
        str(workers),
        "--request-timeout",
        "30",
        "--no-color",
        "--output-truncate",
        "false",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(report),
    ]
    for path in EXCLUDED_PATHS:
        cmd += ["--exclude-path", path]
    if max_time is not None:
        cmd += ["--max-time", str(max_time)]
    return cmd


def _totals(output: str) -> tuple[int, int, int]:
    """(cases, failures, operations) from st's summary."""
    cases = re.search(r"Test cases:\s*\n?\s*(\d+) generated", output)
    ops = re.search(r"API Operations:\s*\n?\s*Selected:\s*(\d+)", output)
    failures = re.search(r"(\d+) unique failures?", output)
    return (
        int(cases.group(1)) if cases else 0,
        int(failures.group(1)) if failures else 0,
        int(ops.group(1)) if ops else 0,
    )


async def run_fuzz(
    url: str,
    p: Prepared,
    workdir: Path,
    *,
    examples: int,
    seed: int | None = None,
    max_time: int | None = None,
    workers: int = 1,
) -> FuzzResult:
    """One workers by default: hypothesis parsing lambdas in several threads at once hit a
    CPython 3.11 ``ast`` bug ("AST constructor recursion depth mismatch")."""
    config = workdir / "schemathesis.toml"
    config.write_text(config_toml(p))
    report = workdir / "events.ndjson"
    cmd = st_command(
        url,
        p,
        config=config,
        examples=examples,
        seed=seed,
        max_time=max_time,
        workers=workers,
        report=report,
    )
    refused_log = workdir / "refused.log"
    refused_log.write_text("")
    started = time.monotonic()
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.test_fuzz_api",
        CURSORS_ENV: json.dumps(p.cursors),
        TOKEN_ENV: json.dumps([p.token, p.refresh_token]),
        REFUSED_ENV: str(refused_log),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = await trio.run_process(
        cmd, capture_stdout=True, stderr=subprocess.STDOUT, check=False, cwd=workdir, env=env
    )
    output = done.stdout.decode(errors="replace")
    cases, failures, ops = _totals(output)
    return FuzzResult(
        done.returncode,
        output,
        cases,
        failures,
        time.monotonic() - started,
        ops,
        refused_log.read_text().splitlines(),
    )


@pytest.mark.slow
@pytest.mark.engines("sqlite")
async def test_schemathesis_finds_nothing(server: RunningServer, tmp_path: Path) -> None:
    async with HeaperClient(server.url) as client:
        prepared = await prepare(client)
        with trio.fail_after(CI_TIME_BOX):
            result = await run_fuzz(server.url, prepared, tmp_path, examples=CI_EXAMPLES)
        doc = (await client.http.get("/api/openapi.json")).json()
    tail = result.output[-20_000:]
    assert result.exit_code == 0, tail
    assert result.failures == 0, tail
    assert result.cases >= CI_MIN_CASES, (result.cases, tail)
    # Every operation was reached with a token the server takes (not just answered 401)
    assert result.refused == [], result.refused[:20]
    assert "Authentication failed" not in result.output, tail
    documented = sum(len(ops) for ops in doc["paths"].values())
    # st itself leaves out the operation it loaded the document from (GET /api/openapi.json)
    assert result.operations == documented - len(EXCLUDED_PATHS) - 1, (result.operations, tail)


# -- the long run (scripts/fuzz.sh) ---------------------------------------------------------


async def _main(args: argparse.Namespace) -> int:
    from heaper_trio.app import run_server
    from heaper_trio.settings import load_settings

    with tempfile.TemporaryDirectory(prefix="heaper-fuzz-") as tmp:
        work = Path(tmp)
        settings = load_settings(
            environ={},
            overrides={
                "host": "127.0.0.1",
                "port": 0,
                "data_dir": str(work / "data"),
                "database_url": args.database_url or "",
                "auth_rate_limit": 1_000_000,
                "access_token_ttl": 24 * 3600,
                "graceful_timeout": 1.0,
            },
        )
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            server: RunningServer = await nursery.start(
                partial(run_server, settings, shutdown=shutdown)
            )
            try:
                async with HeaperClient(server.url) as client:
                    prepared = await prepare(client)
                print(f"server {server.url}, data in {work / 'data'}", flush=True)
                result = await run_fuzz(
                    server.url,
                    prepared,
                    work,
                    examples=args.examples,
                    seed=args.seed,
                    max_time=args.max_time,
                    workers=args.workers,
                )
            finally:
                shutdown.set()
        print(result.output)
        for line in result.refused[:20]:
            print(f"REFUSED (a valid access token answered 401): {line}")
        print(
            f"TOTALS: {result.cases} cases, {result.operations} operations, "
            f"{result.failures} failures, {len(result.refused)} valid-token 401s, "
            f"{result.seconds:.0f} s, exit {result.exit_code}"
        )
        return 0 if result.exit_code == 0 and result.failures == 0 and not result.refused else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="A long Schemathesis run against a fresh server on a temporary data directory."
    )
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument(
        "--max-time",
        type=int,
        default=None,
        help="st keeps fuzzing until this many seconds are spent",
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--database-url", default="")
    sys.exit(trio.run(_main, parser.parse_args()))
