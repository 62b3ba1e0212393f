"""Projecting a block document into plain columns (title, text, relations, files, meta):
what storage indexes and the API lists, read defensively because clients write any shape."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText

from heaper_trio.crdt.codec import _is_pycrdt_failure
from heaper_trio.records.text_segments import lazy_text

_log = logging.getLogger(__name__)
T = TypeVar("T")

_MAX_SAFE_INTEGER = 2**53 - 1  # JS numbers are exact up to here (lib0's varUint limit too)
_MAX_DEPTH = 100  # XML or map nesting deeper than this is not projected (clients set the depth)
_INLINE_TAGS = frozenset({"reference", "pagelink", "hardBreak", "hard_break", "mention"})


@lazy_text("text")
@dataclass(frozen=True)
class Projection:
    """What the server keeps in columns, read out of a block document (never written back).
    ``text`` may be given as ``Segments``; reading it joins them (``records/text_segments``).
    """

    type: str | None
    title: str
    text: str
    tags: tuple[str, ...]
    relations: dict[str, dict[str, Any]]
    mentions: tuple[str, ...]
    links: tuple[str, ...]
    files: dict[str, dict[str, Any]]
    apps: dict[str, Any]
    deleted_at: int | None
    permanently_deleted_at: int | None


def _plain(value: Any, depth: int = 0) -> Any:
    """JSON-able Python: integral floats become ints (pycrdt reads all JS numbers as floats);
    non-finite numbers, binary, sub-documents and XML become None."""
    if depth > _MAX_DEPTH:
        return None
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return int(value) if value.is_integer() and abs(value) <= _MAX_SAFE_INTEGER else value
    if isinstance(value, (Map, dict)):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (Array, list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    return str(value) if isinstance(value, Text) else None


def _millis(value: Any) -> int | None:
    """A client's time in ms, or None when it is no number a time column can hold (a
    JavaScript number may be 1e300; past 2**53 it is no exact millisecond anyway)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return int(value) if ok and abs(value) <= _MAX_SAFE_INTEGER else None


def _is_inline(node: Any) -> bool:
    return isinstance(node, XmlText) or (isinstance(node, XmlElement) and node.tag in _INLINE_TAGS)


@dataclass
class _XmlScan:
    """Walks ProseMirror XML (as y-prosemirror stores it) into lines, mentions and links. A node
    holds inline or block content, never both: an element with an XmlText, only known inline
    children or none is a textblock (one line); in others (lists, quotes) children make lines.
    """

    lines: list[str] = field(default_factory=list)
    mentions: set[str] = field(default_factory=set)
    links: set[str] = field(default_factory=set)

    def block(self, node: XmlFragment | XmlElement, depth: int = 0) -> _XmlScan:
        if depth > _MAX_DEPTH:
            return self
        children = list(node.children)
        textblock = isinstance(node, XmlElement) and (
            all(_is_inline(c) for c in children) or any(isinstance(c, XmlText) for c in children)
        )
        if textblock and not children:
            self.lines.append("")  # an empty paragraph is an empty line
        for inline, run in itertools.groupby(children, lambda c: textblock or _is_inline(c)):
            if inline:
                self.lines.append("".join(self.inline(child, depth + 1) for child in run))
            else:
                for child in (c for c in run if not isinstance(c, XmlText)):
                    self.block(child, depth + 1)
        return self

    def inline(self, node: Any, depth: int) -> str:
        """Text of an inline node: a ``reference`` gives its label, so mentions are searchable."""
        if depth > _MAX_DEPTH:
            return ""
        if isinstance(node, XmlText):  # diff() gives plain chunks; str() would show marks
            return "".join(
                part if isinstance(part, str) else self.inline(part, depth + 1)
                for part, _attrs in node.diff()
            )
        if not isinstance(node, (XmlElement, XmlFragment)):
            return ""  # an embed that is not text
        tag = node.tag if isinstance(node, XmlElement) else None
        # pycrdt types the view's __iter__ as an Iterable; it yields (name, value) pairs
        attrs = (
            dict(cast(Iterable[tuple[str, Any]], node.attributes))
            if isinstance(node, XmlElement)
            else {}
        )
        key = {"reference": "id", "pagelink": "blockKey"}.get(tag or "")
        if key and isinstance(attrs.get(key), str):
            (self.mentions if tag == "reference" else self.links).add(attrs[key])
        label = "\n" if tag in ("hardBreak", "hard_break") else attrs.get("label")
        if isinstance(label, str):
            return label
        return "".join(self.inline(child, depth + 1) for child in node.children)


def _or_default(what: str, default: T, compute: Callable[[], T]) -> T:
    """``compute()``, or ``default`` if pycrdt fails on data a client wrote (logged)."""
    try:
        return compute()
    except BaseException as exc:
        if not _is_pycrdt_failure(exc):
            raise
        _log.warning("%s failed; using %r", what, default, exc_info=True)
        return default


def _read_root(doc: Doc, name: str, kind: type[T], read: Callable[[T], Any], default: Any) -> Any:
    return _or_default(f"projecting {name}", default, lambda: read(doc.get(name, type=kind)))
