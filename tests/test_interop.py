"""Interop with the reference implementation: npm ``yjs`` (tests/interop/yjs_client.mjs) and
pycrdt push and pull the same block documents over HTTP, on both engines.

Needs ``node`` and ``npm ci`` in tests/interop (scripts/test.sh does it); skipped otherwise,
unless ``HEAPER_TEST_REQUIRE_NODE=1`` (CI), which makes it a failure.

Yjs and yrs print XML alike except for attribute order: Yjs sorts attributes by name, yrs
keeps its own order. So XML is compared as strings with attributes sorted, and as trees
(attributes as dicts, text as delta runs with their marks).

Text positions differ between the libraries: Yjs counts UTF-16 code units, pycrdt 0.14 (yrs with
its default offset kind) UTF-8 bytes; the documents are the same, only local indexes differ.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pycrdt
import pytest
import trio
from pycrdt import Map, XmlElement, XmlFragment, XmlText

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient

INTEROP = Path(__file__).resolve().parent / "interop"
Yjs = Callable[..., Awaitable[dict[str, Any]]]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def node() -> str:
    path, modules = shutil.which("node"), INTEROP / "node_modules" / "yjs"
    if path and modules.is_dir():
        return path
    reason = "`node` is not installed" if not path else "run `npm ci` in tests/interop"
    if os.environ.get("HEAPER_TEST_REQUIRE_NODE") == "1":
        pytest.fail(f"HEAPER_TEST_REQUIRE_NODE=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture
async def yjs(node: str, server: RunningServer, admin: HeaperClient) -> Yjs:
    """``await yjs(command, **args)``: run the Node client, answer its JSON."""

    async def run(command: str, **args: Any) -> dict[str, Any]:
        payload = json.dumps({"url": server.url, "token": admin.access_token, **args})
        with trio.fail_after(60):
            done = await trio.run_process(
                [node, str(INTEROP / "yjs_client.mjs"), command],
                stdin=payload.encode(),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        assert done.returncode == 0, done.stderr.decode()
        return dict(json.loads(done.stdout))

    return run


# -- pycrdt side ------------------------------------------------------------------------------


def sv_entries(sv: bytes) -> dict[int, int]:
    """client -> clock of a Yjs v1 state vector (varuints: count, then client, clock pairs)."""
    nums = [
        sum((b & 0x7F) << (7 * i) for i, b in enumerate(v))
        for v in re.findall(rb"[\x80-\xff]*[\x00-\x7f]", sv)
    ]
    return dict(zip(nums[1::2], nums[2::2]))


def tree(node: Any) -> dict[str, Any]:
    """The same structure as ``tree`` in yjs_client.mjs."""
    if isinstance(node, XmlText):
        return {"text": [[run, dict(attrs or {})] for run, attrs in node.diff()]}
    children = [tree(c) for c in node.children]
    if isinstance(node, XmlElement):
        return {"tag": node.tag, "attrs": dict(node.attributes), "children": children}
    return {"children": children}


def sorted_attrs(xml: str) -> str:
    """Attributes of each tag in name order, as Yjs prints them."""
    return re.sub(
        r'<([\w-]+)((?: [\w-]+="[^"]*")+)>',
        lambda m: "<" + m[1] + "".join(sorted(re.findall(r' [\w-]+="[^"]*"', m[2]))) + ">",
        xml,
    )


def views(doc: pycrdt.Doc) -> dict[str, Any]:
    """What ``views`` in yjs_client.mjs prints, read by pycrdt (XML strings with sorted
    attributes; pycrdt gives every number as a float, Python's == takes 3.0 for 3)."""
    title, content = (doc.get(n, type=XmlFragment) for n in ("title_v0", "content_v0"))
    return {
        "title": sorted_attrs(str(title)),
        "content": sorted_attrs(str(content)),
        "title_tree": tree(title),
        "content_tree": tree(content),
        **{
            k: doc.get(n, type=Map).to_py()
            for k, n in (
                ("relations", "relations_v1"),
                ("files", "files_v0"),
                ("apps", "apps_v0"),
                ("meta", "meta_v0"),
            )
        },
    }


def comparable(js: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in js.items()
        if k not in ("block_id", "status", "same_update_bytes", "state_vector")
    }


def build_block(title: str, tag_id: str, mention_id: str, link_id: str) -> pycrdt.Doc:
    """A block as the Heaper app lays it out, written by pycrdt."""
    doc = pycrdt.Doc()
    with doc.transaction():
        doc.get("title_v0", type=XmlFragment).children.append(
            XmlElement("paragraph", contents=[XmlText(title)])
        )
        content = doc.get("content_v0", type=XmlFragment)
        first = content.children.append(XmlElement("paragraph"))
        first.children.append(XmlText("Erste Zeile mentions "))
        first.children.append(
            XmlElement("reference", {"id": mention_id, "label": "Réf", "type": "mention"})
        )
        run = first.children.append(XmlText(" and a "))
        run.insert(len(" and a "), "bold", {"strong": {}})
        run.insert(len(" and a bold"), " word.")
        second = content.children.append(XmlElement("paragraph"))
        second.children.append(XmlText("Zweite Zeile links "))
        second.children.append(XmlElement("pagelink", {"blockKey": link_id}))
        second.children.append(XmlText(" — fertig ✓!"))
        doc.get("relations_v1", type=Map)[tag_id] = Map({"type": "tag"})
        doc.get("files_v0", type=Map)["ab" * 32 + ":42"] = Map(
            {
                "hash": "ab" * 32,
                "name": "bild.png",
                "mime_type": "image/png",
                "file_size": 42,
                "width": 640,
                "height": 480,
            }
        )
        doc.get("apps_v0", type=Map)["app-1"] = Map(
            {"type": "board", "filter": pycrdt.Array(["tag", tag_id])}
        )
        doc.get("meta_v0", type=Map)["type"] = "document"
    return doc


async def new_heap(client: HeaperClient) -> str:
    r = await client.post("/api/heap/add", json={"name": "Interop"})
    assert r.status_code == 200, r.text
    return str(r.json()["heap"]["id"])


async def push(
    client: HeaperClient, heap_id: str, block_id: str, doc: pycrdt.Doc, since: bytes = b"\x00"
) -> dict[str, Any]:
    r = await client.post(
        "/api/sync/push",
        json={
            "blocks": [
                {
                    "block_id": block_id,
                    "workspace_id": heap_id,
                    "update": b64(doc.get_update(since)),
                    "state_vector": b64(doc.get_state()),
                }
            ]
        },
    )
    [answer] = r.json()["blocks"]
    assert answer["status"] in ("created", "ok"), answer
    doc.apply_update(base64.b64decode(answer["update"]))
    return dict(answer)


async def pull(client: HeaperClient, block_id: str) -> pycrdt.Doc:
    r = await client.post("/api/sync/pull", json={"blocks": [{"block_id": block_id}]})
    [answer] = r.json()["blocks"]
    assert answer["status"] == "ok", answer
    doc = pycrdt.Doc()
    doc.apply_update(base64.b64decode(answer["update"]))
    return doc


# -- tests ------------------------------------------------------------------------------------


async def test_yjs_block_round_trips_and_projects(admin: HeaperClient, yjs: Yjs) -> None:
    heap = await new_heap(admin)
    tag_id, block_id, link_id = (str(uuid.uuid4()) for _ in range(3))
    tag = pycrdt.Doc()
    with tag.transaction():
        tag.get("meta_v0", type=Map)["type"] = "tag"
    await push(admin, heap, tag_id, tag)

    out = await yjs(
        "build",
        heap_id=heap,
        block_id=block_id,
        title="Grüße 😀 aus Yjs",
        tag_id=tag_id,
        mention_id=tag_id,
        link_id=link_id,
    )  # equal: checked in JS
    assert out["status"] == "created" and out["block_id"] == block_id
    assert out["same_update_bytes"]  # Yjs, then yrs on the server, then Yjs: the same bytes
    assert out["title"] == "<paragraph>Grüße 😀 aus Yjs</paragraph>"
    assert out["content"] == (
        f'<paragraph>First paragraph mentions <reference id="{tag_id}" label="Ref Label" '
        'type="mention"></reference> and a <strong>bold</strong> word.</paragraph>'
        f'<paragraph>Second paragraph links to <pagelink blockKey="{link_id}"></pagelink>'
        " — fertig ✓</paragraph>"
    )
    [file_key] = out["files"]
    file_hash, size = file_key.split(":")
    assert out["files"][file_key] == {
        "hash": file_hash,
        "name": "hello.txt",
        "duration": 1.5,
        "mime_type": "text/plain",
        "file_size": int(size),
        "width": 0,
    }
    assert out["meta"]["type"] == "document"

    # pycrdt reads what Yjs wrote, through the server, as Yjs does.
    assert views(await pull(admin, block_id)) == comparable(out)

    got = (await admin.post(f"/api/block/{block_id}")).json()
    assert got["block"]["title"] == "Grüße 😀 aus Yjs"
    assert got["block"]["type"] == "document"
    assert (
        got["text"]
        == got["block"]["text"]
        == (
            "First paragraph mentions Ref Label and a bold word.\n"
            "Second paragraph links to  — fertig ✓"
        )
    )
    rel = got["relations"]
    assert (rel["tags"], rel["mentions"], rel["links"]) == ([tag_id], [tag_id], [link_id])
    assert rel["raw"] == {tag_id: {"type": "tag", "created_at": 1700000000000}}
    assert got["files"] == {file_key: out["files"][file_key]}
    assert got["apps"] == {"app-1": {"type": "table", "sort": "title", "filter": ["tag", tag_id]}}
    tag_side = (await admin.post(f"/api/block/{tag_id}")).json()["relations"]
    assert tag_side["children"] == tag_side["backlinks"] == [block_id]

    # Another Yjs device pulls it, edits, and pushes only its diff.
    edited = await yjs(
        "edit", heap_id=heap, block_id=block_id, append="!", meta_key="color", meta_value="red"
    )
    assert views(await pull(admin, block_id)) == comparable(edited)
    got = (await admin.post(f"/api/block/{block_id}")).json()
    assert got["text"].startswith("irst paragraph mentions Ref Label and a bold word.!\n")


async def test_pycrdt_block_reads_alike_in_yjs(admin: HeaperClient, yjs: Yjs) -> None:
    heap = await new_heap(admin)
    block_id, tag_id, link_id = (str(uuid.uuid4()) for _ in range(3))
    doc = build_block("Grüße 😀 aus pycrdt", tag_id, tag_id, link_id)
    await push(admin, heap, block_id, doc)

    out = await yjs("read", block_id=block_id)
    assert comparable(out) == views(doc)
    assert out["title"] == "<paragraph>Grüße 😀 aus pycrdt</paragraph>"
    assert out["content_tree"]["children"][0]["children"][2]["text"] == [
        [" and a ", {}],
        ["bold", {"strong": {}}],
        [" word.", {}],
    ]
    assert out["files"]["ab" * 32 + ":42"]["file_size"] == 42  # a JS number, not a BigInt
    assert {int(k): v for k, v in out["state_vector"].items()} == sv_entries(doc.get_state())
    got = (await admin.post(f"/api/block/{block_id}")).json()
    assert got["block"]["title"] == "Grüße 😀 aus pycrdt"
    assert (
        got["text"] == "Erste Zeile mentions Réf and a bold word.\nZweite Zeile links  — fertig ✓!"
    )


async def test_concurrent_edits_from_stale_copies_converge(admin: HeaperClient, yjs: Yjs) -> None:
    heap = await new_heap(admin)
    block_id, tag_id, link_id = (str(uuid.uuid4()) for _ in range(3))
    py = build_block("Shared", tag_id, tag_id, link_id)
    await push(admin, heap, block_id, py)
    stale = b64(py.get_update())  # the copy the Yjs client edits
    synced = py.get_state()

    # pycrdt edits its copy offline ...
    with py.transaction():
        first, second = py.get("content_v0", type=XmlFragment).children
        tail = list(first.children)[-1]
        tail.insert(len(" and a bold word."), "[py]")
        last = list(second.children)[-1]
        del last[len(" — fertig ✓".encode())]  # the "!": pycrdt indexes text in UTF-8 bytes
        py.get("meta_v0", type=Map)["edited_by_py"] = True
    # ... while Yjs edits the same old state and pushes first ...
    js = await yjs(
        "edit",
        heap_id=heap,
        block_id=block_id,
        from_state=stale,
        append="[js]",
        meta_key="edited_by_js",
        meta_value="yes",
    )
    assert js["status"] == "ok" and "[js]" in js["content"] and "[py]" not in js["content"]
    # ... then pycrdt pushes its diff from the stale copy and takes what it lacks.
    assert (await push(admin, heap, block_id, py, since=synced))["status"] == "ok"

    final = await yjs("read", block_id=block_id)
    assert comparable(final) == views(py) == views(await pull(admin, block_id))
    text = (await admin.post(f"/api/block/{block_id}")).json()["text"]
    first_line, second_line = text.split("\n")
    assert first_line.startswith("rste Zeile mentions Réf")  # Yjs deleted the "E"
    assert first_line.endswith((" word.[py][js]", " word.[js][py]"))  # order: by client id
    assert second_line.endswith(" — fertig ✓")  # pycrdt deleted the "!"
    assert final["meta"] == {"type": "document", "edited_by_py": True, "edited_by_js": "yes"}
