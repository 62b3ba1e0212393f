"""The document model both directions share: ProseMirror nodes and marked text runs, read
from and written to a block's Yjs XML fragments (``title_v0``, ``content_v0``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pycrdt import XmlElement, XmlFragment, XmlText

# marks as Tiptap names them -> their attributes ({} for most)
Marks = dict[str, dict[str, Any]]


@dataclass
class Text:
    text: str
    marks: Marks = field(default_factory=dict)


@dataclass
class Node:
    tag: str
    attrs: dict[str, Any] = field(default_factory=dict)
    children: list[Node | Text] = field(default_factory=list)


Child = Node | Text


def _plain(value: Any) -> Any:
    """pycrdt reads every number as a float; integral ones go back to ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def read_fragment(fragment: XmlFragment | XmlElement) -> list[Child]:
    out: list[Child] = []
    for child in fragment.children:
        if isinstance(child, XmlText):
            for run, marks in child.diff():
                if isinstance(run, str) and run:
                    out.append(Text(run, _plain(dict(marks or {}))))
        elif isinstance(child, XmlElement):
            pairs: Iterable[tuple[str, Any]] = child.attributes.__iter__()  # pairs (pycrdt)
            attrs = {k: _plain(v) for k, v in pairs if v is not None}
            out.append(Node(str(child.tag), attrs, read_fragment(child)))
    return out


def write_children(parent: XmlFragment | XmlElement, children: list[Child]) -> None:
    """Append ``children`` to ``parent``; consecutive text runs become one ``XmlText`` (as
    y-prosemirror writes them)."""
    run: XmlText | None = None
    for child in children:
        if isinstance(child, Text):
            if not child.text:
                continue
            if run is None:
                run = parent.children.append(XmlText())
            run.insert(len(run), child.text, child.marks or None)
            continue
        run = None
        element = parent.children.append(XmlElement(child.tag, dict(child.attrs)))
        write_children(element, child.children)


def plain_text(children: list[Child]) -> str:
    """The text of inline content, as the server reads a title (labels of inline nodes)."""
    parts: list[str] = []
    for c in children:
        if isinstance(c, Text):
            parts.append(c.text)
        elif c.tag in ("hardBreak", "hard_break"):
            parts.append(" ")
        elif "label" in c.attrs:
            parts.append(str(c.attrs["label"]))
        else:
            parts.append(plain_text(c.children))
    return "".join(parts)
