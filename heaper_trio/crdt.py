"""Yjs block documents: apply, diff, state vectors, and projecting a block into plain columns.

The only module that imports pycrdt, so that its quirks (checked on 0.14.13) are known in one
place rather than relearned at every call site:

- ``Doc.get_update()`` omits *pending* data (structs and deletions whose predecessors are
  missing); yrs does not always integrate pending structs once the gap is filled; a struct
  after a clock gap is integrated if its origins are known, but the state vector stops there.
- ``apply_update`` refuses bytes that do not decode, untouched, but can fail halfway through
  integrating and keep the first part; it ignores trailing bytes, as Yjs does (check_update).
- A root read as another type than a client wrote is cast, not refused (a Text reads as {}).
- Numbers come back as floats; ``str(XmlText)`` shows marks as tags; ``Map.to_py()`` raises on
  nested XML; ints above 2**53 are written as BigInt; a Rust panic is a ``BaseException``.
"""

from __future__ import annotations

import binascii
import itertools
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import pycrdt
from pycrdt import Array, Doc, Map, Text, TransactionEvent, XmlElement, XmlFragment, XmlText

from heaper_trio.errors import Unprocessable
from heaper_trio.protocol.split import decodes_exactly
from heaper_trio.protocol.wire import read_var_uint

_log = logging.getLogger(__name__)
T = TypeVar("T")

EMPTY_STATE_VECTOR: bytes = b"\x00"
EMPTY_UPDATE: bytes = b"\x00\x00"  # no structs, no deletions
_MAX_SAFE_INTEGER = 2**53 - 1  # JS numbers are exact up to here (lib0's varUint limit too)
_MAX_DEPTH = 100  # XML or map nesting deeper than this is not projected (clients set the depth)
_INLINE_TAGS = frozenset({"reference", "pagelink", "hardBreak", "hard_break", "mention"})


class InvalidUpdate(Unprocessable):
    """A Yjs payload (update, state vector, or its base64) that does not decode."""

    code = "invalid_update"


def _is_pycrdt_failure(exc: BaseException) -> bool:
    """Exceptions, and pyo3's ``PanicException`` (a BaseException, not importable by name)."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def decode_b64(text: str, what: str = "update") -> bytes:
    """Standard base64 with padding. Whitespace, URL-safe letters or missing padding are errors
    rather than guesses, so that a payload has one meaning. "" decodes to b""."""
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError
        raise InvalidUpdate(f"{what} is not padded base64: {exc}", code="invalid_base64") from exc


def encode_b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _parse_state_vector(sv: bytes) -> dict[int, int]:
    """Decode a v1 state vector (``varUint n, n x (client, clock)``) with nothing after it."""
    count, pos = read_var_uint(sv, 0)
    clocks: dict[int, int] = {}
    for _ in range(count):
        client, pos = read_var_uint(sv, pos)
        clocks[client], pos = read_var_uint(sv, pos)
    if pos != len(sv):
        raise ValueError("trailing bytes after the state vector")
    return clocks


def check_state_vector(sv: bytes) -> None:
    """Refuse all but a well-formed v1 state vector: yrs would read a prefix and ignore the
    rest, answering with a diff for some other state. b"\\x00" is empty; b"" is no vector."""
    try:
        _parse_state_vector(bytes(sv))
    except (ValueError, TypeError) as exc:
        raise InvalidUpdate(f"malformed state_vector: {exc}", code="invalid_state_vector") from exc


def check_update(update: bytes) -> None:
    """For what clients send (not stored logs): yrs applies a prefix and ignores the rest. Fast
    path: yrs writes it again byte for byte (as Yjs and yrs encode); else the exact walk."""
    try:
        if pycrdt.get_update(update, EMPTY_STATE_VECTOR) == update:
            return
    except BaseException as exc:
        if not _is_pycrdt_failure(exc):
            raise
    if not decodes_exactly(update):
        raise InvalidUpdate("not exactly one Yjs v1 update (malformed, or bytes after its end)")


@dataclass(frozen=True)
class Projection:
    """What the server keeps in columns, read out of a block document (never written back)."""

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
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return int(value) if ok else None


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
        attrs = (dict(cast(Iterable[tuple[str, Any]], node.attributes))
                 if isinstance(node, XmlElement) else {})
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


def _fully_integrated(update: bytes, state: bytes) -> bool:
    """True when every struct and deletion of ``update`` is in a document at ``state``. pycrdt
    has no pending API: ``get_update(u, sv)`` must hold no structs; it is then the update's
    whole delete set, whose ranges must all lie below our clocks, or yrs parked them.
    """
    clocks = _parse_state_vector(state)
    rest = pycrdt.get_update(update, state)  # doc-free, like Y.diffUpdate
    structs, pos = read_var_uint(rest, 0)
    if structs:
        return False
    clients, pos = read_var_uint(rest, pos)
    for _ in range(clients):
        client, pos = read_var_uint(rest, pos)
        ranges, pos = read_var_uint(rest, pos)
        for _ in range(ranges):
            clock, pos = read_var_uint(rest, pos)
            length, pos = read_var_uint(rest, pos)
            if clock + length > clocks.get(client, 0):
                return False
    return True


class BlockDocument:
    """One block's Yjs document in memory."""

    def __init__(self) -> None:
        self._changes = 0  # transactions that changed the document, counted by the observer
        self._captured: list[bytes] | None = None  # set while set_meta wants its update
        self._suspects: list[bytes] = []  # applied updates not (yet) fully integrated
        # yrs can fail halfway through an update (a parent that is no type) and keep the part it
        # integrated: then rebuild from `_base` (renewed now and then) and the updates since.
        self._base, self._since, self._since_size = b"\x00\x00", list[bytes](), 0
        self._doc: Doc = Doc()
        self._doc.observe(self._on_transaction)

    def _on_transaction(self, event: TransactionEvent) -> None:
        # Only called for transactions that changed something; the event dies with the callback
        self._changes += 1
        if self._captured is not None:
            self._captured.append(bytes(event.update))

    def _remember(self, update: bytes) -> None:
        self._since.append(update)
        self._since_size += len(update)
        if self._since_size > len(self._base) + 65536:
            self.has_pending()  # prunes `_suspects` to what the new base lacks
            self._base, self._since, self._since_size = self._doc.get_update(), self._suspects[:], 0

    @classmethod
    def load(cls, snapshot: bytes | None, updates: Iterable[bytes] = ()) -> BlockDocument:
        """Rebuild a document from a stored snapshot (None or empty: none) and later updates."""
        block = cls()
        for update in itertools.chain([snapshot] if snapshot else [], updates):
            block.apply(update)
        return block

    def apply(self, update: bytes) -> bool:
        """Apply a Yjs v1 update; True when it brought anything this document lacked.

        That is structs or deletions integrated, or parts parked as pending for want of
        predecessors: such an update must be stored too, or a restart loses it (the same bytes
        again are a duplicate). One that does not decode or integrate raises InvalidUpdate and
        leaves the document as it was."""
        update, changes, suspects = bytes(update), self._changes, list(self._suspects)
        state = self._doc.get_state() if suspects else b""
        try:
            self._doc.apply_update(update)
            # yrs may leave pending structs pending once their gap is filled (seen after a later
            # map edit). Re-applying parked updates, merged (one by one is quadratic), helps.
            while self._suspects and self._doc.get_state() != state:
                state = self._doc.get_state()
                self._doc.apply_update(pycrdt.merge_updates(*self._suspects))
                self.has_pending()  # drops what integrated
        except BaseException as exc:
            if not _is_pycrdt_failure(exc):
                raise
            self._suspects = suspects
            if self._changes != changes:  # integrated in part: start again without it
                self._doc = Doc()
                self._doc.observe(self._on_transaction)
                for done in [self._base, *self._since]:
                    self._doc.apply_update(done)
            raise InvalidUpdate(f"update does not apply as Yjs v1: {exc}") from exc
        if parked := (update not in self._suspects and not self._integrated(update)):
            self._suspects.append(update)
        if parked or self._changes != changes:
            self._remember(update)  # after parking: a new base keeps what is parked
        return parked or self._changes != changes

    def _integrated(self, update: bytes) -> bool:
        # In doubt, no: a false "pending" delays compaction, a false "integrated" loses data.
        state = self._doc.get_state()
        return _or_default("pending check", False, lambda: _fully_integrated(update, state))

    def has_pending(self) -> bool:
        """True while an applied update waits for missing predecessors; until they come, its
        data is in neither :meth:`state_vector`, :meth:`full_state` nor :meth:`snapshot`.
        """
        self._suspects = [u for u in self._suspects if not self._integrated(u)]
        return bool(self._suspects)

    def state_vector(self) -> bytes:
        return self._doc.get_state()

    def diff(self, state_vector: bytes | None) -> bytes:
        """The update a peer at ``state_vector`` lacks (None or empty: everything), with the
        whole delete set as in Yjs. yrs wraps clocks above u32, which only makes diffs bigger;
        were it to refuse a vector we accept, everything is the safe answer."""
        if state_vector is None:
            return self.full_state()
        check_state_vector(state_vector)
        sv = bytes(state_vector)
        return _or_default("diff", None, lambda: self._doc.get_update(sv)) or self.full_state()

    def full_state(self) -> bytes:
        return self._doc.get_update()

    def snapshot(self) -> bytes:
        """The document re-encoded, smaller and faster to load than its log. Never replace the
        log with it while :meth:`has_pending`: yrs leaves pending structs and deletions out of
        this encoding, so they would be lost with the log rows carrying them."""
        return self._doc.get_update()

    @property
    def size(self) -> int:
        return len(self.full_state())

    def project(self) -> Projection:
        """The query and search columns; never raises on a document a client can produce. Each
        root is read on its own (one of another type is cast, mostly to empty), one that fails
        gives its field's default, and relation or file entries that are not maps are left out.
        """
        doc = self._doc
        meta = _read_root(doc, "meta_v0", Map, _plain, {})
        relations = _read_root(doc, "relations_v1", Map, _plain, {})
        relations = {k: v for k, v in relations.items() if isinstance(v, dict)}
        files = _read_root(doc, "files_v0", Map, _plain, {})
        title = _read_root(doc, "title_v0", XmlFragment, _XmlScan().block, _XmlScan())
        content = _read_root(doc, "content_v0", XmlFragment, _XmlScan().block, _XmlScan())
        block_type = meta.get("type")
        return Projection(
            type=block_type if isinstance(block_type, str) else None,
            title=" ".join(title.lines).replace("\n", " ").strip(),
            text="\n".join(content.lines),
            tags=tuple(sorted(k for k, v in relations.items() if v.get("type") == "tag")),
            relations=relations,
            mentions=tuple(sorted(title.mentions | content.mentions)),
            links=tuple(sorted(title.links | content.links)),
            files={k: v for k, v in files.items() if isinstance(v, dict)},
            apps=_read_root(doc, "apps_v0", Map, _plain, {}),
            deleted_at=_millis(meta.get("deleted_at")),
            permanently_deleted_at=_millis(meta.get("permanently_deleted_at")),
        )

    def deleted_at(self) -> Any:
        """``meta_v0.deleted_at`` as stored (None: not in the trash), without projecting the
        whole document: pushes read it before and after to tell trashing from editing."""
        meta = _or_default("reading meta_v0", None, lambda: self._doc.get("meta_v0", type=Map))
        return _millis(meta.get("deleted_at")) if meta is not None else None

    def set_meta(self, field: str, value: Any) -> bytes:
        """Edit ``meta_v0[field]`` as the server (None deletes it); return the update to store
        and broadcast (b"\\x00\\x00" if nothing changed). Integers beyond 2**53 are refused: yrs
        would write a BigInt, which JavaScript cannot use as a number."""
        if isinstance(value, int) and abs(value) > _MAX_SAFE_INTEGER:
            raise ValueError(f"meta_v0.{field}: {value} is not a safe JavaScript integer")

        def change() -> None:
            meta = self._doc.get("meta_v0", type=Map)
            if value is None:
                meta.pop(field, None)
            else:
                meta[field] = value
        return self._server_change(change)

    def set_file_entry(self, key: str, entry: dict[str, Any]) -> bytes:
        """Write ``files_v0[key]`` (a ``Y.Map`` of file metadata, as clients write it) unless
        an entry with the same values is there; return the update (EMPTY_UPDATE if none)."""
        for k, v in entry.items():
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) > _MAX_SAFE_INTEGER:
                raise ValueError(f"files_v0.{key}.{k}: {v} is not a safe JavaScript integer")
        files = self._doc.get("files_v0", type=Map)
        current = files.get(key)
        if isinstance(current, Map) and _plain(current) == entry:
            return EMPTY_UPDATE

        def change() -> None:
            files[key] = Map(entry)
        return self._server_change(change)

    def _server_change(self, change: Callable[[], None]) -> bytes:
        self._captured = captured = list[bytes]()
        try:
            with self._doc.transaction(origin="server"):
                change()
        finally:
            self._captured = None
        for update in captured:
            self._remember(update)
        return captured[0] if captured else EMPTY_UPDATE

    def patch_file_entry(self, key: str, fields: dict[str, Any], *,
                         remove: Iterable[str] = (), create: bool = True) -> bytes:
        """Set some fields of ``files_v0[key]`` (None deletes a field), creating the entry if
        there is none (unless ``create`` is false), and drop the entries named in ``remove``,
        in one transaction. Fields a client added (thumbnails, ...) stay. Returns the update
        (EMPTY_UPDATE if nothing changed): re-probing an unchanged file writes nothing."""
        for k, v in fields.items():
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) > _MAX_SAFE_INTEGER:
                raise ValueError(f"files_v0.{key}.{k}: {v} is not a safe JavaScript integer")
        files = self._doc.get("files_v0", type=Map)
        gone = [k for k in remove if k != key and k in files]
        current = files.get(key)
        exists = isinstance(current, Map)
        now = _plain(current) if exists else {}
        todo = {k: v for k, v in fields.items()
                if (k in now if v is None else k not in now or now[k] != v)}
        if not exists and not create:
            todo = {}
        if not gone and not todo and (exists or not create):
            return EMPTY_UPDATE

        def change() -> None:
            for k in gone:
                del files[k]
            if exists:
                for k, v in todo.items():
                    if v is None:
                        current.pop(k, None)
                    else:
                        current[k] = v
            elif create:
                files[key] = Map(todo)
        return self._server_change(change)


def merge_updates(updates: Sequence[bytes]) -> bytes:
    """One update holding all of ``updates`` (lossless, pending parts included): a burst of
    updates to one document goes to each live subscriber as one message."""
    if len(updates) == 1:
        return bytes(updates[0])
    return bytes(pycrdt.merge_updates(*updates))


def new_block_document(*, block_type: str, title: str = "") -> bytes:
    """First update of a block the server creates (a heap's root "index" block), laid out as a
    Heaper client would: ``meta_v0.type`` and a title of one ``<paragraph>``."""
    return new_server_block(block_type=block_type, title=title)[0]


def new_server_block(*, block_type: str, title: str, files: dict[str, dict[str, Any]] | None = None,
                     tags: Sequence[str] = ()) -> tuple[bytes, bytes, Projection]:
    """A block the server creates with known content (a scanned file or folder), laid out as
    :func:`new_block_document` plus ``files_v0`` entries and ``relations_v1`` tags, in one
    update. Returns (update, state vector, projection); the projection is the one
    :meth:`BlockDocument.project` reads from that update (a test holds them equal), built from
    what was written because reading it back costs three times the building (folder scans
    create thousands of these)."""
    files = files or {}
    doc: Doc = Doc()
    with doc.transaction(origin="server"):
        doc.get("meta_v0", type=Map)["type"] = block_type
        paragraph = XmlElement("paragraph", contents=[XmlText(title)] if title else [])
        doc.get("title_v0", type=XmlFragment).children.append(paragraph)
        if files:
            root = doc.get("files_v0", type=Map)
            for key, entry in files.items():
                root[key] = Map(entry)
        if tags:
            relations = doc.get("relations_v1", type=Map)
            for tag in tags:
                relations[tag] = Map({"type": "tag"})
    projection = Projection(
        type=block_type, title=title.replace("\n", " ").strip(), text="",
        tags=tuple(sorted(set(tags))), relations={t: {"type": "tag"} for t in tags},
        mentions=(), links=(), files={k: _plain(v) for k, v in files.items()}, apps={},
        deleted_at=None, permanently_deleted_at=None)
    return doc.get_update(), doc.get_state(), projection
