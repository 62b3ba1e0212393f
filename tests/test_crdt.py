"""heaper_trio.crdt: projection, apply/diff, pending detection, strict decoding, convergence.

Client documents are built with pycrdt the way y-prosemirror lays out a Heaper block (paragraph
elements holding XmlText, inline ``reference`` / ``pagelink`` elements), so the projection is
checked against realistic input. Only tests may import pycrdt besides heaper_trio.crdt.
"""

from __future__ import annotations

import base64
import gc
import os
import random
import weakref
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText

from heaper_trio.crdt import (
    EMPTY_STATE_VECTOR,
    BlockDocument,
    InvalidUpdate,
    Projection,
    check_state_vector,
    decode_b64,
    encode_b64,
    new_block_document,
)
from heaper_trio.errors import Unprocessable

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Recorder:
    """A client Doc that keeps every update it makes, as a Heaper client would send them."""

    def __init__(self, doc: Doc | None = None) -> None:
        self.doc: Doc = doc if doc is not None else Doc()
        self.updates: list[bytes] = []
        self._sub = self.doc.observe(lambda event: self.updates.append(bytes(event.update)))


def realistic_block() -> Recorder:
    client = Recorder()
    doc = client.doc
    with doc.transaction():
        title = doc.get("title_v0", type=XmlFragment)
        para = title.children.append(XmlElement("paragraph"))
        para.children.append(XmlText("Meeting with "))
        para.children.append(
            XmlElement("reference", {"id": "person-1", "label": "Alice", "type": "mention"})
        )
        para.children.append(XmlText(" about "))
        para.children.append(XmlElement("pagelink", {"blockKey": "page-9"}))
        bold = para.children.append(XmlText(" plans"))
        bold.format(1, 6, {"bold": True})
    with doc.transaction():
        content = doc.get("content_v0", type=XmlFragment)
        content.children.append(XmlElement("heading", {"level": "1"}, [XmlText("Agenda")]))
        first = content.children.append(XmlElement("paragraph", contents=[XmlText("First point")]))
        first.children[0].format(0, 5, {"italic": True})
        second = content.children.append(XmlElement("paragraph"))
        second.children.append(XmlText("See "))
        second.children.append(XmlElement("reference", {"id": "person-2", "label": "Bob"}))
        second.children.append(XmlElement("pagelink", {"blockKey": "page-3", "label": "Roadmap"}))
        second.children.append(XmlElement("reference", {"id": "person-1", "label": "Alice"}))
    with doc.transaction():
        relations = doc.get("relations_v1", type=Map)
        relations["tag-b"] = Map({"type": "tag", "created_at": 1700000000000})
        relations["tag-a"] = Map({"type": "tag"})
        relations["parent-1"] = Map({"type": "parent", "order": Array([1, 2])})
        files = doc.get("files_v0", type=Map)
        files["abc123:2048"] = Map(
            {"hash": "abc123", "name": "a.png", "mime_type": "image/png", "file_size": 2048}
        )
        doc.get("apps_v0", type=Map)["board"] = Map({"app": "kanban", "filter": {"tag": "x"}})
        meta = doc.get("meta_v0", type=Map)
        meta["type"] = "document"
        meta["deleted_at"] = 1700000000123
    return client


def full(doc: Doc) -> BlockDocument:
    return BlockDocument.load(doc.get_update())


def test_projection_of_a_realistic_block() -> None:
    projection = full(realistic_block().doc).project()
    assert projection == Projection(
        type="document",
        title="Meeting with Alice about  plans",
        text="Agenda\nFirst point\nSee BobRoadmapAlice",
        tags=("tag-a", "tag-b"),
        relations={
            "tag-b": {"type": "tag", "created_at": 1700000000000},
            "tag-a": {"type": "tag"},
            "parent-1": {"type": "parent", "order": [1, 2]},
        },
        mentions=("person-1", "person-2"),
        links=("page-3", "page-9"),
        files={
            "abc123:2048": {
                "hash": "abc123",
                "name": "a.png",
                "mime_type": "image/png",
                "file_size": 2048,
            }
        },
        apps={"board": {"app": "kanban", "filter": {"tag": "x"}}},
        deleted_at=1700000000123,
        permanently_deleted_at=None,
    )
    assert isinstance(projection.deleted_at, int)
    assert isinstance(projection.files["abc123:2048"]["file_size"], int)


def test_projection_of_nested_blocks_and_empty_paragraphs() -> None:
    doc: Doc = Doc()
    content = doc.get("content_v0", type=XmlFragment)
    item = XmlElement("listItem", contents=[XmlElement("paragraph", contents=[XmlText("one")])])
    content.children.append(XmlElement("bulletList", contents=[item]))
    content.children.append(XmlElement("paragraph"))
    content.children.append(
        XmlElement("paragraph", contents=[XmlText("a"), XmlElement("hardBreak"), XmlText("b")])
    )
    quote = XmlElement("blockquote", contents=[XmlElement("paragraph", contents=[XmlText("q")])])
    content.children.append(quote)
    assert full(doc).project().text == "one\n\na\nb\nq"


def test_empty_document_projects_defaults() -> None:
    projection = BlockDocument().project()
    assert projection == Projection(None, "", "", (), {}, (), (), {}, {}, None, None)


def test_roots_of_unexpected_types_do_not_break_projection() -> None:
    doc: Doc = Doc()
    meta = doc.get("meta_v0", type=Text)
    meta += "not a map"
    doc.get("title_v0", type=Map)["x"] = 1
    doc.get("relations_v1", type=Array).append("tag-1")
    files = doc.get("files_v0", type=Map)
    files["odd"] = "plain string"
    files["bin"] = Map({"data": b"\x00\x01", "nan": float("nan"), "sub": Doc()})
    doc.get("apps_v0", type=Map)["xml"] = XmlFragment([XmlElement("p", contents=[XmlText("x")])])
    content = doc.get("content_v0", type=Array)
    content.append(Map({"k": 1}))
    content.append("loose")
    projection = full(doc).project()
    assert projection.type is None and projection.title == "" and projection.text == ""
    assert projection.relations == {} and projection.tags == ()
    assert projection.files == {"bin": {"data": None, "nan": None, "sub": None}}
    assert projection.apps == {"xml": None}


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1700000000000.0, 1700000000000), (12, 12), ("soon", None), (True, None), (None, None)],
)
def test_deleted_at_accepts_numbers_only(value: Any, expected: int | None) -> None:
    doc: Doc = Doc()
    doc.get("meta_v0", type=Map)["deleted_at"] = value
    assert full(doc).project().deleted_at == expected


def test_apply_and_diff_round_trip_between_documents() -> None:
    client = realistic_block()
    server = BlockDocument()
    for update in client.updates:
        assert server.apply(update) is True
    peer = BlockDocument()
    assert peer.apply(server.diff(peer.state_vector())) is True
    assert peer.full_state() == server.full_state()
    # the peer edits; the server asks only for what it lacks
    edit = Recorder(Doc())
    edit.doc.apply_update(peer.full_state())
    edit.doc.get("meta_v0", type=Map)["type"] = "folder"
    assert peer.apply(edit.updates[-1]) is True
    delta = peer.diff(server.state_vector())
    assert len(delta) < len(peer.full_state())
    assert server.apply(delta) is True
    assert server.project() == peer.project() and server.project().type == "folder"
    assert server.diff(None) == server.full_state() == server.diff(EMPTY_STATE_VECTOR)
    assert server.snapshot() == server.full_state() and server.size == len(server.full_state())


def test_duplicates_and_empty_updates_are_no_ops() -> None:
    client = realistic_block()
    server = BlockDocument.load(None, client.updates)
    for update in client.updates:
        assert server.apply(update) is False
    assert server.apply(server.full_state()) is False
    assert server.apply(b"\x00\x00") is False
    server.project()  # reading roots must not count as a change
    assert server.apply(client.updates[0]) is False


def test_deletion_only_update_counts_as_a_change() -> None:
    client = Recorder()
    text = client.doc.get("content_v0", type=XmlFragment).children.append(XmlText("hello"))
    server = BlockDocument.load(None, client.updates)
    del text[0:2]
    deletion = client.updates[-1]
    assert deletion[:1] == b"\x00"  # no structs, only a delete set
    assert server.apply(deletion) is True
    assert server.apply(deletion) is False
    assert server.project().text == "llo"


GARBAGE = [b"", b"\x00", b"\xff" * 10, b"\x01\x01\x05", random.Random(7).randbytes(64), b"hello"]


@pytest.mark.parametrize("bad", [*GARBAGE, "truncated"])
def test_invalid_updates_raise_and_leave_the_document_alone(bad: bytes | str) -> None:
    client = realistic_block()
    server = BlockDocument.load(client.updates[0])
    if bad == "truncated":
        bad = client.updates[1][:-7]
    assert isinstance(bad, bytes)
    before = (server.state_vector(), server.full_state())
    with pytest.raises(InvalidUpdate) as info:
        server.apply(bad)
    assert isinstance(info.value, Unprocessable)
    assert (info.value.status, info.value.code) == (422, "invalid_update")
    assert (server.state_vector(), server.full_state()) == before
    with pytest.raises(InvalidUpdate):
        BlockDocument.load(client.updates[0], [client.updates[1], bad])


def test_pending_updates_are_detected_and_resolved() -> None:
    client = Recorder()
    text = client.doc.get("content_v0", type=XmlFragment).children.append(XmlText("abc"))
    text.insert(3, "def")
    del text[1:2]
    first, second, deletion = client.updates
    server = BlockDocument()
    assert server.apply(second) is True  # parked, but it must be stored
    assert server.has_pending() and server.state_vector() == EMPTY_STATE_VECTOR
    assert server.apply(second) is False  # the same parked update again
    assert server.apply(deletion) is True and server.has_pending()
    assert server.apply(first) is True
    assert not server.has_pending()
    assert server.project().text == "acdef"

    only_deletion = BlockDocument()
    assert only_deletion.apply(deletion) is True and only_deletion.has_pending()
    assert only_deletion.apply(first) is True
    assert not only_deletion.has_pending()
    assert only_deletion.project().text == "ac"


def test_snapshot_of_a_document_with_pending_data_lacks_it() -> None:
    """Why callers must keep the log while has_pending(): the snapshot drops parked updates."""
    client = Recorder()
    text = client.doc.get("content_v0", type=XmlFragment).children.append(XmlText("abc"))
    text.insert(3, "def")
    server = BlockDocument.load(None, client.updates[1:])
    assert server.has_pending()
    reloaded = BlockDocument.load(server.snapshot(), [client.updates[0]])
    assert reloaded.project().text == "abc"  # "def" is gone


@pytest.mark.parametrize(
    "vector",
    [b"\x00", b"\x01\x05\x03", b"\x02\x01\x00\x81\x01\xff\x7f", b"\x01\xff\xff\xff\xff\x0f\x0a"],
)
def test_valid_state_vectors(vector: bytes) -> None:
    check_state_vector(vector)
    BlockDocument.load(new_block_document(block_type="document")).diff(vector)


def test_real_state_vectors_are_valid() -> None:
    server = full(realistic_block().doc)
    check_state_vector(server.state_vector())
    check_state_vector(EMPTY_STATE_VECTOR)


@pytest.mark.parametrize(
    "vector",
    [
        b"",  # not even a count
        b"\x00\x00",  # trailing byte
        b"\x01\x05\x03\x00",  # trailing byte after one entry
        b"\x01\x05",  # truncated entry
        b"\x02\x01\x02",  # fewer entries than announced
        b"\x01\x85",  # unfinished varUint
        b"\x01" + b"\xff" * 8 + b"\x01\x00",  # varUint beyond 53 bits
    ],
)
def test_malformed_state_vectors(vector: bytes) -> None:
    with pytest.raises(InvalidUpdate) as info:
        check_state_vector(vector)
    assert info.value.code == "invalid_state_vector" and info.value.status == 422
    with pytest.raises(InvalidUpdate):
        BlockDocument().diff(vector)


def test_base64_round_trip() -> None:
    data = os.urandom(100)
    assert decode_b64(encode_b64(data)) == data
    assert encode_b64(data) == base64.b64encode(data).decode()
    assert decode_b64("") == b""
    assert decode_b64("AAA=") == b"\x00\x00"


@pytest.mark.parametrize(
    "text",
    ["AA", "AAA", "AA=", "A*==", "AA==\n", "AA AA", "AA\nAA==", " AA==", "-_-_", "AA==AA==", "é"],
)
def test_base64_is_strict(text: str) -> None:
    with pytest.raises(InvalidUpdate) as info:
        decode_b64(text, "state_vector")
    assert info.value.code == "invalid_base64" and "state_vector" in info.value.message


def test_set_meta_produces_an_update_for_peers() -> None:
    client = realistic_block()
    server = full(client.doc)
    copy = full(client.doc)
    update = server.set_meta("deleted_at", None)
    assert server.project().deleted_at is None
    assert copy.apply(update) is True
    assert copy.project().deleted_at is None and copy.full_state() == server.full_state()
    assert server.set_meta("deleted_at", None) == b"\x00\x00"  # already gone: nothing to send
    purge = server.set_meta("permanently_deleted_at", 1700000000999)
    client.doc.apply_update(purge)
    assert client.doc.get("meta_v0", type=Map)["permanently_deleted_at"] == 1700000000999
    with pytest.raises(ValueError):
        server.set_meta("deleted_at", 2**60)


def test_new_block_document_round_trips_through_project() -> None:
    update = new_block_document(block_type="index", title="My heap")
    projection = BlockDocument.load(update).project()
    assert (projection.type, projection.title, projection.text) == ("index", "My heap", "")
    client: Doc = Doc()
    client.apply_update(update)
    assert str(client.get("title_v0", type=XmlFragment)) == "<paragraph>My heap</paragraph>"
    untitled = BlockDocument.load(new_block_document(block_type="tag")).project()
    assert (untitled.type, untitled.title) == ("tag", "")


# --- properties -------------------------------------------------------------------------------

KEYS = ["a", "b", "c"]
op_strategy = st.tuples(
    st.integers(0, 2),  # client
    st.sampled_from(["insert", "delete", "relation", "meta", "unset", "paragraph", "sync"]),
    st.integers(0, 1000),  # position / choice
    st.integers(1, 4),  # length
    st.text(alphabet="xyz ", min_size=1, max_size=4),
)


def _edit(client: Recorder, peers: list[Recorder], op: tuple[int, str, int, int, str]) -> None:
    _, kind, pos, length, text = op
    content = client.doc.get("content_v0", type=XmlFragment)
    paragraphs = list(content.children)
    if kind in ("insert", "delete") and paragraphs:
        node = paragraphs[pos % len(paragraphs)].children[0]
        assert isinstance(node, XmlText)
        if kind == "insert":
            node.insert(pos % (len(node) + 1), text)
        elif len(node):
            start = pos % len(node)
            del node[start : min(len(node), start + length)]
    elif kind == "paragraph":
        content.children.append(XmlElement("paragraph", contents=[XmlText(text)]))
    elif kind == "relation":
        kind_ = "tag" if pos % 2 else "parent"
        client.doc.get("relations_v1", type=Map)[KEYS[pos % 3]] = Map({"type": kind_})
    elif kind == "meta":
        client.doc.get("meta_v0", type=Map)[KEYS[pos % 3]] = text
    elif kind == "unset":
        client.doc.get("meta_v0", type=Map).pop(KEYS[pos % 3], None)
    elif kind == "sync":  # learn a peer's state, so later edits depend on its updates
        peer = peers[pos % len(peers)]
        client.doc.apply_update(peer.doc.get_update(client.doc.get_state()))


def _content(doc: Doc) -> tuple[str, Any, Any]:
    return (
        str(doc.get("content_v0", type=XmlFragment)),
        doc.get("meta_v0", type=Map).to_py(),
        doc.get("relations_v1", type=Map).to_py(),
    )


@FAST
@given(
    ops=st.lists(op_strategy, max_size=25),
    n_clients=st.integers(2, 3),
    seed=st.randoms(use_true_random=False),
)
def test_convergence_in_any_order_with_duplicates(
    ops: list[tuple[int, str, int, int, str]], n_clients: int, seed: random.Random
) -> None:
    base = Recorder()
    base.doc.get("content_v0", type=XmlFragment).children.append(
        XmlElement("paragraph", contents=[XmlText("start")])
    )
    clients = [Recorder(Doc()) for _ in range(n_clients)]
    for client in clients:
        client.doc.apply_update(base.doc.get_update())
        client.updates.clear()
    for op in ops:
        client = clients[op[0] % n_clients]
        _edit(client, [c for c in clients if c is not client], op)

    updates = base.updates + [u for c in clients for u in c.updates]
    delivery = updates + [seed.choice(updates) for _ in range(seed.randint(0, 5))]
    seed.shuffle(delivery)
    server = BlockDocument()
    for update in delivery:
        assert isinstance(server.apply(update), bool)
    assert not server.has_pending()
    for update in updates:
        assert server.apply(update) is False

    for client in clients:  # everyone exchanges everything
        for update in updates:
            client.doc.apply_update(update)
    fresh: Doc = Doc()
    fresh.apply_update(server.full_state())
    expected = server.project()
    for client in clients:
        assert _content(client.doc) == _content(fresh)
        assert full(client.doc).project() == expected


def _sample_updates() -> list[bytes]:
    client = realistic_block()
    content = client.doc.get("content_v0", type=XmlFragment)
    text = content.children[1].children[0]
    del text[0:3]
    text.insert(2, "zz", {"bold": True})
    return client.updates


SAMPLES = _sample_updates()
BASE_STATE = SAMPLES[0]


@st.composite
def mutated_updates(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip" and where < len(data):
            data[where] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[where:]
        else:
            data[where:where] = draw(st.binary(min_size=1, max_size=3))
    return bytes(data)


@FAST
@given(st.one_of(st.binary(max_size=200), mutated_updates()))
def test_apply_arbitrary_bytes(data: bytes) -> None:
    # SAMPLES[-1] lacks its predecessors: it stays parked, so the re-apply path runs too
    server = BlockDocument.load(BASE_STATE, [SAMPLES[-1]])
    assert server.has_pending()
    before = (server.state_vector(), server.full_state(), server.project())
    try:
        result = server.apply(data)
    except InvalidUpdate:
        assert (server.state_vector(), server.full_state(), server.project()) == before
        assert server.has_pending()
    else:
        assert isinstance(result, bool)
        assert isinstance(server.project(), Projection)
        server.has_pending()


@FAST
@given(st.binary(max_size=40))
def test_check_state_vector_on_arbitrary_bytes(data: bytes) -> None:
    try:
        check_state_vector(data)
    except InvalidUpdate as exc:
        assert exc.code == "invalid_state_vector"
    else:
        BlockDocument.load(BASE_STATE).diff(data)


def test_pending_structs_integrate_once_their_gap_is_filled() -> None:
    """yrs left an insert pending after its predecessor came when a map edit had come after it
    (found by the convergence property); BlockDocument must still converge.
    """
    base = Recorder()
    base.doc.get("content_v0", type=XmlFragment).children.append(
        XmlElement("paragraph", contents=[XmlText("start")])
    )
    client = Recorder(Doc())
    client.doc.apply_update(base.doc.get_update())
    text = client.doc.get("content_v0", type=XmlFragment).children[0].children[0]
    for _ in range(4):
        text.insert(0, "x")
    client.doc.get("relations_v1", type=Map)["a"] = Map({"type": "parent"})
    inserts, relation = client.updates[1:5], client.updates[5]
    server = BlockDocument.load(base.updates[0], [inserts[0], inserts[1], inserts[3], relation])
    assert server.has_pending()
    assert server.apply(inserts[2]) is True
    assert not server.has_pending()
    assert server.project() == full(client.doc).project()
    assert server.project().text == "xxxxstart" and server.project().relations
    raw: Doc = Doc()  # pycrdt alone stays stuck (if this fails, yrs fixed it upstream)
    for update in [base.updates[0], inserts[0], inserts[1], inserts[3], relation, inserts[2]]:
        raw.apply_update(update)
    assert str(raw.get("content_v0", type=XmlFragment)) == "<paragraph>xxxstart</paragraph>"


def test_updates_in_reverse_order_converge_quickly() -> None:
    client = Recorder()
    text = client.doc.get("content_v0", type=XmlFragment).children.append(XmlText(""))
    meta = client.doc.get("meta_v0", type=Map)
    for i in range(300):
        text.insert(len(text), "x")
        if i % 50 == 0:
            meta["n"] = i
    server = BlockDocument.load(None, reversed(client.updates))
    assert not server.has_pending()
    assert server.project().text == "x" * 300


def test_update_failing_halfway_through_integration_is_rolled_back() -> None:
    """yrs decodes this update, integrates its first struct (a heading), then fails on the
    second, whose parent is a string item, not a type. The document must not keep the heading.
    """
    author = Doc(client_id=1)
    fragment = author.get("content_v0", type=XmlFragment)
    fragment.children.append(XmlText("abc"))
    fragment.children.append(XmlText(""))
    editor = Recorder(Doc(client_id=2))
    editor.doc.apply_update(author.get_update())
    editor.updates.clear()
    with editor.doc.transaction():
        content = editor.doc.get("content_v0", type=XmlFragment)
        content.children.append(XmlElement("heading"))
        empty_text = content.children[1]
        assert isinstance(empty_text, XmlText)
        empty_text.insert(0, "x")
    good = editor.updates[0]
    parent_id = bytes([0x00, 0x01, 0x04])  # "parent is an ID": client 1, clock 4 (the XmlText)
    assert good.count(parent_id) == 1
    bad = good.replace(parent_id, bytes([0x00, 0x01, 0x02]))  # clock 2: the string "b"

    server = BlockDocument.load(author.get_update())
    before = (server.state_vector(), server.full_state(), server.project())
    with pytest.raises(InvalidUpdate):
        server.apply(bad)
    assert (server.state_vector(), server.full_state(), server.project()) == before
    assert server.apply(good) is True
    assert server.project().text == "abcx\n" and not server.has_pending()  # + empty heading


def test_rollback_keeps_pending_updates_across_compaction() -> None:
    """The rebuild after a half-applied update must bring back parked updates too, also after
    the in-memory base was renewed (more than 64 KiB of updates).
    """
    author = Recorder(Doc(client_id=1))
    fragment = author.doc.get("content_v0", type=XmlFragment)
    fragment.children.append(XmlText("abc"))
    fragment.children.append(XmlText(""))
    filler = fragment.children.append(XmlText(""))
    for _ in range(40):
        filler.insert(0, "y" * 2000)
    late = Recorder(Doc(client_id=3))
    late.doc.apply_update(author.doc.get_update())
    late_text = late.doc.get("content_v0", type=XmlFragment).children[0]
    late_text.insert(3, "1")
    late_text.insert(4, "2")
    first, second = late.updates[1:]

    server = BlockDocument.load(None, author.updates)
    assert server.apply(second) is True and server.has_pending()
    for _ in range(80):  # the in-memory base is renewed while `second` is parked
        filler.insert(0, "z" * 2000)
        server.apply(author.updates[-1])
    assert server.has_pending()
    state = server.full_state()
    bad = bytes.fromhex("01020200870104030768656164696e6704000102017800")  # see the test above
    raw: Doc = Doc()
    raw.apply_update(state)
    with pytest.raises(RuntimeError):
        raw.apply_update(bad)
    assert raw.get_update() != state  # pycrdt alone keeps half of it
    with pytest.raises(InvalidUpdate):
        server.apply(bad)
    assert server.full_state() == state and server.has_pending()
    assert server.apply(first) is True and not server.has_pending()
    assert server.project().text.startswith("abc12")


def test_a_document_nobody_holds_is_freed() -> None:
    """pycrdt's ``Doc.observe`` ties document and callback in a cycle through native code
    that Python's collector cannot see: every document the server ever loaded stayed in
    memory after the cache let it go. Observers now hold nothing that leads back to it."""
    author: Doc = Doc()
    content = author.get("content_v0", type=XmlFragment)
    meta = author.get("meta_v0", type=Map)
    with author.transaction():
        meta["type"] = "document"
        content.children.append(XmlElement("paragraph", contents=[XmlText("words")]))
    update = author.get_update()
    before = author.get_state()
    text = content.children[0].children[0]
    assert isinstance(text, XmlText)
    text.insert(5, " more")  # a nested edit, for the projection's observers
    nested = author.get_update(before)
    refs = []
    for project in (False, True):
        block = BlockDocument.load(None, [update])
        if project:
            assert block.project().text == "words"  # the projection's observers too
        block.set_meta("deleted_at", 5)  # and an update captured by the observer
        refs += [weakref.ref(block), weakref.ref(block._doc)]
        if project:
            assert block.apply(nested) and block.project().text == "words more"
            refs.append(weakref.ref(block._live))
        del block
    gc.collect()
    # the native document and the projection too (a projection callback holding the
    # projection kept both alive while the BlockDocument itself was freed)
    assert [r() for r in refs] == [None] * len(refs)
