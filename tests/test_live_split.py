"""heaper_trio.protocol.split: pieces of a Yjs update, applied in order, give the same document.

Documents are built by several pycrdt clients exchanging updates (so structs name structs of
other clients), with every content type pycrdt writes. Each piece must integrate as it arrives
(nothing parked as pending) and respect the size bound unless it holds a single struct or
delete range. An npm yjs round trip covers what only Yjs writes: strings split inside a
surrogate pair, XmlHook, undefined, and the order yjs lists clients in.
"""

from __future__ import annotations

import base64
import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pycrdt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText

from heaper_trio.protocol.split import split_update
from heaper_trio.protocol.wire import Decoder, var_uint

INTEROP = Path(__file__).resolve().parent / "interop"
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- documents ------------------------------------------------------------------------------

words = st.sampled_from(["a", "hello ", "é", "日本", "😀", "x😀y", "👩‍👩‍👧", "\n", "𝔘𝔫𝔦"])
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.integers(2**53, 2**62),  # written as BigInt
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)
KINDS = [
    "text_insert", "text_delete", "text_format", "text_embed", "map_set", "map_nested",
    "map_delete", "array_insert", "array_delete", "xml_paragraph", "xml_text", "xml_attribute",
    "xml_delete", "sync", "sync",
]  # fmt: skip
operations = st.lists(
    st.tuples(st.integers(0, 2), st.sampled_from(KINDS), st.integers(0, 999), words, values),
    min_size=5,
    max_size=80,
)


def _boundaries(text: Text) -> list[int]:
    """Offsets where an edit may go: pycrdt indexes text by UTF-8 byte (an embed counts 1),
    and an offset inside a character makes yrs panic.
    """
    out, at = [0], 0
    for chunk, _attrs in text.diff():
        for size in [len(c.encode()) for c in chunk] if isinstance(chunk, str) else [1]:
            at += size
            out.append(at)
    return out


def _offset(text: Text, seed: int) -> int:
    bounds = _boundaries(text)
    return bounds[seed % len(bounds)]


def _char_range(text: Text, seed: int) -> tuple[int, int]:
    bounds = _boundaries(text)
    start = seed % len(bounds)
    return bounds[start], bounds[min(len(bounds) - 1, start + 1 + seed % 4)]


def _apply(docs: list[Doc], doc_index: int, kind: str, seed: int, word: str, value: Any) -> None:
    doc = docs[doc_index]
    text, xml = doc.get("text", type=Text), doc.get("xml", type=XmlFragment)
    fields, items = doc.get("map", type=Map), doc.get("array", type=Array)
    paragraphs = list(xml.children)
    if kind == "text_insert":
        text.insert(_offset(text, seed), word)
    elif kind == "text_delete" and len(text):
        start, stop = _char_range(text, seed)
        del text[start:stop]
    elif kind == "text_format" and len(text):
        start, stop = _char_range(text, seed)
        text.format(start, stop, {"bold": True} if seed % 2 else {"bold": None, "i": seed})
    elif kind == "text_embed":
        text.insert_embed(_offset(text, seed), {"image": word})
    elif kind == "map_set":
        fields[f"k{seed % 7}"] = value
    elif kind == "map_nested":
        fields[f"k{seed % 7}"] = Map({"inner": value, "list": Array([word, seed])})
    elif kind == "map_delete":
        fields.pop(f"k{seed % 7}", None)
    elif kind == "array_insert":
        items.insert(seed % (len(items) + 1), value)
    elif kind == "array_delete" and len(items):
        del items[seed % len(items)]
    elif kind == "xml_paragraph":
        xml.children.insert(
            seed % (len(paragraphs) + 1),
            XmlElement("p", {"level": str(seed % 3)}, [XmlText(word)]),
        )
    elif kind == "xml_text" and paragraphs:
        leaf = paragraphs[seed % len(paragraphs)].children[0]
        leaf.insert(_offset(leaf, seed), word, {"em": bool(seed % 2)})
    elif kind == "xml_attribute" and paragraphs:
        paragraphs[seed % len(paragraphs)].attributes[f"a{seed % 3}"] = word
    elif kind == "xml_delete" and paragraphs:
        del xml.children[seed % len(paragraphs)]
    elif kind == "sync":
        other = docs[seed % len(docs)]
        other.apply_update(doc.get_update(other.get_state()))


def build(ops: list[tuple[int, str, int, str, Any]]) -> Doc:
    """Three clients editing, exchanging now and then; merged into the first at the end."""
    docs = [Doc(client_id=1000 + i * 77777) for i in range(3)]
    for op in ops:
        _apply(docs, *op)
    for other in docs[1:]:
        docs[0].apply_update(other.get_update(docs[0].get_state()))
    return docs[0]


def _tree(node: Any) -> Any:
    if isinstance(node, XmlText):
        return [[run, dict(attrs or {})] for run, attrs in node.diff()]
    if isinstance(node, XmlElement):
        return [node.tag, dict(node.attributes), [_tree(c) for c in node.children]]
    return [_tree(c) for c in node.children]


def content(doc: Doc) -> Any:
    """Every root as plain data (text with its marks and embeds, XML as a tree)."""
    return (
        [[run, dict(attrs or {})] for run, attrs in doc.get("text", type=Text).diff()],
        doc.get("map", type=Map).to_py(),
        doc.get("array", type=Array).to_py(),
        _tree(doc.get("xml", type=XmlFragment)),
    )


def clocks(state: bytes) -> dict[int, int]:
    """A state vector as a dict: yrs writes its entries in hash-map order."""
    d = Decoder(state)
    return {d.read_var_uint(): d.read_var_uint() for _ in range(d.read_var_uint())}


def structs_left(update: bytes, state: bytes) -> bool:
    """True if ``update`` holds structs a document at ``state`` lacks: it parked them."""
    return pycrdt.get_update(update, state)[0] != 0


def single_unit(piece: bytes) -> bool:
    """One struct, or one delete range and no structs: a piece that may exceed the bound."""
    d = Decoder(piece)
    clients = d.read_var_uint()
    if clients == 1:
        return d.read_var_uint() == 1
    return (
        clients == 0 and d.read_var_uint() == 1 and (d.read_var_uint(), d.read_var_uint())[1] == 1
    )


def check_pieces(update: bytes, max_bytes: int) -> list[bytes]:
    pieces = split_update(update, max_bytes)
    whole: Doc = Doc()
    whole.apply_update(update)
    rebuilt: Doc = Doc()
    for piece in pieces:
        assert len(piece) <= max_bytes or single_unit(piece), (len(piece), max_bytes)
        rebuilt.apply_update(piece)
        assert not structs_left(piece, rebuilt.get_state())  # integrated as it came
    assert clocks(rebuilt.get_state()) == clocks(whole.get_state())
    assert content(rebuilt) == content(whole)
    assert rebuilt.get_update(whole.get_state()) == whole.get_update(whole.get_state())  # same ds
    return pieces


# --- properties -----------------------------------------------------------------------------


@FAST
@given(operations, st.one_of(st.integers(16, 200), st.integers(16, 4096)))
def test_pieces_rebuild_the_document(ops: list[Any], max_bytes: int) -> None:
    update = build(ops).get_update()
    pieces = check_pieces(update, max_bytes)
    if len(update) <= max_bytes:
        assert pieces == [update]


@FAST
@given(operations, st.integers(1, 64), st.integers(16, 256))
def test_truncated_update_is_sent_whole(ops: list[Any], cut: int, max_bytes: int) -> None:
    update = build(ops).get_update()[:-cut]
    assert split_update(update, max_bytes) == [update]


@FAST
@given(st.binary(max_size=300), st.integers(1, 64))
def test_any_bytes_never_raise(data: bytes, max_bytes: int) -> None:
    pieces = split_update(data, max_bytes)
    assert pieces and all(isinstance(p, bytes) for p in pieces)


def test_small_update_is_returned_as_is() -> None:
    update = b"\x00\x00"
    assert split_update(update, 2)[0] is update


def test_pieces_follow_causality() -> None:
    """yrs lists clients by descending id, so an edit by a high id into a low id's text comes
    first in the update; cut there, it would wait as pending until the next piece.
    """
    low, high = Doc(client_id=1000), Doc(client_id=156554)
    low.get("text", type=Text).insert(0, "hello world " * 10)
    high.apply_update(low.get_update())
    high.get("text", type=Text).insert(5, "XYZ" * 20)
    low.apply_update(high.get_update(low.get_state()))
    low.get("text", type=Text).insert(6, "after")
    update = low.get_update()
    assert update[2:5] == var_uint(156554)  # the high id comes first
    assert len(check_pieces(update, 30)) > 3


def test_many_sessions() -> None:
    """As a block lives: each page load is a new client (random 32-bit id, five-byte varUint)
    typing into paragraphs that earlier sessions wrote, so most origins name other clients.
    """
    rng = random.Random(7)
    base: Doc = Doc(client_id=rng.getrandbits(32))
    base.get("xml", type=XmlFragment).children.append(XmlElement("p", {}, [XmlText("Start")]))
    for _ in range(40):
        session: Doc = Doc(client_id=rng.getrandbits(32))
        session.apply_update(base.get_update())
        xml = session.get("xml", type=XmlFragment)
        for _ in range(rng.randint(3, 12)):
            paragraphs = list(xml.children)
            if rng.random() < 0.15:
                xml.children.append(XmlElement("p", {"n": str(rng.random())}, [XmlText("new")]))
                continue
            leaf = rng.choice(paragraphs).children[0]
            at = _offset(leaf, rng.randrange(1000))
            for ch in rng.choice(["word ", "é ", "😀", "more text "]):
                leaf.insert(at, ch)
                at += len(ch.encode())
            if len(leaf) > 8 and rng.random() < 0.3:
                del leaf[0 : _boundaries(leaf)[1]]
        base.apply_update(session.get_update(base.get_state()))
    update = base.get_update()
    for max_bytes in (64, 300, 2000):
        assert len(check_pieces(update, max_bytes)) > 1


def test_one_big_struct_goes_alone() -> None:
    doc: Doc = Doc()
    doc.get("map", type=Map)["blob"] = b"x" * 5000
    doc.get("text", type=Text).insert(0, "small " * 40)
    pieces = check_pieces(doc.get_update(), 1000)
    assert any(len(p) > 5000 for p in pieces) and len(pieces) > 1


def test_delete_set_alone_is_cut_between_ranges() -> None:
    doc: Doc = Doc()
    text = doc.get("text", type=Text)
    text.insert(0, "ab" * 400)
    for i in range(399, 0, -2):  # every other character: 200 delete ranges
        del text[i : i + 1]
    update = doc.get_update()
    pieces = check_pieces(update, 64)
    assert sum(1 for p in pieces if p[0] == 0) > 1  # several delete-set-only pieces


def test_unsplittable_updates_are_sent_whole() -> None:
    doc: Doc = Doc(client_id=7)
    doc.get("text", type=Text).insert(0, "hello " * 30)
    doc.get("map", type=Map)["k"] = "v"
    update = doc.get_update()
    assert len(split_update(update, 40)) > 1
    header = bytes([1]) + var_uint(2) + var_uint(7) + var_uint(0)
    body = update[len(header) :]
    assert update.startswith(header)
    bad = [
        update + b"\x00",  # trailing bytes
        header + bytes([body[0] & 0xE0 | 11]) + body[1:],  # content type 11
        b"\x02" + update[1:-1] + update[1:],  # a client listed twice
        b"\x01" + bytes.fromhex("8080808080808010") + update[2:],  # a count of 2**53
    ]
    for update in bad:
        assert split_update(update, 40) == [update]


# --- npm yjs --------------------------------------------------------------------------------

BUILD = r"""
import * as Y from 'yjs'
let seed = 42
const rand = (n) => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n }
const docs = [1, 2, 3].map((id) => new Y.Doc({ gc: id !== 3 }))
docs.forEach((d, i) => { d.clientID = [4000000000, 5, 300][i] })
const words = ['a', 'hello ', '😀', 'x😀y', 'é', '日本', '\n']
for (let i = 0; i < 3000; i++) {
  const d = docs[rand(3)]
  const t = d.getText('text')
  const m = d.getMap('map')
  const x = d.getXmlFragment('xml')
  switch (rand(10)) {
    case 0: case 1: t.insert(rand(t.length + 1), words[rand(words.length)]); break  // may split a pair
    case 2: if (t.length) t.delete(rand(t.length), 1 + rand(3)); break
    case 3: if (t.length) t.format(rand(t.length), 1 + rand(4), { bold: rand(2) ? true : null }); break
    case 4: m.set('k' + rand(9), [undefined, null, 1.5, 2 ** 40, -7, BigInt(rand(9)) ** 30n, 'v',
      new Uint8Array([1, 2, rand(255)]), { a: [1, { b: undefined }] }, new Y.Doc()][rand(10)]); break
    case 5: m.set('n' + rand(3), new Y.Map([['in', rand(100)]])); break
    case 6: x.insert(rand(x.length + 1), [rand(4) ? new Y.XmlElement('p') : new Y.XmlHook('hook')]); break
    case 7: { const e = x.length ? x.get(rand(x.length)) : null
      if (e instanceof Y.XmlElement) { e.setAttribute('a' + rand(3), 'v' + rand(9)); e.insert(0, [new Y.XmlText('t')]) }
      break }
    case 8: if (x.length && rand(3) === 0) x.delete(rand(x.length)); break
    default: { const o = docs[rand(3)]; Y.applyUpdate(o, Y.encodeStateAsUpdate(d, Y.encodeStateVector(o))) }
  }
}
docs.forEach((o) => docs.forEach((d) => Y.applyUpdate(o, Y.encodeStateAsUpdate(d, Y.encodeStateVector(o)))))
process.stdout.write(Buffer.from(Y.encodeStateAsUpdate(docs[2])).toString('base64'))
"""

APPLY = r"""
import * as Y from 'yjs'
import { readFileSync } from 'node:fs'
const input = JSON.parse(readFileSync(0, 'utf8'))
const unb64 = (s) => new Uint8Array(Buffer.from(s, 'base64'))
const view = (d) => JSON.stringify([d.getText('text').toDelta(), d.getMap('map').toJSON(),
  d.getXmlFragment('xml').toString(), Array.from(Y.encodeStateVector(d))])
const whole = new Y.Doc()
Y.applyUpdate(whole, unb64(input.whole))
const out = []
for (const pieces of input.splits) {
  const doc = new Y.Doc()
  let parked = 0
  for (const p of pieces) {
    Y.applyUpdate(doc, unb64(p))
    if (doc.store.pendingStructs || doc.store.pendingDs) parked++
  }
  const same = view(doc) === view(whole) && Y.equalSnapshots(Y.snapshot(doc), Y.snapshot(whole))
  out.push({ same, parked })
}
process.stdout.write(JSON.stringify(out))
"""


def _node(script: str, stdin: str = "") -> str:
    node = shutil.which("node")
    if not node or not (INTEROP / "node_modules" / "yjs").is_dir():
        pytest.skip("needs node and `npm ci` in tests/interop")
    run = subprocess.run(
        [node, "--input-type=module", "-e", script],
        cwd=INTEROP, input=stdin, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return run.stdout


def test_yjs_updates_split_and_rebuild_in_yjs() -> None:
    update = base64.b64decode(_node(BUILD))
    splits = [split_update(update, n) for n in (64, 500, 4000)]
    assert all(len(s) > 1 for s in splits)
    for max_bytes, pieces in zip((64, 500, 4000), splits, strict=True):
        assert all(len(p) <= max_bytes or single_unit(p) for p in pieces)
    payload = {
        "whole": base64.b64encode(update).decode(),
        "splits": [[base64.b64encode(p).decode() for p in s] for s in splits],
    }
    results = json.loads(_node(APPLY, json.dumps(payload)))
    assert results == [{"same": True, "parked": 0}] * 3
