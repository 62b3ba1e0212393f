"""The projection of a block document kept up to date as updates arrive (issue 12 item 4).

Projecting reads six roots; an update touches one or two of them, and a typed word touches one
paragraph of ``content_v0``. ``LiveProjection`` observes every root (deep observers, attached
at the first projection, so loading a document pays nothing for them) and re-reads only what
the transactions since the last projection changed:

- a map root (``meta_v0``, ``relations_v1``, ``files_v0``, ``apps_v0``) is read again whole
  when any event reached it;
- an XML root (``title_v0``, ``content_v0``) keeps one scan per top-level child: an event on
  the root itself splices that list by its delta (inserted children are scanned, deleted ones
  dropped), an event below a child (its path starts with the child's index, counted after the
  transaction as Yjs does) scans that child again.

The pieces are then put together as ``BlockDocument.project`` reads the whole document
(``_XmlScan.block`` on the root), so both give the same ``Projection``; a test holds them equal
on random edits. Anything unexpected (an event this code does not know, a pycrdt failure, a
child count that does not match) drops the cache of that root, which is then read whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pycrdt import Doc, Map, XmlFragment

from heaper_trio.crdt.codec import _is_pycrdt_failure
from heaper_trio.crdt.projection import _is_inline, _plain, _read_root, _XmlScan

MAP_ROOTS = ("meta_v0", "relations_v1", "files_v0", "apps_v0")
XML_ROOTS = ("title_v0", "content_v0")


@dataclass(frozen=True)
class _Part:
    """One top-level child of an XML root, scanned: an inline child gives a piece of a line
    (consecutive inline children make one line), another its own lines."""

    inline: bool
    lines: tuple[str, ...]
    mentions: frozenset[str]
    links: frozenset[str]


def _scan_child(child: Any) -> _Part:
    scan = _XmlScan()
    if _is_inline(child):
        text = scan.inline(child, 1)
        return _Part(True, (text,), frozenset(scan.mentions), frozenset(scan.links))
    scan.block(child, 1)
    return _Part(False, tuple(scan.lines), frozenset(scan.mentions), frozenset(scan.links))


def _assemble(parts: list[_Part]) -> _XmlScan:
    """What ``_XmlScan().block(root)`` gives for a root with these children."""
    out = _XmlScan()
    lines, run = out.lines, list[str]()
    for p in parts:
        if p.inline:
            run.append(p.lines[0])
            continue
        if run:
            lines.append("".join(run))
            run = []
        lines.extend(p.lines)
        if p.mentions:
            out.mentions.update(p.mentions)
        if p.links:
            out.links.update(p.links)
    if run:
        lines.append("".join(run))
    for p in parts:
        if p.inline and (p.mentions or p.links):
            out.mentions.update(p.mentions)
            out.links.update(p.links)
    return out


@dataclass
class _XmlRoot:
    parts: list[_Part | None] | None = None  # None: read the whole root again
    scanned: _XmlScan | None = None  # the last assembled answer, while nothing changed

    def on_events(self, events: list[Any]) -> None:
        self.scanned = None
        if self.parts is None:
            return
        try:
            for e in events:  # the root's own event first: it moves the children's places
                if not e.path:
                    self._splice(e.delta)
            for e in events:
                if e.path:
                    self.parts[int(e.path[0])] = None
        except Exception:  # an event shape not foreseen: read the root whole next time
            self.parts = None

    def _splice(self, delta: list[dict[str, Any]]) -> None:
        assert self.parts is not None
        at = 0
        for op in delta:
            if "retain" in op:
                at += int(op["retain"])
            elif "delete" in op:
                del self.parts[at : at + int(op["delete"])]
            elif "insert" in op:
                n = len(op["insert"]) if isinstance(op["insert"], list) else 1
                self.parts[at:at] = [None] * n
                at += n
            else:
                raise ValueError(f"unknown delta op {op!r}")

    def read(self, doc: Doc, name: str) -> _XmlScan:
        if self.scanned is not None:
            return self.scanned
        try:
            root = doc.get(name, type=XmlFragment)
            children = root.children
            if self.parts is None or len(self.parts) != len(children):
                self.parts = [None] * len(children)
            parts = self.parts
            todo = [i for i, part in enumerate(parts) if part is None]
            # an index lookup walks the children from the start: one pass when many are due
            kids: Any = list(children) if len(todo) > 16 else children
            for i in todo:
                parts[i] = _scan_child(kids[i])
            self.scanned = _assemble([p for p in parts if p is not None])
        except BaseException as exc:
            if not _is_pycrdt_failure(exc):
                raise
            self.parts = None
            self.scanned = _read_root(doc, name, XmlFragment, _XmlScan().block, _XmlScan())
        return self.scanned


@dataclass
class LiveProjection:
    """The roots' projections of one ``pycrdt.Doc``, re-read only where events reached."""

    doc: Doc
    maps: dict[str, Any] = field(default_factory=dict)  # root name -> its _plain value
    xml: dict[str, _XmlRoot] = field(default_factory=dict)
    _subscriptions: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in MAP_ROOTS:
            root = self.doc.get(name, type=Map)
            self._subscriptions.append(root.observe_deep(self._map_changed(name)))
        for name in XML_ROOTS:
            self.xml[name] = _XmlRoot()
            root = self.doc.get(name, type=XmlFragment)
            self._subscriptions.append(root.observe_deep(self.xml[name].on_events))

    def _map_changed(self, name: str) -> Callable[[Any], None]:
        def changed(_events: Any) -> None:
            self.maps.pop(name, None)

        return changed

    def map_root(self, name: str) -> Any:
        if name not in self.maps:
            self.maps[name] = _read_root(self.doc, name, Map, _plain, {})
        return self.maps[name]

    def xml_root(self, name: str) -> _XmlScan:
        return self.xml[name].read(self.doc, name)

    def forget(self) -> None:
        """Read every root whole next time. yrs integrates parked (pending) structs without
        telling the observers when their gap is filled, so what it did then is unknown."""
        self.maps.clear()
        for root in self.xml.values():
            root.parts, root.scanned = None, None
