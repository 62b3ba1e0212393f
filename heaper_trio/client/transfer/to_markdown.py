"""A block's ProseMirror tree as CommonMark (with GFM task lists and strikethrough).

The output is made to parse back (:mod:`.from_markdown`) into the same tree, so an export
imported and exported again gives the same bytes: text is escaped wherever Markdown could
read it as syntax, spaces at the ends of a line are kept as ``&#32;``, an empty paragraph is
``<p></p>``, marks without a Markdown form are HTML (``<u>``, ``<mark>``). Mentions and page
links are relative links to the other block's file (a mention carries the link title
``"mention"``); blocks outside the export are ``heaper:<block id>`` links.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from markdown_it import MarkdownIt

from heaper_trio.client.transfer.tree import Child, Marks, Node, Text, plain_text

# block id -> (relative path of its file, its title), or None when not exported
Targets = Callable[[str], "tuple[str, str] | None"]
MENTION_TITLE = "mention"
BLOCK_SCHEME = "heaper:"
# marks outermost first; each has an opener and a closer (links are done apart)
MARK_ORDER = ("link", "bold", "italic", "strike", "underline", "highlight", "code")
DELIMS = {
    "bold": ("**", "**"),
    "italic": ("*", "*"),
    "strike": ("~~", "~~"),
    "underline": ("<u>", "</u>"),
    "highlight": ("<mark>", "</mark>"),
}
# the same marks as HTML, for where `*` cannot open or close (CommonMark's flanking rules:
# `1**:**` is no emphasis, since `**` between a digit and a colon opens nothing)
HTML_DELIMS = {
    **DELIMS,
    "bold": ("<b>", "</b>"),
    "italic": ("<i>", "</i>"),
    "strike": ("<s>", "</s>"),
}
EMPHASIS = {"bold": "strong_open", "italic": "em_open", "strike": "s_open"}
_ESCAPE = re.compile(r"([\\`*_\[\]<>#~|&])")
_LINE_START = re.compile(r"^([-+=]|\d+[.)])", re.M)
_MD = MarkdownIt("commonmark")
_MD_STRIKE = MarkdownIt("commonmark", {"html": True}).enable("strikethrough")
_BANG = "\x00"
LISTS = {"bulletList", "orderedList", "taskList"}


def _escape_start(m: re.Match[str]) -> str:
    """``-``, ``+``, ``=`` or ``12.`` at a line's start would make a list or a heading."""
    mark = m.group(1)
    return "\\" + mark if len(mark) == 1 else mark[:-1] + "\\" + mark[-1]


def escape(text: str) -> str:
    return _ESCAPE.sub(r"\\\1", text)


def _ends(line: str) -> str:
    """Whitespace at a line's ends would be dropped (or two spaces read as a hard break):
    keep it as character references (``&#32;``)."""
    stripped = line.strip()
    if stripped == line:
        return line
    if not stripped:
        return "".join(f"&#{ord(c)};" for c in line)
    lead = line[: len(line) - len(line.lstrip())]
    trail = line[len(line.rstrip()) :]
    return "".join(f"&#{ord(c)};" for c in lead) + stripped + "".join(f"&#{ord(c)};" for c in trail)


def _href(href: str) -> str:
    """As markdown-it reads it back (percent-encoded), in ``<>`` when it has spaces or
    parentheses."""
    href = _MD.normalizeLink(href)
    if re.search(r"[\s()<>]", href) or not href:
        return "<" + href.replace("<", "%3C").replace(">", "%3E") + ">"
    return href


def _code_span(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or text.strip(" ") == "" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


class _Inline:
    """Inline content to one string, marks opened and closed as a stack (as
    prosemirror-markdown does) so that adjacent runs sharing a mark share its delimiters."""

    def __init__(self, targets: Targets, html: bool = False) -> None:
        self.targets = targets
        self.delims = HTML_DELIMS if html else DELIMS
        self.emphasis: list[str] = []  # emphasis opened and closed, in order, as tokens
        self.out: list[str] = []
        self.open: list[tuple[str, Any]] = []

    def render(self, children: list[Child]) -> str:
        items: list[Child] = []
        for c in children:  # runs with the same marks as one (as Yjs reads them back)
            last = items[-1] if items else None
            if isinstance(c, Text) and isinstance(last, Text) and last.marks == c.marks:
                items[-1] = Text(last.text + c.text, c.marks)
                continue
            if not (isinstance(c, Text) and not c.text):
                items.append(c)
        for i, item in enumerate(items):
            marks = _marks_of(item)
            following = _marks_of(items[i + 1]) if i + 1 < len(items) else {}
            self._close_to(marks)
            if isinstance(item, Text):
                self._text(item, marks, following)
            else:
                self._open(marks)
                last_break = i == len(items) - 1 and item.tag in ("hardBreak", "hard_break")
                self.out.append("<br>" if last_break else self._node(item))  # `\` would be text
        self._close_to({})
        joined = "".join(self.out).replace("!" + _BANG + "[", "\\![").replace(_BANG, "")
        lines = joined.split("\n")
        return "\n".join(_ends(_LINE_START.sub(_escape_start, ln)) for ln in lines)

    def _text(self, item: Text, marks: Marks, following: Marks) -> None:
        # NUL is U+FFFD in CommonMark anyway (and marks the `!` below)
        text = item.text.replace("\n", " ").replace(_BANG, "\ufffd")
        if "code" in marks:
            self._open(marks)
            self.out.append(_code_span(text))
            return
        if not text.strip(" "):  # spaces show no mark: none is opened for them
            self.out.append(text)
            return
        lead = text[: len(text) - len(text.lstrip(" "))] if self._opens(marks) else ""
        closing = any(following.get(k) != v for k, v in marks.items())
        body = text[len(lead) :]
        trail = body[len(body.rstrip(" ")) :] if closing and marks else ""
        body = body[: len(body) - len(trail)]
        self.out.append(lead)
        self._open(marks)
        # `!` right before a link (a mention, a page link) would make it an image: marked
        # here, escaped in `render` once what follows is known
        self.out.append(escape(body) + (_BANG if body.endswith("!") else ""))
        if trail:
            self._close_to({})
            self.out.append(trail)

    def _opens(self, marks: Marks) -> bool:
        return any((k, v) not in self.open for k, v in marks.items() if k in MARK_ORDER)

    def _open(self, marks: Marks) -> None:
        for name in MARK_ORDER:
            if name in marks and (name, marks[name]) not in self.open and name != "code":
                self.open.append((name, marks[name]))
                self.out.append("[" if name == "link" else self.delims[name][0])
                if name in EMPHASIS:
                    self.emphasis.append(EMPHASIS[name])

    def _close_to(self, marks: Marks) -> None:
        keep = 0
        while keep < len(self.open) and marks.get(self.open[keep][0]) == self.open[keep][1]:
            keep += 1
        while len(self.open) > keep:
            name, attrs = self.open.pop()
            if name == "link":
                href = str((attrs or {}).get("href", ""))
                self.out.append(f"]({_href(href)})")
            else:
                self.out.append(self.delims[name][1])
                if name in EMPHASIS:
                    self.emphasis.append(EMPHASIS[name].replace("_open", "_close"))

    def _node(self, node: Node) -> str:
        tag, attrs = node.tag, node.attrs
        if tag in ("hardBreak", "hard_break"):
            return "\\\n"
        if tag == "reference":
            target = str(attrs.get("id", ""))
            label = str(attrs.get("label", ""))
            return f'[{escape(label)}]({self._block_href(target)} "{MENTION_TITLE}")'
        if tag == "pagelink":
            target = str(attrs.get("blockKey", ""))
            found = self.targets(target)
            label = found[1] if found else target
            return f"[{escape(label)}]({self._block_href(target)})"
        if tag == "image":
            return _image(attrs)
        if "label" in attrs:
            return escape(str(attrs["label"]))
        return escape(plain_text(node.children))

    def _block_href(self, block_id: str) -> str:
        found = self.targets(block_id)
        return _href(found[0]) if found else BLOCK_SCHEME + block_id


def _marks_of(item: Child) -> Marks:
    if isinstance(item, Text):
        return {k: v for k, v in item.marks.items() if k in MARK_ORDER}
    return {}


def _image(attrs: dict[str, Any]) -> str:
    alt = escape(str(attrs.get("alt") or ""))
    title = attrs.get("title")
    suffix = f' "{str(title).replace(chr(34), "")}"' if title else ""
    return f"![{alt}]({_href(str(attrs.get('src') or ''))}{suffix})"


def inline(children: list[Child], targets: Targets) -> str:
    """Inline content with ``**``, ``*`` and ``~~``, unless Markdown would not read one of
    them back as emphasis (checked by parsing it): then with ``<b>``, ``<i>``, ``<s>``."""
    plain = _Inline(targets)
    text = plain.render(children)
    if plain.emphasis:
        tokens = _MD_STRIKE.parseInline(text)[0].children or []
        kinds = {k for v in EMPHASIS.values() for k in (v, v.replace("_open", "_close"))}
        if [t.type for t in tokens if t.type in kinds] != plain.emphasis:
            return _Inline(targets, html=True).render(children)
    return text


def blocks(nodes: list[Child], targets: Targets) -> str:
    """Top-level (or nested) block nodes, separated by blank lines."""
    return "\n\n".join(text for _, text in _sequence(nodes, targets))


def _family(node: Child) -> str | None:
    if isinstance(node, Node) and node.tag in LISTS:
        return "ordered" if node.tag == "orderedList" else "bullet"
    return None


def _interrupts(node: Child) -> bool:
    """Whether a list may start right below a paragraph (CommonMark: a bullet list, or an
    ordered one starting at 1)."""
    family = _family(node)
    if family == "ordered" and isinstance(node, Node):
        return int(node.attrs.get("start") or 1) == 1
    return family is not None


def _sequence(nodes: list[Child], targets: Targets) -> list[tuple[Child, str]]:
    """Sibling blocks rendered; a list right after a list of its kind takes the other marker
    (`*` for `-`, `1)` for `1.`), or Markdown would make the two one list."""
    out: list[tuple[Child, str]] = []
    alt = False
    for n in nodes:
        same = bool(out) and _family(n) is not None and _family(n) == _family(out[-1][0])
        alt = (not alt) if same else False
        text = (
            _list(n, targets, alt) if isinstance(n, Node) and n.tag in LISTS else _block(n, targets)
        )
        if text is not None:
            out.append((n, text))
    return out


def _indent(text: str, first: str, rest: str) -> str:
    lines = text.split("\n")
    return "\n".join([first + lines[0]] + [(rest + ln) if ln else "" for ln in lines[1:]]).rstrip(
        " "
    )


def _block(node: Child, targets: Targets) -> str | None:
    if isinstance(node, Text):  # text outside a textblock: keep it as a paragraph
        return inline([node], targets)
    tag, attrs = node.tag, node.attrs
    if tag == "paragraph":
        return inline(node.children, targets) or "<p></p>"
    if tag == "heading":
        level = min(6, max(1, int(attrs.get("level") or 1)))
        text = inline(node.children, targets)
        return "#" * level + (" " + text if text else "")
    if tag == "codeBlock":
        code = plain_text(node.children)
        longest = max((len(m) for m in re.findall(r"^`{3,}", code, re.M)), default=2)
        fence = "`" * (longest + 1)
        language = str(attrs.get("language") or "")
        return f"{fence}{language}\n{code}\n{fence}" if code else f"{fence}{language}\n{fence}"
    if tag == "blockquote":
        inner = blocks(node.children, targets)
        return "\n".join(("> " + ln) if ln else ">" for ln in inner.split("\n"))
    if tag == "horizontalRule":
        return "___"  # `- ---` would be a rule, not a list item holding one
    if tag == "image":
        return _image(attrs)
    if tag in LISTS:
        return _list(node, targets)
    if any(isinstance(c, Text) for c in node.children) or not node.children:
        return inline(node.children, targets) or None  # an unknown textblock: its text
    return blocks(node.children, targets)  # an unknown container: its blocks


def _list(node: Node, targets: Targets, alt: bool = False) -> str:
    start = int(node.attrs.get("start") or 1)
    bullet, dot = ("* ", ") ") if alt else ("- ", ". ")
    items: list[str] = []
    for i, item in enumerate(c for c in node.children if isinstance(c, Node)):
        if node.tag == "orderedList":
            marker = f"{start + i}{dot}"
        elif node.tag == "taskList":
            marker = bullet + ("[x] " if item.attrs.get("checked") else "[ ] ")
        else:
            marker = bullet
        rendered = _sequence(item.children, targets)
        parts: list[str] = []
        first = rendered[0][0] if rendered else None
        if node.tag == "taskList" and not (isinstance(first, Node) and first.tag == "paragraph"):
            parts.append("")  # the checkbox is text of a paragraph: the rest goes below it
        for j, (child, text) in enumerate(rendered):
            if j == 0 and node.tag == "taskList" and text == "<p></p>":
                text = ""  # `- [ ] <p></p>` would be text: an empty task is `- [ ]`
            # a nested list right under its paragraph (an HTML block runs to a blank line)
            tight = j > 0 and _interrupts(child) and not rendered[j - 1][1].startswith("<")
            parts.append(("\n" if tight else "\n\n") + text if parts else text)
        body = "".join(parts) if parts else "<p></p>"
        width = 2 if node.tag == "taskList" else len(marker)
        items.append(_indent(body, marker, " " * width))
    return "\n".join(items)
