"""The examples of docs/documents.md and docs/client.md run against a real server, on both
engines, and the docs show them verbatim.

The examples are files under docs/examples/; each appears in its page as one fenced code block,
character for character (checked here), so what a reader copies is what ran. The JavaScript
example needs ``node`` and ``npm ci`` in tests/interop (its ``yjs``); skipped without them,
unless ``HEAPER_TEST_REQUIRE_NODE=1`` (CI), which makes it a failure.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient, KeyPair

from . import test_interop

ROOT = Path(__file__).resolve().parent.parent
DOCS, EXAMPLES, INTEROP = ROOT / "docs", ROOT / "docs" / "examples", ROOT / "tests" / "interop"
node = test_interop.node  # the fixture: node, with tests/interop's packages installed
# example file -> the page that shows it
SHOWN_IN = {
    "write_block.py": "documents.md",
    "write_block.mjs": "documents.md",
    "client_tour.py": "client.md",
}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)


def fenced_blocks(page: Path) -> list[str]:
    return [m[2] for m in FENCE.finditer(page.read_text())]


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"docs_example_{name[:-3]}", EXAMPLES / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_shown_verbatim() -> None:
    assert sorted(p.name for p in EXAMPLES.iterdir() if p.is_file()) == sorted(SHOWN_IN)
    for name, page in SHOWN_IN.items():
        assert (EXAMPLES / name).read_text() in fenced_blocks(DOCS / page), (
            f"docs/{page} must show docs/examples/{name} as one fenced block, unchanged"
        )


def test_every_python_snippet_parses() -> None:
    """The short snippets between the examples are not run; they must at least be Python
    (top-level ``await`` allowed, as in an async REPL)."""
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    fence = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)
    for page in ("documents.md", "client.md"):
        snippets = [m[1] for m in fence.finditer((DOCS / page).read_text())]
        assert snippets, page
        for snippet in snippets:
            compile(snippet, f"docs/{page}", "exec", flags=flags)
    with pytest.raises(SyntaxError):
        compile("await x(", "bad", "exec", flags=flags)


def test_the_verbatim_check_can_fail(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("text\n```python\nprint(1)\n```\n")
    assert fenced_blocks(page) == ["print(1)\n"]
    assert "print(2)\n" not in fenced_blocks(page)


async def login_as(server: RunningServer, key_file: Path) -> HeaperClient:
    client = HeaperClient(server.url, KeyPair.load(key_file))
    await client.login()
    return client


async def test_python_block_example(server: RunningServer, tmp_path: Path) -> None:
    key_file = tmp_path / "me.key"
    out: dict[str, Any] = await load("write_block.py").main(server.url, str(key_file))
    block = out["block"]
    assert block["block"]["title"] == "Spring plan" and block["block"]["type"] == "document"
    assert block["text"] == (
        "Plan\nAsk Ideas about the garden, see  and the wiki.\nseeds\nsoil\nWater daily."
    )
    assert block["relations"]["tags"] and out["tag_id"] in json.dumps(block["relations"])
    assert out["block_id"] in [b["block_id"] for b in out["trash"]["blocks"]]
    async with await login_as(server, key_file) as client:
        got = (await client.post(f"/api/block/{out['block_id']}")).json()
        assert got["block"]["deleted_at"] is None  # restored at the end
        assert got["apps"]["board-1"]["filter"] == ["tag", out["tag_id"]]
        tag = (await client.post(f"/api/block/{out['tag_id']}")).json()
        assert out["block_id"] in json.dumps(tag["relations"]["children"])


async def test_python_client_tour(server: RunningServer, tmp_path: Path) -> None:
    key_file = tmp_path / "me.key"
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(os.urandom(300_000))
    out: dict[str, Any] = await load("client_tour.py").main(server.url, str(key_file), photo)
    assert out["upload"].status == "complete" and out["upload"].chunks_resumed == 1
    assert out["progress"][-1] == 1.0
    assert out["live_text"].endswith("typed on the phone")
    async with await login_as(server, key_file) as client:
        r = await client.get(f"/api/file/{out['upload'].file_id}/raw/photo.jpg")
        assert r.content == photo.read_bytes()


async def test_javascript_block_example(node: str, server: RunningServer, tmp_path: Path) -> None:
    # the example imports "yjs": run a copy beside tests/interop's node_modules
    script = tmp_path / "write_block.mjs"
    shutil.copy(EXAMPLES / "write_block.mjs", script)
    (tmp_path / "node_modules").symlink_to(INTEROP / "node_modules")
    with trio.fail_after(60):
        done = await trio.run_process(
            [node, str(script), server.url],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, "HEAPER_KEY_FILE": str(tmp_path / "js.key")},
        )
    assert done.returncode == 0, done.stderr.decode()
    out = json.loads(done.stdout.decode().splitlines()[-1])
    async with await login_as(server, tmp_path / "js.key") as client:
        block = (await client.post(f"/api/block/{out['block_id']}")).json()
    assert block["block"]["title"] == "Spring plan" and block["block"]["type"] == "document"
    assert block["text"] == (
        "Plan\nAsk Ideas about the garden, see  and the wiki.\nseeds\nsoil\nWater daily."
    )
    assert out["tag_id"] in json.dumps(block["relations"]["tags"])
    assert block["block"]["deleted_at"] is None and out["was_in_trash"] is True
