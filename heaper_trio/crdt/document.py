"""One block's Yjs document as the server holds it: apply, diff, state vectors, projection;
and building new block documents."""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import pycrdt
from pycrdt import Doc, Map, TransactionEvent, XmlElement, XmlFragment, XmlText

from heaper_trio.crdt.codec import (
    EMPTY_UPDATE,
    InvalidUpdate,
    _is_pycrdt_failure,
    _parse_state_vector,
    check_state_vector,
)
from heaper_trio.crdt.incremental import LiveProjection
from heaper_trio.crdt.projection import Projection, _millis, _or_default, _plain
from heaper_trio.protocol.wire import read_var_uint
from heaper_trio.records.text_segments import lazy

_MAX_SAFE_INTEGER = 2**53 - 1  # JS numbers are exact up to here (lib0's varUint limit too)
_SIZE_EXACT_BELOW = 65536  # BlockDocument.size encodes documents smaller than this
_REBASE_SLACK = 16384  # bytes of updates, beyond an eighth of the base, before re-encoding


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
        self._doc: Doc = self._observed_doc()
        self._live: LiveProjection | None = None  # observers set up at the first projection

    def _observed_doc(self) -> Doc:
        """A new pycrdt document whose transactions this one counts. Observed through a weak
        reference on pycrdt's native document: ``Doc.observe`` makes a reference cycle through
        native code (document, callback, document) that Python's collector cannot see, so
        every document ever loaded stayed in memory, evicted or not, and each full
        collection walked them all again."""
        doc: Doc = Doc()
        me = weakref.ref(self)

        def changed(event: TransactionEvent) -> None:
            block = me()
            if block is not None:
                block._on_transaction(event)

        self._subscription = doc._doc.observe(changed)  # dropped, it would unsubscribe
        return doc

    def _on_transaction(self, event: TransactionEvent) -> None:
        # Only called for transactions that changed something; the event dies with the callback
        self._changes += 1
        if self._captured is not None:
            self._captured.append(bytes(event.update))

    def _remember(self, update: bytes) -> None:
        self._since.append(update)
        self._since_size += len(update)
        # Renewed after an eighth of the base in updates: re-encoding costs what the document
        # weighs, so per byte pushed it costs a bounded amount, and :attr:`size` stays close.
        if self._since_size > len(self._base) // 8 + _REBASE_SLACK:
            self._rebase()

    def _rebase(self) -> bytes:
        self.has_pending()  # prunes `_suspects` to what the new base lacks
        self._base, self._since, self._since_size = self._doc.get_update(), self._suspects[:], 0
        return self._base

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
                self._doc = self._observed_doc()
                for done in [self._base, *self._since]:
                    self._doc.apply_update(done)
            raise InvalidUpdate(f"update does not apply as Yjs v1: {exc}") from exc
        if parked := (update not in self._suspects and not self._integrated(update)):
            self._suspects.append(update)
        if (suspects or parked) and self._live is not None:
            self._live.forget()  # pending structs move without events (crdt/incremental.py)
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

    def reading(self) -> AbstractContextManager[object]:
        """One pycrdt transaction for several reads (each opens and commits its own
        otherwise): ``with doc.reading(): doc.state_vector(); doc.diff(sv)``. Reads only."""
        return self._doc.transaction()

    def snapshot(self) -> bytes:
        """The document re-encoded, smaller and faster to load than its log. Never replace the
        log with it while :meth:`has_pending`: yrs leaves pending structs and deletions out of
        this encoding, so they would be lost with the log rows carrying them."""
        return self._rebase()  # measured: :attr:`size` is exact again

    @property
    def size(self) -> int:
        """The length of :meth:`full_state`: exact below 64 KiB; above, an estimate: the last
        encoding's length plus the updates applied since, renewed once those reach an eighth of
        it plus 16 KiB. It can run high (an update that adds little) or low: an update deleting
        many scattered characters is small, while each deletion splits a run of the encoding
        (review: 27% low after 15 KB of such updates to a 200 KB text). Only ``usage`` shows it;
        no limit is enforced on it. Measuring a large document exactly means encoding it (30 ms
        for 8.6 MB) on every push."""
        estimate = len(self._base) + self._since_size
        return len(self.full_state()) if estimate < _SIZE_EXACT_BELOW else estimate

    def project(self) -> Projection:
        """The query and search columns; never raises on a document a client can produce. Each
        root is read on its own (one of another type is cast, mostly to empty), one that fails
        gives its field's default, and relation or file entries that are not maps are left out.
        Only what changed since the last projection is read again (``incremental``). Read in
        one transaction: pycrdt opens and commits one per read otherwise (a typed word's
        projection made seven, a fifth of its cost)."""
        with self.reading():
            return self._project()

    def _project(self) -> Projection:
        live = self._live_projection()
        meta = live.map_root("meta_v0")
        relations = live.map_root("relations_v1")
        relations = {k: v for k, v in relations.items() if isinstance(v, dict)}
        files = live.map_root("files_v0")
        title = live.xml_root("title_v0")
        content = live.xml_root("content_v0")
        block_type = meta.get("type")
        return Projection(
            type=block_type if isinstance(block_type, str) else None,
            title=title.text.replace("\n", " ").strip(),  # the lines joined by spaces
            text=lazy(content.body),  # joined when read (``records/text_segments``)
            tags=tuple(sorted(k for k, v in relations.items() if v.get("type") == "tag")),
            relations=relations,
            mentions=tuple(sorted(title.mentions | content.mentions)),
            links=tuple(sorted(title.links | content.links)),
            files={k: v for k, v in files.items() if isinstance(v, dict)},
            apps=live.map_root("apps_v0"),
            deleted_at=_millis(meta.get("deleted_at")),
            permanently_deleted_at=_millis(meta.get("permanently_deleted_at")),
        )

    def _live_projection(self) -> LiveProjection:
        if self._live is None or self._live.doc is not self._doc:
            self._live = LiveProjection(self._doc)
        return self._live

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

    def patch_file_entry(
        self, key: str, fields: dict[str, Any], *, remove: Iterable[str] = (), create: bool = True
    ) -> bytes:
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
        todo = {
            k: v
            for k, v in fields.items()
            if (k in now if v is None else k not in now or now[k] != v)
        }
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


def new_server_block(
    *,
    block_type: str,
    title: str,
    files: dict[str, dict[str, Any]] | None = None,
    tags: Sequence[str] = (),
) -> tuple[bytes, bytes, Projection]:
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
        type=block_type,
        title=title.replace("\n", " ").strip(),
        text="",
        tags=tuple(sorted(set(tags))),
        relations={t: {"type": "tag"} for t in tags},
        mentions=(),
        links=(),
        files={k: _plain(v) for k, v in files.items()},
        apps={},
        deleted_at=None,
        permanently_deleted_at=None,
    )
    return doc.get_update(), doc.get_state(), projection
