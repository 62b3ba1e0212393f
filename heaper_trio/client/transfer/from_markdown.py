"""Markdown (CommonMark, GFM task lists and strikethrough, Obsidian's wiki links, embeds and
``#tags``) as the ProseMirror tree of a block (:mod:`.tree`).

Parsing is markdown-it-py's; this module turns its tokens into Tiptap's nodes and marks. What
a link points at is the caller's business (:class:`Links`): a relative link to another note
becomes a page link (or a mention, with the link title ``"mention"``), a link or embed of a
file beside the notes becomes an attachment of the block and leaves the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.token import Token

from heaper_trio.client.transfer.to_markdown import MENTION_TITLE
from heaper_trio.client.transfer.tree import Child, Marks, Node, Text

FILES_MARKER = "<!-- files -->"
EMPTY_PARAGRAPH = "<p></p>"
_MD = MarkdownIt("commonmark", {"html": True}).enable(["strikethrough", "table"])
_WIKI = re.compile(r"(!?)\[\[([^\[\]|#^]+)(?:[#^][^\[\]|]*)?(?:\|([^\[\]]*))?\]\]")
_TAG = re.compile(r"(?<![\w/&#])#([A-Za-z0-9_/\-]*[A-Za-z_/\-][A-Za-z0-9_/\-]*)")
_HTML_MARKS = {
    "<u>": "underline",
    "<mark>": "highlight",
    "<b>": "bold",
    "<strong>": "bold",
    "<i>": "italic",
    "<em>": "italic",
    "<s>": "strike",
    "<del>": "strike",
}
_TOKEN_MARKS = {"strong": "bold", "em": "italic", "s": "strike"}


@dataclass(frozen=True)
class Target:
    """Where a link points: ``block`` (an id) or ``file`` (a path the caller knows)."""

    kind: str
    value: str


class Links:
    """How links resolve; the importer's subclass knows the notes and files of the source.
    This base resolves nothing but ``heaper:<id>`` links, and reads no Obsidian syntax."""

    obsidian = False  # read [[wiki links]], ![[embeds]] and #tags in text

    def link(self, href: str) -> Target | None:
        if href.startswith("heaper:") and len(href) > len("heaper:"):
            return Target("block", href[len("heaper:") :])
        return None

    def wiki(self, name: str) -> Target | None:
        return None


@dataclass
class Parsed:
    """A note's body: its nodes, the files it links or embeds (path -> the name to give it:
    the link's text, else the file's own name; in order, once each) and the tags it names
    inline."""

    nodes: list[Child]
    files: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)


def parse(markdown: str, links: Links) -> Parsed:
    out = Parsed([])
    tokens = _MD.parse(markdown)
    out.nodes = _Blocks(tokens, links, out).run()
    return out


class _Blocks:
    def __init__(self, tokens: list[Token], links: Links, out: Parsed) -> None:
        self.tokens, self.links, self.out = tokens, links, out
        self.i = 0
        self.in_files = False  # after <!-- files -->: only attachments, no content

    def run(self, until: str | None = None) -> list[Child]:
        nodes: list[Child] = []
        while self.i < len(self.tokens):
            tok = self.tokens[self.i]
            self.i += 1
            if until is not None and tok.type == until:
                break
            node = self._one(tok)
            if node is not None and not self.in_files:
                nodes.append(node)
        return nodes

    def _inline(self) -> list[Child]:
        tok = self.tokens[self.i]
        self.i += 1
        return _Inline(self.links, self.out).run(tok.children or [])

    def _one(self, tok: Token) -> Node | None:
        kind = tok.type
        if kind == "paragraph_open":
            children = self._inline()
            self.i += 1  # paragraph_close
            if not children:  # it held only attachments (embeds, file links)
                return None
            return Node("paragraph", {}, children)
        if kind == "heading_open":
            level = int(tok.tag[1:])
            children = self._inline()
            self.i += 1
            return Node("heading", {"level": level}, children)
        if kind in ("fence", "code_block"):
            attrs = {"language": tok.info.strip().split(" ")[0]} if tok.info.strip() else {}
            code = tok.content[:-1] if tok.content.endswith("\n") else tok.content
            return Node("codeBlock", attrs, [Text(code)] if code else [])
        if kind == "hr":
            return Node("horizontalRule")
        if kind == "blockquote_open":
            return Node("blockquote", {}, self.run("blockquote_close"))
        if kind in ("bullet_list_open", "ordered_list_open"):
            return self._list(tok)
        if kind == "table_open":
            return self._table()
        if kind == "html_block":
            text = tok.content.strip()
            if text == FILES_MARKER:
                self.in_files = True
                return None
            if text == EMPTY_PARAGRAPH:
                return Node("paragraph")
            if re.fullmatch(r"(?:<br\s*/?>)+", text, re.I):  # a paragraph of line breaks
                return Node("paragraph", {}, [Node("hardBreak") for _ in re.findall("<", text)])
            return Node("paragraph", {}, [Text(text)]) if text else None
        return None  # closers of what we do not map, tables (not enabled), ...

    def _table(self) -> Node:
        """A GFM table. The block schema has no table node, so it becomes a blockquote of
        one paragraph per row, cells separated by `` | ``: readable, searchable, nothing lost
        but the grid."""
        rows: list[Child] = []
        cells: list[list[Child]] = []
        while self.i < len(self.tokens) and self.tokens[self.i].type != "table_close":
            tok = self.tokens[self.i]
            self.i += 1
            if tok.type == "inline":
                cells.append(_Inline(self.links, self.out).run(tok.children or []))
            elif tok.type == "tr_close":
                row: list[Child] = []
                for n, cell in enumerate(cells):
                    row += ([Text(" | ")] if n else []) + cell
                rows.append(Node("paragraph", {}, _merge(row)))
                cells = []
        self.i += 1
        return Node("blockquote", {}, rows)

    def _list(self, tok: Token) -> Node:
        ordered = tok.type == "ordered_list_open"
        close = "ordered_list_close" if ordered else "bullet_list_close"
        items: list[Node] = []
        checks: list[bool | None] = []
        while self.i < len(self.tokens) and self.tokens[self.i].type != close:
            item_tok = self.tokens[self.i]
            self.i += 1
            if item_tok.type != "list_item_open":
                continue
            check = None
            if self.i + 1 < len(self.tokens) and self.tokens[self.i].type == "paragraph_open":
                m = re.match(r"\[([ xX])\](?: |$)", self.tokens[self.i + 1].content)
                check = None if m is None else m.group(1) != " "
            children = self.run("list_item_close")
            if check is not None:
                _drop_prefix(children, 4 if len(_first_text(children)) > 3 else 3)
            items.append(Node("listItem", {}, children or [Node("paragraph")]))
            checks.append(check)
        self.i += 1
        if not ordered and items and all(c is not None for c in checks):
            tasks: list[Child] = [
                Node("taskItem", {"checked": bool(c)}, it.children)
                for it, c in zip(items, checks, strict=True)
            ]
            return Node("taskList", {}, tasks)
        attrs: dict[str, Any] = {}
        if ordered:
            start = int(tok.attrs.get("start", 1) or 1)
            attrs = {"start": start} if start != 1 else {}
        return Node("orderedList" if ordered else "bulletList", attrs, [*items])


def _first_text(children: list[Child]) -> str:
    for c in children:
        if isinstance(c, Node):
            return next((t.text for t in c.children if isinstance(t, Text)), "")
    return ""


def _drop_prefix(children: list[Child], n: int) -> None:
    """Remove a task item's ``[ ] `` from its first paragraph."""
    for c in children:
        if isinstance(c, Node) and c.children and isinstance(c.children[0], Text):
            first = c.children[0]
            first.text = first.text[n:]
            if not first.text:
                c.children.pop(0)
            return


class _Inline:
    def __init__(self, links: Links, out: Parsed) -> None:
        self.links, self.out = links, out
        self.marks: Marks = {}
        self.nodes: list[Child] = []
        self.skip_link_text = 0  # inside a link that became a node or an attachment
        self.link_stack: list[tuple[str, list[str]] | None] = []

    def run(self, tokens: list[Token]) -> list[Child]:
        for tok in tokens:
            self._one(tok)
        return _merge(self.nodes)

    def _text(self, text: str) -> None:
        if self.link_stack and self.link_stack[-1] is not None:
            self.link_stack[-1][1].append(text)
            return
        if text:
            self.nodes.append(Text(text, dict(self.marks)))

    def _one(self, tok: Token) -> None:
        kind = tok.type
        if kind == "text":
            if self.links.obsidian and not self.marks.get("code"):
                self._obsidian(tok.content)
            else:
                self._text(tok.content)
        elif kind == "softbreak":
            self._text(" ")
        elif kind == "hardbreak":
            self.nodes.append(Node("hardBreak"))
        elif kind == "code_inline":
            self.marks["code"] = {}
            self._text(tok.content)
            del self.marks["code"]
        elif kind.endswith("_open") and kind[:-5] in _TOKEN_MARKS:
            self.marks[_TOKEN_MARKS[kind[:-5]]] = {}
        elif kind.endswith("_close") and kind[:-6] in _TOKEN_MARKS:
            self.marks.pop(_TOKEN_MARKS[kind[:-6]], None)
        elif kind == "html_inline":
            self._html(tok.content)
        elif kind == "link_open":
            self._link_open(tok)
        elif kind == "link_close":
            self._link_close()
        elif kind == "image":
            self._image(tok)

    def _html(self, html: str) -> None:
        tag = html.strip().lower()
        if tag in _HTML_MARKS:
            self.marks[_HTML_MARKS[tag]] = {}
        elif tag.startswith("</") and "<" + tag[2:] in _HTML_MARKS:
            self.marks.pop(_HTML_MARKS["<" + tag[2:]], None)
        elif tag in ("<br>", "<br/>", "<br />"):
            self.nodes.append(Node("hardBreak"))
        else:
            self._text(html)

    def _link_open(self, tok: Token) -> None:
        href = str(tok.attrs.get("href", ""))
        target = self.links.link(href)
        if target is None:
            self.link_stack.append(None)
            self.marks["link"] = {"href": href}
            return
        kind = "mention" if tok.attrs.get("title") == MENTION_TITLE else target.kind
        self.link_stack.append((f"{kind}:{target.value}", []))

    def _link_close(self) -> None:
        top = self.link_stack.pop() if self.link_stack else None
        if top is None:
            self.marks.pop("link", None)
            return
        what, texts = top
        kind, _, value = what.partition(":")
        label = "".join(texts)
        if kind == "mention":
            self.nodes.append(Node("reference", {"id": value, "label": label, "type": "mention"}))
        elif kind == "block":
            self.nodes.append(Node("pagelink", {"blockKey": value}))
        else:  # a file: an attachment; its text stays (unless in the files section)
            self._attach(value, label)
            self._text(label)

    def _image(self, tok: Token) -> None:
        src = str(tok.attrs.get("src", ""))
        target = self.links.link(src)
        if target is not None and target.kind == "file":
            self._attach(target.value, tok.content)
            return
        attrs: dict[str, Any] = {"src": src, "alt": tok.content}
        if tok.attrs.get("title"):
            attrs["title"] = str(tok.attrs["title"])
        self.nodes.append(Node("image", attrs))

    def _attach(self, path: str, name: str = "") -> None:
        """Record an attachment; its name is the link's text when that is a file name of the
        same kind (an export writes ``[notes.txt](files/ab12cd34-notes.txt)``), else the
        file's own name (``![a diagram](img/d.png)`` is ``d.png``)."""
        own = PurePosixPath(path)
        name = name.strip()
        same_kind = bool(own.suffix) and PurePosixPath(name).suffix.lower() == own.suffix.lower()
        if path not in self.out.files:
            self.out.files[path] = name if same_kind and "/" not in name else own.name

    def _obsidian(self, text: str) -> None:
        pos = 0
        for m in _WIKI.finditer(text):
            self._tags(text[pos : m.start()])
            pos = m.end()
            embed, name, alias = m.group(1), m.group(2).strip(), m.group(3)
            target = self.links.wiki(name)
            if target is None:
                self._text(m.group(0))
            elif target.kind == "file":
                self._attach(target.value)
                if not embed:
                    self._text(alias or name)
            elif alias:
                self.nodes.append(
                    Node("reference", {"id": target.value, "label": alias, "type": "mention"})
                )
            else:
                self.nodes.append(Node("pagelink", {"blockKey": target.value}))
        self._tags(text[pos:])

    def _tags(self, text: str) -> None:
        for m in _TAG.finditer(text):
            name = m.group(1).strip("/")
            if name and name not in self.out.tags:
                self.out.tags.append(name)
        self._text(text)


def _merge(nodes: list[Child]) -> list[Child]:
    """Adjacent runs with the same marks as one run (as a Yjs text diff reads them back)."""
    out: list[Child] = []
    for n in nodes:
        if isinstance(n, Text) and out and isinstance(out[-1], Text) and out[-1].marks == n.marks:
            out[-1] = Text(out[-1].text + n.text, n.marks)
        elif not (isinstance(n, Text) and not n.text):
            out.append(n)
    return out
