"""Building and reading block documents with pycrdt, laid out as docs/documents.md describes
(the layout the Heaper app writes and the server projects into its columns).

Every function edits the document in one transaction, so each is one Yjs update; call them
inside ``with doc.transaction():`` to make several edits one update.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pycrdt import Doc, Map, XmlElement, XmlFragment, XmlText

TITLE, CONTENT, RELATIONS, FILES, APPS, META = (
    "title_v0",
    "content_v0",
    "relations_v1",
    "files_v0",
    "apps_v0",
    "meta_v0",
)
# A run of text, with marks: "plain", ("bold", {"strong": {}}), or an inline node
Inline = str | tuple[str, dict[str, Any]] | XmlElement


def now_ms() -> int:
    return int(time.time() * 1000)


def mention(block_id: str, label: str) -> XmlElement:
    """An inline mention of another block (``reference``; ``label`` is its shown text)."""
    return XmlElement("reference", {"id": block_id, "label": label, "type": "mention"})


def pagelink(block_id: str) -> XmlElement:
    """An inline link to another block (``pagelink``)."""
    return XmlElement("pagelink", {"blockKey": block_id})


def hard_break() -> XmlElement:
    return XmlElement("hardBreak")


def append_node(
    doc: Doc, tag: str, *parts: Inline, root: str = CONTENT, attrs: dict[str, Any] | None = None
) -> XmlElement:
    """Append a textblock (``paragraph``, ``heading`` with ``attrs={"level": 1}``, ...)
    holding ``parts`` to a root fragment."""
    with doc.transaction():
        node = doc.get(root, type=XmlFragment).children.append(XmlElement(tag, attrs or {}))
        run: XmlText | None = None
        for part in parts:
            if isinstance(part, XmlElement):
                node.children.append(part)
                run = None
                continue
            text, marks = (part, None) if isinstance(part, str) else part
            if run is None:
                run = node.children.append(XmlText())
            run.insert(len(run), text, marks)  # len() counts what insert() counts (UTF-8)
    return node


def append_paragraph(doc: Doc, *parts: Inline, root: str = CONTENT) -> XmlElement:
    return append_node(doc, "paragraph", *parts, root=root)


def new_block(
    block_type: str = "document", title: str = "", *, created_at: int | None = None
) -> Doc:
    """A new block document: ``meta_v0.type`` (and ``created_at``) and a one-paragraph title."""
    doc: Doc = Doc()
    with doc.transaction():
        meta = doc.get(META, type=Map)
        meta["type"] = block_type
        meta["created_at"] = created_at if created_at is not None else now_ms()
        append_paragraph(doc, *([title] if title else []), root=TITLE)
    return doc


def add_tag(doc: Doc, tag_id: str, **fields: Any) -> None:
    """Tag the block with block ``tag_id`` (its parent): ``relations_v1[tag_id]``."""
    doc.get(RELATIONS, type=Map)[tag_id] = Map({"type": "tag", **fields})


def remove_tag(doc: Doc, tag_id: str) -> None:
    doc.get(RELATIONS, type=Map).pop(tag_id, None)


def file_key(file_hash: str, size: int) -> str:
    return f"{file_hash}:{size}"


def add_file(doc: Doc, file_hash: str, size: int, name: str, mime_type: str, **more: Any) -> str:
    """Record a file in ``files_v0`` (uploads do it for you); answer its key."""
    key = file_key(file_hash, size)
    entry = {"hash": file_hash, "name": name, "mime_type": mime_type, "file_size": size, **more}
    doc.get(FILES, type=Map)[key] = Map(entry)
    return key


def move_to_trash(doc: Doc, at: int | None = None) -> None:
    doc.get(META, type=Map)["deleted_at"] = at if at is not None else now_ms()


def restore_from_trash(doc: Doc) -> None:
    doc.get(META, type=Map).pop("deleted_at", None)


def delete_permanently(doc: Doc, at: int | None = None) -> None:
    """Gone for good once pushed: the server purges the block as an emptied trash does."""
    doc.get(META, type=Map)["permanently_deleted_at"] = at if at is not None else now_ms()


@dataclass(frozen=True, slots=True)
class BlockContent:
    """A block document read back into plain values (numbers as pycrdt gives them: floats)."""

    type: str | None
    title: str
    text: str
    tags: tuple[str, ...]
    mentions: tuple[str, ...]
    links: tuple[str, ...]
    files: dict[str, Any]
    meta: dict[str, Any]

    @property
    def deleted_at(self) -> Any:
        return self.meta.get("deleted_at")


def read_block(doc: Doc) -> BlockContent:
    """Title, text (one line per textblock, mentions by label), tags, mentions, links, files
    and meta of a block document."""
    found: dict[str, set[str]] = {"reference": set(), "pagelink": set()}
    title = _lines(doc.get(TITLE, type=XmlFragment).children, found)
    text = _lines(doc.get(CONTENT, type=XmlFragment).children, found)
    relations = doc.get(RELATIONS, type=Map).to_py() or {}
    meta = doc.get(META, type=Map).to_py() or {}
    return BlockContent(
        type=meta.get("type"),
        title=" ".join(title),
        text="\n".join(text),
        tags=tuple(sorted(k for k, v in relations.items() if (v or {}).get("type") == "tag")),
        mentions=tuple(sorted(found["reference"])),
        links=tuple(sorted(found["pagelink"])),
        files=doc.get(FILES, type=Map).to_py() or {},
        meta=meta,
    )


def _lines(nodes: Iterable[Any], found: dict[str, set[str]]) -> list[str]:
    lines: list[str] = []
    for node in nodes:
        children = list(node.children) if isinstance(node, XmlElement) else []
        if any(isinstance(c, XmlText) for c in children) or not children:
            lines.append("".join(_inline(c, found) for c in children))
        else:
            lines += _lines(children, found)  # lists, quotes: their children are the lines
    return lines


def _inline(node: Any, found: dict[str, set[str]]) -> str:
    if isinstance(node, XmlText):
        return "".join(run for run, _marks in node.diff() if isinstance(run, str))
    attrs = dict(node.attributes)
    key = {"reference": "id", "pagelink": "blockKey"}.get(node.tag)
    if key and isinstance(attrs.get(key), str):
        found[node.tag].add(attrs[key])
    if node.tag in ("hardBreak", "hard_break"):
        return "\n"
    return str(attrs.get("label", ""))
