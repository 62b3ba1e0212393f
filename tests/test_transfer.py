"""``export`` and ``import`` (heaper_trio/client/transfer) against a real server, both
engines: a heap with varied content exported, imported into a new heap and exported again
gives the same Markdown (ids aside); an Obsidian-like vault imports into blocks that read
back over HTTP with their links, tags and files, and nothing outside the vault is read."""

from __future__ import annotations

import re
from pathlib import Path

from pycrdt import Doc, XmlElement, XmlFragment, XmlText

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient, LocalBlock
from heaper_trio.client import documents as d
from heaper_trio.client.transfer.export import TransferError, export_heap
from heaper_trio.client.transfer.importer import import_source
from tests.media_samples import rgba_png

MAIN, TAG, OTHER, TRASHED = (
    f"{n}-0000-4000-8000-{n * 3}" for n in ("aaaaaaaa", "bbbbbbbb", "cccccccc", "dddddddd")
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
            ".",
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
    return doc


async def _push(client: HeaperClient, heap_id: str, block_id: str, doc: Doc) -> None:
    assert (await client.blocks.push(LocalBlock(heap_id, block_id, doc))).ok


async def _build_heap(client: HeaperClient, tmp: Path) -> str:
    heap = await client.heaps.create("Garden")
    await _push(client, heap.id, TAG, d.new_block("tag", "Ideas", created_at=1764672000000))
    await _push(client, heap.id, OTHER, d.new_block("document", "Other page", created_at=5))
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
    server: RunningServer, admin: HeaperClient, tmp_path: Path
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

    # the imported blocks read back over HTTP as the app would open them
    new_main = imported.ids[MAIN]
    answer = await admin.call("POST", f"/api/block/{new_main}")
    relations = answer["relations"]
    assert relations["tags"] == [imported.ids[TAG]]
    assert relations["mentions"] == [imported.ids[TAG]]
    assert relations["links"] == [imported.ids[OTHER]]
    assert sorted(f["name"] for f in answer["files"].values()) == ["notes.txt", "photo.png"]
    assert "Plan\nAsk Ideas about the garden" in answer["text"]

    # a zip of the same heap holds the same files
    zipped = tmp_path / "garden.zip"
    await export_heap(admin, heap_a, zipped)
    heap_c = (await admin.heaps.create("Garden")).id
    from_zip = await import_source(admin, zipped, heap_c)
    assert sorted(from_zip.blocks) == sorted(
        one_note for one_note in one if one_note.endswith(".md")
    )


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
