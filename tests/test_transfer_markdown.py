"""The Markdown side of export and import, without a server: the tree to Markdown and back
gives the same Markdown, Obsidian's syntax reads as links, tags and attachments, names are
safe, and no path, link or zip entry of a source leads outside it."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heaper_trio.client.transfer import frontmatter
from heaper_trio.client.transfer.from_markdown import Links, Target, parse
from heaper_trio.client.transfer.names import NoteNames, inside, safe_file_name, slug
from heaper_trio.client.transfer.progress import Bar
from heaper_trio.client.transfer.to_markdown import blocks
from heaper_trio.client.transfer.tree import Node, Text
from heaper_trio.client.transfer.vault import VaultError, scan, unzip

TARGETS = {"b1": ("other-b1.md", "Other page")}


class _Links(Links):
    def __init__(self, obsidian: bool = False) -> None:
        self.obsidian = obsidian

    def link(self, href: str) -> Target | None:
        if href == "other-b1.md":
            return Target("block", "b1")
        if href.startswith("files/"):
            return Target("file", href)
        return super().link(href)

    def wiki(self, name: str) -> Target | None:
        return {"idea": Target("block", "b2"), "pic.png": Target("file", "a/pic.png")}.get(
            name.lower()
        )


def p(*children: Node | Text) -> Node:
    return Node("paragraph", {}, list(children))


def item(tag: str, *children: Node, **attrs: object) -> Node:
    return Node(tag, dict(attrs), list(children))


DOC = [
    Node("heading", {"level": 2}, [Text("Plan # *1*")]),
    p(
        Text(" lead and "),
        Text("bold", {"bold": {}}),
        Text(" mixed ", {"bold": {}, "italic": {}}),
        Text("it", {"italic": {}}),
        Text(" x "),
        Text("code`s", {"code": {}}),
        Text(" "),
        Text("wiki", {"link": {"href": "https://e.com/a (b)"}}),
        Text(" strike", {"strike": {}}),
        Text("u", {"underline": {}}),
        Text("hl", {"highlight": {}}),
        Text(" trail "),
    ),
    p(
        Text("Ask "),
        Node("reference", {"id": "b1", "label": "Ideas", "type": "mention"}),
        Text(" see "),
        Node("pagelink", {"blockKey": "b1"}),
        Text(" and "),
        Node("pagelink", {"blockKey": "elsewhere"}),
        Node("hardBreak"),
        Text("- not a list 1. & <b> [[no wiki]] #notag"),
    ),
    p(),
    item(
        "bulletList",
        item("listItem", p(Text("seeds")), item("bulletList", item("listItem", p(Text("deep"))))),
        item("listItem", p(Text("[ ] soil")), p(Text("second paragraph"))),
    ),
    item("orderedList", item("listItem", p(Text("three"))), start=3),
    item(
        "taskList",
        item("taskItem", p(Text("done")), checked=True),
        item("taskItem", p(Text("todo")), checked=False),
    ),
    item("blockquote", p(Text("quoted")), p(Text("more"))),
    Node("codeBlock", {"language": "py"}, [Text("print(1)\n```\nx")]),
    Node("horizontalRule"),
    p(Text("1986. A great year")),
]


def test_markdown_reads_back_into_the_same_markdown() -> None:
    md = blocks(DOC, TARGETS.get)
    parsed = parse(md, _Links())
    assert blocks(parsed.nodes, TARGETS.get) == md
    assert parsed.files == {} and parsed.tags == []  # no Obsidian syntax in an export
    assert md.startswith("## Plan \\# \\*1\\*\n\n&#32;lead and **bold *mixed*** *it* x ")
    assert "[wiki](<https://e.com/a%20(b)>)" in md and "<u>u</u><mark>hl</mark>" in md
    assert '[Ideas](other-b1.md "mention") see [Other page](other-b1.md)' in md
    assert "[elsewhere](heaper:elsewhere)\\\n\\- not a list" in md
    assert "<p></p>" in md and "- \\[ \\] soil\n\n  second paragraph" in md
    assert "3. three" in md and "- [x] done\n- [ ] todo" in md
    assert "````py\nprint(1)\n```\nx\n````" in md and "1986\\. A great year" in md
    # the tree itself: nodes, marks, mentions and page links come back (spaces at the ends
    # of a mark move outside it, which renders the same)
    assert parsed.nodes[2] == DOC[2]
    assert parsed.nodes[4:] == DOC[4:]


def test_obsidian_syntax_reads_as_links_tags_and_attachments() -> None:
    md = (
        "See [[Idea]], [[idea#Part|the idea]], [[Missing]] #inbox #area/sub #123 a#b\n\n"
        "![[pic.png]]\n\n![a picture](files/x.png) [report](files/report.pdf)\n\n"
        "`#code [[Idea]]`\n\n- [ ] open\n- [X] closed\n"
    )
    parsed = parse(md, _Links(obsidian=True))
    first = parsed.nodes[0]
    assert isinstance(first, Node)
    assert first.children[1] == Node("pagelink", {"blockKey": "b2"})
    assert first.children[3] == Node(
        "reference", {"id": "b2", "label": "the idea", "type": "mention"}
    )
    assert isinstance(first.children[4], Text) and "[[Missing]]" in first.children[4].text
    assert parsed.tags == ["inbox", "area/sub"]
    assert parsed.files == {
        "a/pic.png": "pic.png",
        "files/x.png": "x.png",
        "files/report.pdf": "report.pdf",
    }
    assert parsed.nodes[1] == p(Text(" report"))  # the embed is gone, the link's text stays
    assert parsed.nodes[2] == p(Text("#code [[Idea]]", {"code": {}}))
    assert parsed.nodes[3] == item(
        "taskList",
        item("taskItem", p(Text("open")), checked=False),
        item("taskItem", p(Text("closed")), checked=True),
    )


def test_a_table_reads_as_rows() -> None:
    parsed = parse("| a | **b** |\n|---|---|\n| 1 | 2 |\n", _Links(obsidian=True))
    assert parsed.nodes == [
        Node(
            "blockquote",
            {},
            [p(Text("a | "), Text("b", {"bold": {}})), p(Text("1 | 2"))],
        )
    ]


def test_names_are_safe_unique_and_stable() -> None:
    assert slug("Crème brûlée: 2 ways!") == "creme-brulee-2-ways"
    assert slug("日本語") == "untitled" and len(slug("a" * 300)) == 60
    names = NoteNames()
    assert names.name("Plan", "ABCDEF12-x") == "plan-abcdef12.md"
    assert names.name("Plan", "abcdef12-y") == "plan-abcdef12-.md"  # clash: a longer id
    assert names.name("../../etc/passwd", "../x") == "etc-passwd-x.md"
    assert safe_file_name("../../.ssh/id_rsa") == "id_rsa"
    assert safe_file_name("a\x00b<c>.png") == "a_b_c_.png" and safe_file_name("..") == "file"


def test_links_never_leave_the_source(tmp_path: Path) -> None:
    root = tmp_path / "vault"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(b"x")
    (tmp_path / "secret").write_text("s")
    os.symlink(tmp_path / "secret", root / "link.png")
    os.symlink(tmp_path, root / "up")
    assert inside(root, "sub/a.png") == root / "sub" / "a.png"
    assert inside(root, "../sub/a.png", root / "sub") == root / "sub" / "a.png"
    for bad in (
        "../secret",
        "sub/../../secret",
        "/etc/passwd",
        "link.png",
        "up/secret",
        "file:///etc/passwd",
        "C:/x",
        "sub",
        "a\x00b",
        "",
        "../../../../etc/passwd",
    ):
        assert inside(root, bad) is None, bad
    assert inside(root, "../../secret", root / "sub") is None
    vault = scan(root)
    assert vault.files == ["sub/a.png"] and vault.notes == []
    with pytest.raises(VaultError):
        scan(root / "up")


@pytest.mark.parametrize("name", ["../evil.md", "/abs.md", "a/../../evil.md", "C:evil.md"])
def test_a_zip_cannot_write_outside(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "x.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(name, "# evil")
    with pytest.raises(VaultError):
        unzip(archive, tmp_path / "into")
    assert not (tmp_path / "evil.md").exists()


def test_a_zip_with_a_link_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "x.zip"
    with zipfile.ZipFile(archive, "w") as z:
        info = zipfile.ZipInfo("link.md")
        info.external_attr = 0o120777 << 16
        z.writestr(info, "/etc/passwd")
    with pytest.raises(VaultError):
        unzip(archive, tmp_path / "into")


def test_front_matter() -> None:
    text = frontmatter.write({"id": "x", "title": "a: b", "tags": [], "created": None})
    assert text == "---\nid: x\ntitle: 'a: b'\n---\n"
    assert frontmatter.split(text + "body") == ({"id": "x", "title": "a: b"}, "body")
    assert frontmatter.split("---\n: [bad\n---\nbody") == (None, "---\n: [bad\n---\nbody")
    assert frontmatter.split("no front matter") == (None, "no front matter")
    laughs = "---\na: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\ntags: *b\n---\nbody"
    assert frontmatter.split(laughs) == (None, laughs)  # no aliases: no billion laughs
    huge = "---\ntitle: " + "x" * (70 << 10) + "\n---\n"
    assert frontmatter.split(huge)[0] is None
    assert frontmatter.iso(1764672000123) == "2025-12-02T10:40:00.123Z"
    assert frontmatter.ms("2025-12-02T10:40:00.123Z") == 1764672000123
    assert frontmatter.ms(frontmatter.split("---\nc: 2024-05-01\n---\n")[0]["c"]) == 1714521600000
    assert frontmatter.strings("a, b c") == ["a", "b", "c"] and frontmatter.strings(None) == []


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_on_a_terminal_only() -> None:
    tty, pipe = _Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = Bar("export", stream)
        bar.show(1, 4, "a.md", force=True)
        bar.done("done")
    assert tty.getvalue().startswith("\rexport [######------------------] 1/4 a.md")
    assert tty.getvalue().rstrip(" \n").endswith("\rexport: done") and pipe.getvalue() == ""
    quiet = _Tty()
    Bar("export", quiet, quiet=True).show(1, 1, force=True)
    assert quiet.getvalue() == ""


# the same examples every run (a suite must not fail by chance), and no health check that a
# loaded machine trips (generation speed)
FUZZ: dict[str, Any] = {
    "deadline": None,
    "derandomize": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much],
}
_MARKS = st.sampled_from(
    [
        {},
        {"bold": {}},
        {"italic": {}},
        {"bold": {}, "italic": {}},
        {"strike": {}},
        {"code": {}},
        {"link": {"href": "https://e.com/x"}},
        {"underline": {}},
    ]
)
_TEXT = st.text(
    alphabet=st.sampled_from([*"ab1 .-+=#*_`[]()<>!&|~\\:é", "\u00a0"]),
    min_size=1,
    max_size=12,
)
_MENTION = Node("reference", {"id": "b1", "label": "L*b", "type": "mention"})
_WORDS = st.builds(Text, _TEXT, _MARKS) | st.just(_MENTION)  # a heading has no line breaks
_RUN = _WORDS | st.just(Node("hardBreak"))
_BLOCK = st.builds(lambda runs: p(*runs), st.lists(_RUN, max_size=6)) | st.builds(
    lambda runs, level: Node("heading", {"level": level}, list(runs)),
    st.lists(_WORDS, max_size=4),
    st.integers(1, 6),
)


@settings(max_examples=60, **FUZZ)  # 4,000 passed when written
@given(st.lists(_BLOCK, min_size=1, max_size=4))
def test_any_text_and_marks_survive_a_round_trip(doc: list[Node]) -> None:
    """Whatever the text (Markdown's own characters included) and however marks overlap,
    the Markdown read back and written again is the same."""
    md = blocks(doc, TARGETS.get)
    again = blocks(parse(md, _Links()).nodes, TARGETS.get)
    assert again == md


_CODE = st.builds(
    lambda text, lang: Node(
        "codeBlock", {"language": lang} if lang else {}, [Text(text)] if text else []
    ),
    st.text(alphabet=list("a`~ \n#-*>"), max_size=10),
    st.sampled_from(["", "py"]),
)


def _containers(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    contents = st.lists(st.lists(children, min_size=1, max_size=3), min_size=1, max_size=3)

    def listed(tag: str, item_tag: str = "listItem", **attrs: object) -> st.SearchStrategy[Node]:
        return st.builds(
            lambda its: Node(tag, dict(attrs), [Node(item_tag, {}, c) for c in its]), contents
        )

    return (
        listed("bulletList")
        | listed("orderedList")
        | listed("orderedList", start=7)
        | listed("taskList", "taskItem")
        | st.builds(lambda c: Node("blockquote", {}, c), st.lists(children, min_size=1, max_size=3))
    )


@settings(max_examples=25, **FUZZ)  # 3,000 passed when written
@given(
    st.lists(
        st.recursive(_BLOCK | _CODE | st.just(Node("horizontalRule")), _containers, max_leaves=8),
        min_size=1,
        max_size=3,
    )
)
def test_any_nesting_of_blocks_survives_a_round_trip(doc: list[Node]) -> None:
    """Lists in lists, lists after lists, empty items, quotes, code with fences inside."""
    md = blocks(doc, TARGETS.get)
    assert blocks(parse(md, _Links()).nodes, TARGETS.get) == md


def test_dates_out_of_range_are_no_dates_rather_than_a_crash() -> None:
    """A note dated 0001-01-01T00:00:00+01:00 was stored as a time before year 1, and every
    later export of its heap then died on it (found in review)."""
    iso, ms = frontmatter.iso, frontmatter.ms
    assert ms("0001-01-01T00:00:00+01:00") is None
    assert iso(-62135600400000) is None
    assert iso(2**62) is None and iso(-(2**63)) is None and iso(float("inf")) is None
    assert iso(ms("2020-01-01T00:00:00Z")) == "2020-01-01T00:00:00.000Z"
