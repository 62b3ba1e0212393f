"""``export`` and ``import`` (heaper_trio/client/transfer) against a real server, both
engines: a heap with varied content exported, imported into a new heap and exported again
gives the same Markdown (ids aside); an Obsidian-like vault imports into blocks that read
back over HTTP with their links, tags and files, and nothing outside the vault is read."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import trio
from pycrdt import Doc, XmlElement, XmlFragment, XmlText

from heaper_trio.app import RunningServer
from heaper_trio.cli import build_parser
from heaper_trio.client import HeaperClient, LocalBlock
from heaper_trio.client import documents as d
from heaper_trio.client.transfer.commands import run_async
from heaper_trio.client.transfer.export import TransferError, export_heap
from heaper_trio.client.transfer.importer import import_source
from tests.conftest import ROOT, StartServer
from tests.media_samples import rgba_png

ELSEWHERE = "eeeeeeee-0000-4000-8000-000000000000"  # a block of another heap
MAIN, TAG, OTHER, TRASHED, TWIN = (
    f"{n}-0000-4000-8000-{n * 3}"
    for n in ("aaaaaaaa", "bbbbbbbb", "cccccccc", "dddddddd", "ffffffff")
)


def _list(content: XmlFragment, tag: str, lines: list[str], **attrs: object) -> None:
    node = content.children.append(XmlElement(tag, attrs or None))
    for line in lines:
        item = node.children.append(XmlElement("listItem"))
        p = item.children.append(XmlElement("paragraph"))
        p.children.append(XmlText(line))


def _main_doc() -> Doc:
    doc = d.new_block("document", "Spring plan", created_at=1764672000123)
    with doc.transaction():
        d.append_node(doc, "heading", "Plan", attrs={"level": 2})
        d.append_paragraph(
            doc,
            "Ask ",
            d.mention(TAG, "Ideas"),
            " about the ",
            ("garden", {"bold": {}}),
            ", ",
            ("soon", {"italic": {}}),
            ", see ",
            d.pagelink(OTHER),
            " and ",
            ("the wiki", {"link": {"href": "https://example.com/wiki"}}),
            " or ",
            ("x = 1", {"code": {}}),
            ". Elsewhere: ",
            d.mention(ELSEWHERE, "Far away"),
            d.hard_break(),
        )
        content = doc.get(d.CONTENT, type=XmlFragment)
        _list(content, "bulletList", ["seeds", "soil * 2 [maybe]"])
        _list(content, "orderedList", ["dig", "plant"])
        code = content.children.append(XmlElement("codeBlock", {"language": "python"}))
        code.children.append(XmlText("print('hi')\n# not a heading"))
        quote = content.children.append(XmlElement("blockquote"))
        quote.children.append(XmlElement("paragraph")).children.append(XmlText("Quoted."))
        content.children.append(XmlElement("paragraph"))  # an empty line
        d.add_tag(doc, TAG, created_at=1)
        d.add_tag(doc, ELSEWHERE)  # a tag block outside the heap
    return doc


async def _push(client: HeaperClient, heap_id: str, block_id: str, doc: Doc) -> None:
    assert (await client.blocks.push(LocalBlock(heap_id, block_id, doc))).ok


async def _build_heap(client: HeaperClient, tmp: Path) -> str:
    heap = await client.heaps.create("Garden")
    await _push(client, heap.id, TAG, d.new_block("tag", "Ideas", created_at=1764672000000))
    await _push(client, heap.id, OTHER, d.new_block("document", "Other page", created_at=5))
    twin = d.new_block("document", "Crème: brûlée #1 'yes'", created_at=6)
    await _push(client, heap.id, TWIN, twin)  # a title YAML and slugs must take care of
    await _push(client, heap.id, MAIN, _main_doc())
    gone = d.new_block("document", "Gone", created_at=5)
    d.move_to_trash(gone)
    await _push(client, heap.id, TRASHED, gone)
    await client.uploads.upload(heap.id, MAIN, rgba_png(tmp / "photo.png"))
    await client.uploads.upload(heap.id, MAIN, b"plain notes\n", name="notes.txt")
    return heap.id


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _normalized(files: dict[str, bytes], ids: dict[str, str]) -> dict[str, bytes]:
    """Swap new ids (and their 8-character short forms in file names) for the exported ones,
    drop the `updated` line: what a round trip may change."""
    swap = {new: old for old, new in ids.items()} | {new[:8]: old[:8] for old, new in ids.items()}
    pattern = re.compile("|".join(re.escape(k) for k in sorted(swap, key=len, reverse=True)))
    out = {}
    for name, data in files.items():
        text = data.decode("utf-8", "surrogateescape") if name.endswith(".md") else None
        if text is not None:
            text = re.sub(
                r"^updated: .*\n", "", pattern.sub(lambda m: swap[m.group(0)], text), flags=re.M
            )
            data = text.encode("utf-8", "surrogateescape")
        out[pattern.sub(lambda m: swap[m.group(0)], name)] = data
    return out


async def test_round_trip_gives_the_same_markdown(
    server: RunningServer, admin: HeaperClient, tmp_path: Path, engine: str
) -> None:
    heap_a = await _build_heap(admin, tmp_path)
    first = tmp_path / "first"
    report = await export_heap(admin, heap_a, first)
    assert TRASHED not in report.notes and report.files == 2
    heap_b = (await admin.heaps.create("Garden")).id
    imported = await import_source(admin, first, heap_b)
    second = tmp_path / "second"
    await export_heap(admin, heap_b, second)
    one = _normalized(_tree(first), {report.notes[MAIN]: report.notes[MAIN]})
    two = _normalized(_tree(second), imported.ids)
    assert sorted(one) == sorted(two)
    for name in one:
        assert one[name] == two[name], name

    main = one[report.notes[MAIN]].decode()
    assert main.startswith(f"---\nid: {MAIN}\ntype: document\ntitle: Spring plan\ntags:\n- Ideas\n")
    assert "created: '2025-12-02T10:40:00.123Z'" in main
    assert f'[Ideas]({report.notes[TAG]} "mention")' in main
    assert f"[Other page]({report.notes[OTHER]})" in main
    assert "**garden**" in main and "*soon*" in main and "`x = 1`" in main
    assert "- soil \\* 2 \\[maybe\\]" in main and "1. dig\n2. plant" in main
    assert "```python\nprint('hi')\n# not a heading\n```" in main
    assert "![photo.png](files/" in main and "[notes.txt](files/" in main
    assert f'[Far away](heaper:{ELSEWHERE} "mention")<br>' in main
    assert f"tag_notes:\n- ideas-bbbbbbbb.md\n- heaper:{ELSEWHERE}\n" in main
    assert "creme-brulee-1-yes-ffffffff.md" in one

    # the imported blocks read back over HTTP as the app would open them
    new_main = imported.ids[MAIN]
    answer = await admin.call("POST", f"/api/block/{new_main}")
    relations = answer["relations"]
    assert sorted(relations["tags"]) == sorted([imported.ids[TAG], ELSEWHERE])
    assert sorted(relations["mentions"]) == sorted([imported.ids[TAG], ELSEWHERE])
    assert relations["links"] == [imported.ids[OTHER]]
    assert sorted(f["name"] for f in answer["files"].values()) == ["notes.txt", "photo.png"]
    assert "Plan\nAsk Ideas about the garden" in answer["text"]

    if engine != "sqlite":
        return  # the zip is the client's business: one engine is enough
    # a zip of the same heap holds the same files
    zipped = tmp_path / "garden.zip"
    await export_heap(admin, heap_a, zipped)
    heap_c = (await admin.heaps.create("Garden")).id
    from_zip = await import_source(admin, zipped, heap_c)
    assert sorted(from_zip.blocks) == sorted(
        one_note for one_note in one if one_note.endswith(".md")
    )


@pytest.mark.engines("sqlite")  # client-side refusals; the server's own are engine tests
async def test_export_refuses_what_it_must_not_touch(
    server: RunningServer, admin: HeaperClient, eve: HeaperClient, tmp_path: Path
) -> None:
    heap = await admin.heaps.create("Mine")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("keep")
    try:
        await export_heap(admin, heap.id, taken)
        raise AssertionError("exported into a non-empty folder")
    except TransferError as e:
        assert "already exists" in str(e)
    assert (taken / "x").read_text() == "keep"
    # files a document only claims: a hash never uploaded, a "hash" that is a path
    claims = d.new_block("document", "Claims")
    d.add_file(claims, "0" * 64, 3, "never.txt", "text/plain")
    d.add_file(claims, "../../../escape", 3, "evil.txt", "text/plain")
    await _push(admin, heap.id, "cccccccc-0000-4000-8000-00000000000c", claims)
    claimed = await export_heap(admin, heap.id, tmp_path / "claimed")
    assert claimed.files == 0 and claimed.skipped == ["claims-cccccccc.md: never.txt"]
    assert not (tmp_path / "claimed" / "files").exists() and not (tmp_path / "escape").exists()
    # what a killed export left (its process is gone: no pid is above 2**22) goes
    killed = tmp_path / ".fresh.partial-4194305"
    killed.mkdir()
    await export_heap(admin, heap.id, tmp_path / "fresh")
    assert not killed.exists() and (tmp_path / "fresh").is_dir()
    # another user's heap: refused like an unknown one, nothing written
    from heaper_trio.client import HeaperError

    try:
        await export_heap(eve, heap.id, tmp_path / "stolen")
        raise AssertionError("exported another user's heap")
    except HeaperError as e:
        assert e.status == 403
    assert not (tmp_path / "stolen").exists()
    assert not list(tmp_path.glob(".stolen*"))
    try:
        await import_source(eve, tmp_path / "taken", heap.id)
        raise AssertionError("imported into another user's heap")
    except TransferError as e:
        assert "no heap" in str(e)


def _vault(tmp: Path) -> Path:
    """A small Obsidian-style vault, with links that try to leave it."""
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (outside / "secret.md").write_text("# Secret note")
    vault = tmp / "vault"
    (vault / ".obsidian").mkdir(parents=True)
    (vault / ".obsidian" / "app.json").write_text("{}")
    (vault / "Notes").mkdir()
    (vault / "assets").mkdir()
    rgba_png(vault / "assets" / "pic.png")
    (vault / "Home.md").write_text(
        "---\ntags: [project]\ncreated: 2024-05-01\n---\n"
        "# Welcome\n\nSee [[Idea]] and [[Notes/Idea|the idea]] #inbox #area/sub [[big idea]].\n\n"
        "![[pic.png]]\n\n- [ ] task\n- [x] done\n"
    )
    (vault / "Notes" / "Idea.md").write_text(
        "---\naliases: [Big Idea]\n---\n"
        "Back [home](../Home.md), [escape](../../outside/secret.txt), "
        "![[../outside/secret.txt]] [[/etc/passwd]] ![x](/etc/passwd) ![y](../assets/pic.png)\n"
    )
    os.symlink(outside / "secret.md", vault / "Linked.md")
    os.symlink(outside / "secret.txt", vault / "assets" / "linked.png")
    os.symlink(outside, vault / "LinkedDir")
    return vault


async def test_obsidian_vault_imports_as_blocks_without_leaving_it(
    server: RunningServer, admin: HeaperClient, tmp_path: Path
) -> None:
    heap = await admin.heaps.create("Vault")
    report = await import_source(admin, _vault(tmp_path), heap.id)
    assert sorted(report.blocks) == ["Home.md", "Notes/Idea.md"]
    assert report.tags_created == ["area", "inbox", "project", "area/sub"]
    assert report.files == 2  # pic.png, embedded by both notes (no link from outside counts)
    home, idea = report.blocks["Home.md"], report.blocks["Notes/Idea.md"]

    answer = await admin.call("POST", f"/api/block/{home}")
    assert answer["block"]["title"] == "Home" and answer["block"]["type"] == "document"
    tags = {
        (await admin.call("POST", f"/api/block/{t}"))["block"]["title"]
        for t in answer["relations"]["tags"]
    }
    assert tags == {"project", "inbox", "area/sub"}
    assert answer["relations"]["links"] == [idea] and answer["relations"]["mentions"] == [idea]
    assert [f["name"] for f in answer["files"].values()] == ["pic.png"]
    assert answer["text"].startswith("Welcome\nSee  and the idea #inbox #area/sub .\ntask\ndone")
    doc = (await admin.blocks.fetch(heap.id, home)).doc
    content = d.read_block(doc)
    assert content.links == (idea,)
    assert "taskList" in str(doc.get(d.CONTENT, type=XmlFragment))

    answer = await admin.call("POST", f"/api/block/{idea}")
    assert answer["relations"]["links"] == [home]
    assert [f["name"] for f in answer["files"].values()] == ["pic.png"]
    # links that leave the vault stay text: nothing outside it was read or uploaded
    text = answer["text"]
    assert "escape" in text and "[[../outside/secret.txt]]" in text and "[[/etc/passwd]]" in text
    blocks = (await admin.call("POST", "/api/heap", json={"heap_id": heap.id}))["blocks"]
    assert "Secret note" not in {b["title"] for b in blocks}


async def _cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEAPER_")}
    return await trio.run_process(
        [sys.executable, "-m", "heaper_trio", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        cwd=ROOT,
        env=env,
    )


@pytest.mark.engines("sqlite")  # the command line's wiring; the engines are covered above
async def test_cli_is_quiet_off_a_terminal_and_fails_in_one_line(
    server: RunningServer,
    admin: HeaperClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    heap = await admin.heaps.create("Cli")
    d_block = d.new_block("document", "Hello")
    d.append_paragraph(d_block, "World")
    await _push(admin, heap.id, "ffffffff-0000-4000-8000-000000000001", d_block)
    key = tmp_path / "me.key"
    admin.key.save(key)
    dest = tmp_path / "out.zip"
    flags = ["--heap", heap.id, "--server", server.url, "--key", str(key)]
    done = await _cli("export", str(dest), *flags, "--json")
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""  # no progress bar: stderr is not a terminal
    report = json.loads(done.stdout)
    assert zipfile.ZipFile(dest).namelist() == sorted(report["notes"].values())
    # no server there: one line, status 2 (in this process: a second interpreter costs seconds)
    args = build_parser().parse_args(
        [
            "import",
            str(dest),
            "--heap",
            heap.id,
            "--server",
            "http://127.0.0.1:9",
            "--key",
            str(key),
        ]
    )
    assert await run_async(args) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("heaper_trio: import: cannot reach"), lines


async def test_an_edit_during_the_export_is_in_it_whole(
    server: RunningServer,
    admin: HeaperClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The app trashes one block and renames another while the export reads the heap (right
    after its first read): the export shows both edits, not the heap half before, half after."""
    from heaper_trio.client.transfer import export as export_module

    heap = await admin.heaps.create("Busy")
    blocks = {}
    for name in ("Stays", "Goes"):
        block = LocalBlock(
            heap.id, f"{name.lower()}-0000-4000-8000-000000000000", d.new_block(title=name)
        )
        assert (await admin.blocks.push(block)).ok
        blocks[name] = block
    real_pull = export_module.pull_full
    calls = 0

    async def pull_then_edit(client: HeaperClient, ids: list[str]) -> dict[str, object]:
        nonlocal calls
        calls += 1
        read = await real_pull(client, ids)
        if calls == 1:  # what was read is now out of date
            stays, goes = blocks["Stays"], blocks["Goes"]
            d.move_to_trash(goes.doc)
            title = stays.doc.get(d.TITLE, type=XmlFragment)
            with stays.doc.transaction():
                title.children[0].children[0].insert(0, "Still ")
            assert (await admin.blocks.push(goes)).ok and (await admin.blocks.push(stays)).ok
        return read

    monkeypatch.setattr(export_module, "pull_full", pull_then_edit)
    report = await export_heap(admin, heap.id, tmp_path / "out")
    assert calls == 2  # the second pass re-read the changed blocks, the third saw no change
    assert blocks["Goes"].block_id not in report.notes
    note = (tmp_path / "out" / report.notes[blocks["Stays"].block_id]).read_text()
    assert "title: Still Stays" in note


@pytest.mark.engines("sqlite")  # the server's refusal is an upload test; here: the import goes on
async def test_a_file_the_server_refuses_is_reported_and_the_rest_goes_in(
    start_server: StartServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = await start_server(max_upload_bytes=1000)
    async with HeaperClient(small.url) as client:
        await client.login()
        heap = await client.heaps.create("Small")
        vault = tmp_path / "v"
        vault.mkdir()
        (vault / "big.bin").write_bytes(b"x" * 2000)
        (vault / "small.txt").write_text("fits")
        (vault / "Note.md").write_text("![[big.bin]] ![[small.txt]]\n")
        report = await import_source(client, vault, heap.id)
    assert report.files == 1 and report.skipped == ["big.bin: payload_too_large"]
    assert "big.bin not uploaded" in capsys.readouterr().err
