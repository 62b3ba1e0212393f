"""Cut a Yjs v1 update into pieces of bounded size that, applied in order, give the same
document as the whole.

Why: y-websocket and Hocuspocus clients close a connection that has been silent for 30 s, and a
multi-megabyte initial sync on a slow link is one silent message; the client reconnects, asks
again, and never gets there (yjs/yhub#55). Sent as several updates, the state arrives in steps
and each one resets the client's timer.

The v1 format (yjs ``src/utils/encoding.js``, ``src/structs/*``) has no lengths around structs,
so finding their boundaries means reading every field of every struct. Pieces are cut at struct
boundaries and ordered so that each struct comes after the structs of other clients it names
(origin, right origin, parent), as Yjs's ``Item.getMissing`` requires: a receiver integrates
every piece as it arrives instead of parking it as pending. The delete set comes last.

Splitting is an optimisation, never a new source of errors: on anything unexpected (a content
type or type ref this code does not know, truncated data, trailing bytes, a client listed twice)
:func:`split_update` returns the update whole.

Pure Python, no pycrdt. Cost is per struct, not per byte: about 100 ms per MB of a document
typed over many sessions and 200 ms per MB in the worst case of one-letter edits scattered by
several clients (CPython 3.11). Under the length check it costs nothing; above a megabyte or
so, run it off the event loop or keep its result until the document changes.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

from heaper_trio.protocol.wire import MAX_VAR_UINT, read_var_uint, var_uint

_MAX_ANY_DEPTH = 100  # lib0 any nesting; deeper is refused (Yjs would recurse, we bail)
# Yjs type refs: YArray, YMap, YText, YXmlElement (named), YXmlFragment, YXmlHook (named), YXmlText
_NAMED_TYPE_REFS = (3, 5)
_MAX_TYPE_REF = 6


class _Unsplittable(Exception):
    """Internal: the update is not one this module can cut; send it whole."""


def _skip_any(data: bytes, pos: int, depth: int = 0) -> int:
    """Past one lib0 ``any`` value (``readAny``); only its extent matters here."""
    tag = data[pos]
    pos += 1
    if tag == 119 or tag == 116:  # string, Uint8Array: varUint length and bytes
        length, pos = read_var_uint(data, pos)
        return pos + length
    if tag >= 126 or tag == 121 or tag == 120:  # undefined, null, false, true
        return pos
    if tag == 125:  # varInt: continuation bit 0x80 in every byte
        while data[pos] & 0x80:
            pos += 1
        return pos + 1
    if tag == 124:
        return pos + 4  # float32
    if tag == 123 or tag == 122:
        return pos + 8  # float64, bigint64
    if depth >= _MAX_ANY_DEPTH or tag < 116:
        raise _Unsplittable(f"lib0 any tag {tag} or nesting too deep")
    count, pos = read_var_uint(data, pos)
    for _ in range(count):
        if tag == 118:  # object: key string, then value
            length, pos = read_var_uint(data, pos)
            pos += length
        pos = _skip_any(data, pos, depth + 1)
    return pos


def _utf16_length(raw: bytes) -> int:
    """Clock length of a string item: JavaScript ``string.length``. Encoders write a lone
    surrogate (an item split inside a pair) as U+FFFD, so strict UTF-8 always decodes.
    """
    if raw.isascii():
        return len(raw)
    return len(raw.decode("utf-8").encode("utf-16-le", "surrogatepass")) // 2


@dataclass(slots=True)
class _Client:
    """One client's structs in the update: byte offsets and clocks of struct starts (plus one
    past the end), and the structs that name another client's struct: struct index, client
    and clock in three lists (no tuple per entry for the garbage collector to track).

    A client is known by its varUint bytes: comparing those is cheaper than decoding five
    bytes, and Yjs and yrs write the one shortest form (another form only loses ordering).
    """

    client: bytes
    offsets: list[int]
    clocks: list[int]
    foreign: list[int]  # struct index
    foreign_client: list[bytes]
    foreign_clock: list[int]
    done: int = 0  # structs already placed in a piece
    checked: int = 0  # entries of `foreign` known to be satisfied


# Where varUints end: 0 for a byte below 0x80 (the last of a varUint), 1 for the others
_ENDS = bytes(0 if b < 0x80 else 1 for b in range(256))


def _read_structs(data: bytes, pos: int, count: int) -> tuple[list[_Client], int]:
    """The struct section after its client count; returns the clients and the end position.

    The hot loop of this module: a struct is often twenty bytes, most of them IDs, so an ID's
    client is cut out with a C-speed search for the end of its varUint, not decoded.
    """
    find_end = data.translate(_ENDS).index  # ValueError past the end
    clients: list[_Client] = []
    seen: set[int] = set()
    for _ in range(count):
        num_structs, pos = read_var_uint(data, pos)
        own_start = pos
        client, pos = read_var_uint(data, pos)
        if client in seen:
            raise _Unsplittable("a client is listed twice")  # Yjs would keep the last only
        seen.add(client)
        own = data[own_start:pos]
        clock, pos = read_var_uint(data, pos)
        offsets: list[int] = []
        clocks: list[int] = []
        foreign: list[int] = []
        foreign_client: list[bytes] = []
        foreign_clock: list[int] = []
        for index in range(num_structs):
            offsets.append(pos)
            clocks.append(clock)
            info = data[pos]
            ref = info & 0x1F
            pos += 1
            if ref == 0 or ref == 10:  # GC, Skip: just a length
                length, pos = read_var_uint(data, pos)
                clock += length
                continue
            ids = (info >> 6) - (info >> 7)  # origin and/or right origin: 0, 1 or 2 IDs
            if not ids:  # no origin to copy the parent from: a root name or a type item's ID
                root, pos = read_var_uint(data, pos)
                if root == 1:
                    length, pos = read_var_uint(data, pos)
                    pos += length
                else:
                    ids = 1
            for _ in range(ids):
                end = find_end(0, pos) + 1
                key = data[pos:end]
                if key == own:
                    pos = find_end(0, end) + 1
                else:
                    at = data[end]
                    if at < 0x80:
                        pos = end + 1
                    else:
                        at, pos = read_var_uint(data, end)
                    foreign.append(index)
                    foreign_client.append(key)
                    foreign_clock.append(at)
            if not info & 0xC0 and info & 0x20:  # parentSub (map key)
                length, pos = read_var_uint(data, pos)
                pos += length
            if ref == 4:  # String, inline: most structs are text
                size = data[pos]
                if size < 0x80:
                    pos += 1
                else:
                    size, pos = read_var_uint(data, pos)
                raw = data[pos : pos + size]
                if len(raw) != size:
                    raise _Unsplittable("string past the end")
                clock += size if raw.isascii() else _utf16_length(raw)
                pos += size
            else:
                pos, length = _skip_content(data, pos, ref)
                clock += length
        offsets.append(pos)
        clocks.append(clock)
        if clock > MAX_VAR_UINT:
            raise _Unsplittable("clock exceeds 53 bits")
        if num_structs:
            clients.append(_Client(own, offsets, clocks, foreign, foreign_client, foreign_clock))
    if pos > len(data):
        raise _Unsplittable("structs run past the end")
    return clients, pos


def _skip_content(data: bytes, pos: int, ref: int) -> tuple[int, int]:
    """Past an item's content (yjs ``contentRefs``) other than a string, read inline; returns
    the position and the clock length.
    """
    if ref == 1:  # Deleted
        return read_var_uint(data, pos)[::-1]
    if ref == 2 or ref == 8:  # JSON strings, lib0 anys
        length, pos = read_var_uint(data, pos)
        for _ in range(length):
            if ref == 2:
                size, pos = read_var_uint(data, pos)
                pos += size
            else:
                pos = _skip_any(data, pos)
        return pos, length
    if ref == 3 or ref == 5 or ref == 9:  # Binary, Embed, Doc (guid, then any options)
        size, pos = read_var_uint(data, pos)
        pos += size
        return (_skip_any(data, pos) if ref == 9 else pos), 1
    if ref == 6:  # Format: key, JSON value
        size, pos = read_var_uint(data, pos)
        size, pos = read_var_uint(data, pos + size)
        return pos + size, 1
    if ref == 7:  # Type
        type_ref, pos = read_var_uint(data, pos)
        if type_ref > _MAX_TYPE_REF:
            raise _Unsplittable(f"unknown type ref {type_ref}")
        if type_ref in _NAMED_TYPE_REFS:
            size, pos = read_var_uint(data, pos)
            pos += size
        return pos, 1
    raise _Unsplittable(f"unknown content type {ref}")


def _read_delete_set(data: bytes, pos: int) -> list[tuple[int, list[int]]]:
    """The delete set: per client, the client and the offsets where its ranges start and end.
    It must end the update: Yjs ignores trailing bytes, but they hint at a v2 update.
    """
    count, pos = read_var_uint(data, pos)
    out: list[tuple[int, list[int]]] = []
    for _ in range(count):
        client, pos = read_var_uint(data, pos)
        ranges, pos = read_var_uint(data, pos)
        offsets = [pos]
        for _ in range(ranges):
            _, pos = read_var_uint(data, pos)
            _, pos = read_var_uint(data, pos)
            offsets.append(pos)
        if ranges:
            out.append((client, offsets))
    if pos != len(data):
        raise _Unsplittable("trailing bytes after the delete set")
    return out


def _causal_runs(clients: list[_Client]) -> list[tuple[_Client, int, int]]:
    """Runs (client, first struct, end) in an order where every struct follows the structs of
    this update that it names, found depth-first as Yjs's ``integrateStructs`` does: a struct
    that names an unplaced struct of another client first places that client up to it.
    Causality makes such an order exist (a struct names only structs that existed when it was
    made); a name pointing outside the update cannot be helped by waiting, and a cycle (only
    in forged data) is broken where it is found.
    """
    by_id = {c.client: c for c in clients}
    runs: list[tuple[_Client, int, int]] = []
    on_stack: set[bytes] = set()
    for root in clients:
        stack = [(root, len(root.offsets) - 1)]
        on_stack.add(root.client)
        while stack:
            c, goal = stack[-1]
            foreign, j, end = c.foreign, c.checked, goal
            holder = None
            while j < len(foreign) and foreign[j] < goal:
                index, other, at = foreign[j], c.foreign_client[j], c.foreign_clock[j]
                holder = by_id.get(other)
                if (
                    holder is not None
                    and holder.clocks[holder.done] <= at < holder.clocks[-1]
                    and other not in on_stack
                ):
                    end = index
                    break
                holder = None
                j += 1
            c.checked = j
            if end > c.done:
                runs.append((c, c.done, end))
                c.done = end
            if holder is None:
                stack.pop()
                on_stack.discard(c.client)
            else:
                stack.append((holder, bisect_right(holder.clocks, at)))
                on_stack.add(holder.client)
    return runs


@dataclass
class _Packer:
    """Fills pieces with runs of structs, cutting a run where a piece would overflow."""

    data: bytes
    max_bytes: int
    count_size: int  # bytes for the piece's client count, at most
    pieces: list[bytes] = field(default_factory=list)
    sections: dict[bytes, list[int]] = field(default_factory=dict)  # client -> [first, end]
    clients: dict[bytes, _Client] = field(default_factory=dict)
    size: int = 0

    def __post_init__(self) -> None:
        self.size = self.count_size + 1  # and the empty delete set

    def add(self, c: _Client, first: int, end: int) -> None:
        offsets = c.offsets
        while first < end:
            section = self.sections.get(c.client)
            if section is not None and section[1] != first:
                self.flush()  # not contiguous with what the piece holds (cannot happen)
                continue
            header = 0
            if section is None:
                header = len(c.client) + len(var_uint(c.clocks[first]))
                header += len(var_uint(len(offsets) - 1))  # bounds the struct count
            room = self.max_bytes - self.size - header
            stop = min(bisect_right(offsets, offsets[first] + room, first, end + 1) - 1, end)
            if stop <= first:
                if self.sections:
                    self.flush()
                    continue
                stop = first + 1  # one struct bigger than a piece: it goes alone
            if section is None:
                self.sections[c.client] = [first, stop]
                self.clients[c.client] = c
            else:
                section[1] = stop
            self.size += header + offsets[stop] - offsets[first]
            first = stop
            if first < end:
                self.flush()

    def flush(self) -> None:
        if not self.sections:
            return
        parts = [var_uint(len(self.sections))]
        for client, (first, end) in self.sections.items():
            c = self.clients[client]
            parts += (var_uint(end - first), client, var_uint(c.clocks[first]))
            parts.append(self.data[c.offsets[first] : c.offsets[end]])
        parts.append(b"\x00")
        self.pieces.append(b"".join(parts))
        self.sections, self.clients = {}, {}
        self.size = self.count_size + 1


def _delete_set_pieces(
    data: bytes, ds_start: int, ds: list[tuple[int, list[int]]], max_bytes: int
) -> list[bytes]:
    """The delete set as updates with no structs, cut between ranges if it is too big."""
    whole = b"\x00" + data[ds_start:]
    if len(whole) <= max_bytes or not ds:
        return [whole] if ds else []
    pieces: list[bytes] = []
    entries: list[bytes] = []
    empty = size = 1 + len(var_uint(len(ds)))  # no structs, client count
    for client, offsets in ds:
        first, last = 0, len(offsets) - 1
        while first < last:
            header = len(var_uint(client)) + len(var_uint(last - first))
            room = max_bytes - size - header
            stop = min(bisect_right(offsets, offsets[first] + room, first, last + 1) - 1, last)
            if stop <= first and entries:
                pieces.append(b"\x00" + var_uint(len(entries)) + b"".join(entries))
                entries, size = [], empty
                continue
            stop = max(stop, first + 1)
            ranges = data[offsets[first] : offsets[stop]]
            entries.append(var_uint(client) + var_uint(stop - first) + ranges)
            size += header + len(ranges)
            first = stop
    if entries:
        pieces.append(b"\x00" + var_uint(len(entries)) + b"".join(entries))
    return pieces


def split_update(update: bytes, max_bytes: int) -> list[bytes]:
    """Yjs v1 updates of at most ``max_bytes`` each (a single struct or delete range that is
    bigger goes alone) which, applied in order, have the effect of ``update``. ``[update]``
    when it is small enough already, or when it cannot be cut.
    """
    if len(update) <= max_bytes:
        return [update]
    data = bytes(update)
    try:
        count, pos = read_var_uint(data, 0)
        clients, ds_start = _read_structs(data, pos, count)
        ds = _read_delete_set(data, ds_start)
        packer = _Packer(data, max_bytes, len(var_uint(len(clients))))
        for c, first, end in _causal_runs(clients):
            packer.add(c, first, end)
        packer.flush()
    except (_Unsplittable, IndexError, ValueError, RecursionError):
        return [update]
    pieces = packer.pieces
    tail = _delete_set_pieces(data, ds_start, ds, max_bytes)
    if pieces and len(tail) == 1 and len(pieces[-1]) - 2 + len(tail[0]) <= max_bytes:
        pieces[-1] = pieces[-1][:-1] + tail[0][1:]  # the delete set in place of the empty one
    else:
        pieces += tail
    return pieces if len(pieces) > 1 else [update]


def decodes_exactly(update: bytes) -> bool:
    """True when ``update`` is one whole Yjs v1 update and nothing else: every struct and the
    delete set read, and the last byte is the delete set's. yrs and Yjs read such a prefix and
    ignore what follows, so the server checks this before it stores anything a client sent.
    What the splitter cannot read is refused too: a client listed twice (Yjs keeps one of the
    two, so the bytes mean different things to different readers), an unknown content or type
    ref (no Yjs client can read it), varUints past 53 bits, strings that are not UTF-8.
    """
    data = bytes(update)
    try:
        count, pos = read_var_uint(data, 0)
        _, end = _read_structs(data, pos, count)
        _read_delete_set(data, end)
    except (_Unsplittable, IndexError, ValueError, RecursionError):
        return False
    return True
