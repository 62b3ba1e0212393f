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

import bisect
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pycrdt import Doc, Map, XmlFragment
from pycrdt._xml import _integrated_to_wrapper

from heaper_trio.crdt.codec import _is_pycrdt_failure
from heaper_trio.crdt.projection import _is_inline, _plain, _read_root, _XmlScan
from heaper_trio.records.text_segments import Segments

MAP_ROOTS = ("meta_v0", "relations_v1", "files_v0", "apps_v0")
XML_ROOTS = ("title_v0", "content_v0")


@dataclass(frozen=True, slots=True)
class _Part:
    """One top-level child of an XML root, scanned: an inline child gives a piece of a line
    (consecutive inline children make one line), another its own lines. Slotted, and sharing
    one empty set: an 8.6 MB document has 59k of them (the projection's caches took 49 MB)."""

    inline: bool
    lines: tuple[str, ...]
    mentions: frozenset[str]
    links: frozenset[str]


_NONE: frozenset[str] = frozenset()


def _ids(found: set[str]) -> frozenset[str]:
    return frozenset(found) if found else _NONE


def _scan_child(child: Any) -> _Part:
    scan = _XmlScan()
    if _is_inline(child):
        text = scan.inline(child, 1)
        return _Part(True, (text,), _ids(scan.mentions), _ids(scan.links))
    scan.block(child, 1)
    return _Part(False, tuple(scan.lines), _ids(scan.mentions), _ids(scan.links))


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


@dataclass(frozen=True)
class RootText:
    """An XML root read: its lines joined by newlines (``body``: as the segments' texts, not
    joined, for a root read by segments), and the ids it mentions and links."""

    body: str | Segments
    mentions: frozenset[str]
    links: frozenset[str]

    @property
    def text(self) -> str:
        return str(self.body)

    @classmethod
    def of(cls, scan: _XmlScan) -> RootText:
        return cls("\n".join(scan.lines), frozenset(scan.mentions), frozenset(scan.links))


SEGMENT = 64  # top-level children per segment; one is split in two when it doubles


@dataclass
class _Segment:
    """A run of a root's top-level children with its text kept assembled, so that a typed word
    re-joins one segment's lines and then the segments' texts (a copy at memcpy speed), not
    every line of the document. ``text`` is None while a child of it is to be scanned."""

    parts: list[_Part | None]
    text: str | None = None
    lines: int = 0  # how many lines ``text`` joins (0: the segment adds none)
    mentions: frozenset[str] = frozenset()
    links: frozenset[str] = frozenset()
    nul: bool = False  # ``text`` holds a NUL (storage replaces it: ``services/projection``)
    shape: tuple[Any, ...] = ()  # what the join reads of it besides ``text`` (``_shape``)

    def assemble(self) -> None:
        scan = _assemble([p for p in self.parts if p is not None])
        self.text, self.lines = "\n".join(scan.lines), len(scan.lines)
        self.nul = "\x00" in self.text
        self.mentions, self.links = frozenset(scan.mentions), frozenset(scan.links)
        self.shape = self._shape()

    def _shape(self) -> tuple[Any, ...]:
        """While this stays the same, a new ``text`` changes no seam, NUL flag or id of the
        join: the join's parts are patched in place (``_XmlRoot._patch``)."""
        first, last = self.parts[0], self.parts[-1]
        inline = (first.inline, last.inline) if first and last else None
        return (self.lines > 0, inline, self.nul, self.mentions, self.links)


@dataclass
class _Joined:
    """A join of the segments: ``parts`` holds, per segment, the separator before its text and
    its text ("" for none), so segment ``k``'s text is ``parts[2 * k + 1]``."""

    parts: list[str]
    nul: bool
    mentions: frozenset[str]
    links: frozenset[str]

    def root_text(self) -> RootText:
        return RootText(Segments(tuple(self.parts), self.nul), self.mentions, self.links)


def _join(segments: list[_Segment]) -> _Joined:
    """What ``_assemble`` gives for all the segments' children at once: a run of inline
    children that crosses a seam is one line, so the two sides are glued without a newline.
    The text stays in parts (``Segments``): the segments' own strings with the newlines
    between them, so a push that re-assembled one segment copies nothing of the others."""
    parts: list[str] = []
    mentions, links = set[str](), set[str]()
    any_lines = inline_tail = nul = False
    for seg in segments:
        sep = text = ""
        if seg.parts:
            first, last = seg.parts[0], seg.parts[-1]
            assert seg.text is not None and first is not None and last is not None
            if seg.lines:
                if any_lines and not (inline_tail and first.inline):
                    sep = "\n"
                text, any_lines, nul = seg.text, True, nul or seg.nul
            inline_tail = last.inline
            mentions |= seg.mentions
            links |= seg.links
        parts += (sep, text)
    return _Joined(parts, nul, frozenset(mentions), frozenset(links))


def _top_child(target: Any, depth: int) -> Any:
    """The root's child an event at ``depth`` (its path's length) below the root came from:
    pycrdt's native node (``parent()`` needs no transaction), wrapped when it is read."""
    for _ in range(depth - 1):
        target = target.parent()
        if target is None:
            raise LookupError("no parent")
    return target


@dataclass
class _XmlRoot:
    segments: list[_Segment] | None = None  # None: read the whole root again
    scanned: RootText | None = None  # the last assembled answer, while nothing changed
    # Since the last read, while no child came or went: (segment index, place, child) of the
    # children to scan again, so a read patches ``joined`` and looks up no child by its index
    # (yrs walks the children for that: 1.3 ms at child 59,000). None: read all segments.
    touched: list[tuple[int, int, Any]] | None = None
    joined: _Joined | None = None
    starts: list[int] | None = None  # each segment's first child (None: to count again)

    def on_events(self, events: list[Any]) -> None:
        self.scanned = None
        if self.segments is None:
            return
        try:
            for e in events:  # the root's own event first: it moves the children's places
                if not e.path:
                    self._splice(e.delta)
                    self.touched = self.starts = None
            for e in events:
                if e.path:
                    k, at = self._place(int(e.path[0]))
                    seg = self.segments[k]
                    seg.parts[at], seg.text = None, None
                    if self.touched is not None:
                        self.touched.append((k, at, _top_child(e.target, len(e.path))))
        except Exception:  # an event shape not foreseen: read the root whole next time
            self.segments = self.touched = None

    def _place(self, index: int) -> tuple[int, int]:
        """(segment index, place there) of child ``index``, which must exist."""
        assert self.segments is not None
        if self.starts is None:
            self.starts = [0, *itertools.accumulate(len(s.parts) for s in self.segments)]
        k = bisect.bisect_right(self.starts, index) - 1
        if not (0 <= index < self.starts[-1]):
            raise IndexError(index)
        return k, index - self.starts[k]

    def _patch(self, doc: Doc) -> RootText | None:
        """The new answer after edits inside children only, or None when a segment's shape
        changed (the segments are then assembled, and joined whole by the caller)."""
        segments, joined, touched = self.segments, self.joined, self.touched
        assert segments is not None and joined is not None and touched is not None
        for k, at, child in touched:
            if segments[k].parts[at] is None:
                segments[k].parts[at] = _scan_child(_integrated_to_wrapper(doc, child))
        same = True
        for k in sorted({k for k, _, _ in touched}):
            seg = segments[k]
            if seg.text is None:
                before = seg.shape
                seg.assemble()
                same = same and seg.shape == before
                joined.parts[2 * k + 1] = (seg.text or "") if seg.lines else ""
        return joined.root_text() if same else None

    def _locate(self, index: int) -> tuple[_Segment, int]:
        """The segment holding child ``index`` and its place there (one past the last child:
        the end of the last segment)."""
        assert self.segments is not None
        if index < 0:
            raise IndexError(index)
        for seg in self.segments:
            if index < len(seg.parts):
                return seg, index
            index -= len(seg.parts)
        if index == 0 and self.segments:
            return self.segments[-1], len(self.segments[-1].parts)
        if index == 0:
            self.segments.append(_Segment([]))
            return self.segments[-1], 0
        raise IndexError(index)

    def _splice(self, delta: list[dict[str, Any]]) -> None:
        assert self.segments is not None
        at = 0
        for op in delta:
            if "retain" in op:
                at += int(op["retain"])
            elif "delete" in op:
                n = int(op["delete"])
                while n > 0:
                    seg, i = self._locate(at)
                    k = min(n, len(seg.parts) - i)
                    if k <= 0:
                        raise IndexError(at)
                    del seg.parts[i : i + k]
                    seg.text, n = None, n - k
            elif "insert" in op:
                n = len(op["insert"]) if isinstance(op["insert"], list) else 1
                seg, i = self._locate(at)
                seg.parts[i:i] = [None] * n
                seg.text = None
                at += n
            else:
                raise ValueError(f"unknown delta op {op!r}")
        self._rebalance()

    def _rebalance(self) -> None:
        """Drop empty segments, split those grown past twice the size."""
        assert self.segments is not None
        out = []
        for seg in self.segments:
            parts = seg.parts
            if len(parts) <= 2 * SEGMENT:
                if parts:
                    out.append(seg)
                continue
            out += [_Segment(parts[i : i + SEGMENT]) for i in range(0, len(parts), SEGMENT)]
        self.segments = out

    def read(self, doc: Doc, name: str) -> RootText:
        if self.scanned is not None:
            return self.scanned
        try:
            if self.touched is not None and self.joined is not None:
                patched, self.touched = self._patch(doc), []
                if patched is not None:
                    self.scanned = patched
                    return patched
            root = doc.get(name, type=XmlFragment)
            children = root.children
            count = len(children)
            segments = self.segments
            if segments is None or sum(len(s.parts) for s in segments) != count:
                segments = [
                    _Segment([None] * min(SEGMENT, count - i)) for i in range(0, count, SEGMENT)
                ]
            todo, start = [], 0
            for seg in segments:  # a segment with its text has every child scanned
                if seg.text is None:
                    todo += [(seg, i, start + i) for i, p in enumerate(seg.parts) if p is None]
                start += len(seg.parts)
            # an index lookup walks the children from the start: one pass when many are due
            kids: Any = list(children) if len(todo) > 16 else children
            for seg, i, index in todo:
                seg.parts[i] = _scan_child(kids[index])
            for seg in segments:
                if seg.text is None:
                    seg.assemble()
            self.segments, self.starts, self.touched = segments, None, []
            self.joined = _join(segments)
            self.scanned = self.joined.root_text()
        except BaseException as exc:
            if not _is_pycrdt_failure(exc):
                raise
            self.segments = self.touched = self.joined = None
            scan = _read_root(doc, name, XmlFragment, _XmlScan().block, _XmlScan())
            self.scanned = RootText.of(scan)
        return self.scanned


@dataclass
class LiveProjection:
    """The roots' projections of one ``pycrdt.Doc``, re-read only where events reached."""

    doc: Doc
    maps: dict[str, Any] = field(default_factory=dict)  # root name -> its _plain value
    xml: dict[str, _XmlRoot] = field(default_factory=dict)
    _subscriptions: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Subscribed on pycrdt's native types: its ``observe_deep`` wrapper turns every field
        # of every event into Python objects (delta, keys, path, target; a fifth of a typed
        # word's apply), while these read the path, a root's delta and a parent walk only.
        for name in MAP_ROOTS:
            root = self.doc.get(name, type=Map)
            self._subscriptions.append(root.integrated.observe_deep(self._map_changed(name)))
        for name in XML_ROOTS:
            self.xml[name] = _XmlRoot()
            root = self.doc.get(name, type=XmlFragment)
            self._subscriptions.append(root.integrated.observe_deep(self.xml[name].on_events))

    def _map_changed(self, name: str) -> Callable[[Any], None]:
        # The callback must not hold ``self``: the native document holds the callback, so a
        # callback holding the projection (and through it ``self.doc``) is a cycle the
        # collector cannot see, and every projected document would stay in memory.
        maps = self.maps

        def changed(_events: Any) -> None:
            maps.pop(name, None)

        return changed

    def map_root(self, name: str) -> Any:
        if name not in self.maps:
            self.maps[name] = _read_root(self.doc, name, Map, _plain, {})
        return self.maps[name]

    def xml_root(self, name: str) -> RootText:
        return self.xml[name].read(self.doc, name)

    def forget(self) -> None:
        """Read every root whole next time. yrs integrates parked (pending) structs without
        telling the observers when their gap is filled, so what it did then is unknown."""
        self.maps.clear()
        for root in self.xml.values():
            root.segments, root.scanned, root.touched, root.joined = None, None, None, None
