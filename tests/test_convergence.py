"""Convergence of HTTP sync under random edits, orders, duplicates and losses, on both engines.

Property 1: random edits from several clients (pycrdt standing in for Yjs), pushed and pulled in
random orders with duplicated requests, lost requests, lost answers and requests arriving again
late, converge to one state on every client and on the server once everyone has pushed what the
server may lack and pulled.

Property 2: updates pushed one per request in a random order with duplicates (no state vector)
end in the same document as applying them in order locally: an update whose predecessors have
not arrived yet is accepted, stored, and completes the document once the gap is filled.

Hypothesis runs in a worker thread and each example runs on the test's trio loop through
``trio.from_thread.run``: one server (and one login) per engine serves every example, and each
example works on a new heap and a new block. (pytest-trio's own Hypothesis integration runs each
example in a new ``trio.run`` and cannot keep a server fixture alive across examples.)
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pycrdt
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heaper_trio.client import HeaperClient
from heaper_trio.services import documents

from .test_sync import b64, new_heap, push, sv_entries, unb64

EXAMPLES = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

FRAGMENTS = ("title_v0", "content_v0")
MAPS = ("meta_v0", "relations_v1")
# ASCII only: pycrdt's text positions are UTF-8 byte offsets.
words = st.text(alphabet="abcxyz ", min_size=0, max_size=6)
index = st.integers(min_value=0, max_value=1000)  # taken modulo the length at run time

# -- edits ------------------------------------------------------------------------------------

edits = st.one_of(
    st.tuples(st.just("paragraph"), st.sampled_from(FRAGMENTS), index, words),
    st.tuples(st.just("insert"), st.sampled_from(FRAGMENTS), index, index, words.filter(bool)),
    st.tuples(
        st.just("delete"),
        st.sampled_from(FRAGMENTS),
        index,
        index,
        st.integers(min_value=0, max_value=4),
    ),  # 0: the whole paragraph
    st.tuples(
        st.just("map"),
        st.sampled_from(MAPS),
        st.sampled_from(["type", "color", "k"]),
        st.one_of(st.none(), st.sampled_from(["document", "tag", "red", "7"])),
    ),
)


def apply_edit(doc: pycrdt.Doc, edit: tuple[Any, ...]) -> None:
    """Apply one generated edit to ``doc`` in one transaction. Every paragraph holds exactly one
    XmlText (it is created with it), so the content text is easy to compute independently."""
    kind, root = edit[0], edit[1]
    with doc.transaction():
        if kind == "map":
            _, _, key, value = edit
            m = doc.get(root, type=pycrdt.Map)
            if value is None:
                m.pop(key, None)
            elif root == "relations_v1":
                m[key] = pycrdt.Map({"type": value})
            else:
                m[key] = value
            return
        frag = doc.get(root, type=pycrdt.XmlFragment)
        n = len(frag.children)
        if kind == "paragraph" or (kind == "insert" and n == 0):
            text = edit[3] if kind == "paragraph" else edit[4]
            at = edit[2] % (n + 1)
            frag.children.insert(
                at, pycrdt.XmlElement("paragraph", contents=[pycrdt.XmlText(text)])
            )
        elif kind == "insert":
            _, _, para, pos, text = edit
            t = frag.children[para % n].children[0]
            t.insert(pos % (len(t) + 1), text)
        elif kind == "delete" and n:
            _, _, para, start, length = edit
            i = para % n
            t = frag.children[i].children[0]
            size = len(t)
            if length == 0 or size == 0:
                del frag.children[i]
            else:
                s = start % size
                del t[s : min(size, s + length)]


# -- comparing documents ----------------------------------------------------------------------


def new_doc(client_id: int | None = None) -> pycrdt.Doc:
    doc = pycrdt.Doc() if client_id is None else pycrdt.Doc(client_id=client_id)
    for name in FRAGMENTS:
        doc.get(name, type=pycrdt.XmlFragment)
    for name in MAPS:
        doc.get(name, type=pycrdt.Map)
    return doc


def doc_from(update: bytes) -> pycrdt.Doc:
    doc = new_doc()
    doc.apply_update(update)
    return doc


def content_of(doc: pycrdt.Doc) -> dict[str, Any]:
    return {
        **{name: str(doc.get(name, type=pycrdt.XmlFragment)) for name in FRAGMENTS},
        **{name: doc.get(name, type=pycrdt.Map).to_py() for name in MAPS},
    }


def lines(doc: pycrdt.Doc, name: str) -> list[str]:
    return [str(p.children[0]) for p in doc.get(name, type=pycrdt.XmlFragment).children]


async def assert_server_has(client: HeaperClient, block_id: str, doc: pycrdt.Doc) -> None:
    """The server's stored state, its pull answer and its projection all match ``doc``."""
    r = await client.post(f"/api/block/{block_id}")
    assert r.status_code == 200, r.text
    got = r.json()
    expected = content_of(doc)
    assert content_of(doc_from(unb64(got["state"]))) == expected
    assert sv_entries(unb64(got["state_vector"])) == sv_entries(doc.get_state())
    r = await client.post("/api/sync/pull", json={"blocks": [{"block_id": block_id}]})
    [pulled] = r.json()["blocks"]
    assert pulled["status"] == "ok", pulled
    assert content_of(doc_from(unb64(pulled["update"]))) == expected
    # The projection, computed here without heaper_trio.crdt (one XmlText per paragraph).
    meta_type = doc.get("meta_v0", type=pycrdt.Map).get("type")
    assert got["block"]["type"] == meta_type
    assert got["block"]["title"] == " ".join(lines(doc, "title_v0")).strip()
    assert got["block"]["text"] == got["text"] == "\n".join(lines(doc, "content_v0"))
    assert got["relations"]["raw"] == expected["relations_v1"]


# Compaction as shipped, and after every second log row: a snapshot must never be written while
# an update waits for its predecessors (the snapshot would leave it out).
compaction = pytest.mark.parametrize(
    "compact_every", [None, 2], ids=["compact-default", "compact-every-2"]
)


async def run_examples(test: Callable[[], None]) -> None:
    """Run a Hypothesis test in a worker thread; its examples call back into the trio loop."""
    await trio.to_thread.run_sync(test)


# -- property 1: several clients, random push/pull orders, duplicates and losses --------------


@dataclass
class SimClient:
    """A device holding the block. ``acked``: a state the server is known to hold everything
    below; ``sent``: the state at the last push attempt (incremental pushes send what is new
    since then); ``gap``: an incremental push was lost, so the server may lack something
    between ``acked`` and ``sent``; ``last``: the last push request, which the network may
    deliver again later (or late, if it was lost)."""

    doc: pycrdt.Doc
    acked: bytes = b"\x00"
    sent: bytes = b"\x00"
    gap: bool = False
    last: dict[str, Any] | None = None


@dataclass
class Sim:
    api: HeaperClient
    heap_id: str
    block_id: str
    clients: list[SimClient]
    created: bool = False  # some push reached the server
    log: list[str] = field(default_factory=list)

    def item(self, update: bytes, state_vector: bytes | None) -> dict[str, Any]:
        out = {"block_id": self.block_id, "workspace_id": self.heap_id, "update": b64(update)}
        if state_vector is not None:
            out["state_vector"] = b64(state_vector)
        return out

    async def send(self, item: dict[str, Any]) -> dict[str, Any]:
        r = await push(self.api, item)
        assert r.status_code == 200, r.text
        [answer] = r.json()["blocks"]
        assert answer["status"] == ("ok" if self.created else "created"), answer
        self.created = True
        return dict(answer)

    async def push(self, c: SimClient, mode: str, with_sv: bool, delivery: str) -> None:
        base = c.acked if mode == "acked" else c.sent
        update = c.doc.get_update(base)
        at_send = c.doc.get_state()
        complete = mode == "acked" or not c.gap  # server then holds everything below at_send
        c.sent = at_send
        c.last = item = self.item(update, at_send if with_sv else None)
        if delivery == "lost_request":
            c.gap = True
            return
        answers = [await self.send(item) for _ in range(2 if delivery == "twice" else 1)]
        if delivery == "lost_response":
            return
        for answer in answers:
            c.doc.apply_update(unb64(answer["update"]))
        if complete:
            c.acked, c.gap = at_send, False

    async def pull(self, c: SimClient, with_sv: bool) -> None:
        body: dict[str, Any] = {"block_id": self.block_id}
        if with_sv:
            body["state_vector"] = b64(c.doc.get_state())
        r = await self.api.post("/api/sync/pull", json={"blocks": [body]})
        assert r.status_code == 200, r.text
        [answer] = r.json()["blocks"]
        if not self.created:
            assert answer["status"] == "not_found", answer
            return
        assert answer["status"] == "ok", answer
        c.doc.apply_update(unb64(answer["update"]))


@st.composite
def scripts(draw: st.DrawFn) -> tuple[int, list[tuple[Any, ...]]]:
    n = draw(st.integers(min_value=2, max_value=3))
    who = st.integers(min_value=0, max_value=n - 1)
    step = st.one_of(
        st.tuples(st.just("edit"), who, edits),
        st.tuples(st.just("edit"), who, edits),
        st.tuples(
            st.just("push"),
            who,
            st.sampled_from(["acked", "incremental"]),
            st.booleans(),
            st.sampled_from(["delivered", "delivered", "twice", "lost_request", "lost_response"]),
        ),
        st.tuples(st.just("pull"), who, st.booleans()),
        st.tuples(st.just("replay"), who),  # the client's last request arrives (again), late
    )
    return n, draw(st.lists(step, min_size=5, max_size=30))


async def run_script(api: HeaperClient, n: int, steps: list[tuple[Any, ...]]) -> None:
    heap = await new_heap(api)
    sim = Sim(
        api, heap["id"], str(uuid.uuid4()), [SimClient(new_doc(client_id=i + 1)) for i in range(n)]
    )
    for step in steps:
        kind, c = step[0], sim.clients[step[1]]
        if kind == "edit":
            apply_edit(c.doc, step[2])
        elif kind == "push":
            await sim.push(c, *step[2:])
        elif kind == "replay":
            if c.last is not None:
                await sim.send(c.last)  # nobody reads this answer
        else:
            await sim.pull(c, step[2])
    # Everyone pushes what the server may lack, then everyone pulls.
    for c in sim.clients:
        await sim.push(c, "acked", True, "delivered")
    for c in sim.clients:
        await sim.pull(c, True)
    first = sim.clients[0].doc
    for c in sim.clients[1:]:
        assert content_of(c.doc) == content_of(first)
        assert sv_entries(c.doc.get_state()) == sv_entries(first.get_state())
    await assert_server_has(api, sim.block_id, first)


@compaction
async def test_clients_converge_through_the_server(
    admin: HeaperClient, compact_every: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if compact_every is not None:
        monkeypatch.setattr(documents, "COMPACT_EVERY", compact_every)

    @EXAMPLES
    @given(scripts())
    def check(script: tuple[int, list[tuple[Any, ...]]]) -> None:
        trio.from_thread.run(run_script, admin, *script)

    await run_examples(check)


# -- property 2: updates pushed out of order, with duplicates ---------------------------------


def record_updates(n_clients: int, script: list[tuple[Any, ...]]) -> list[bytes]:
    """Play ``script`` (edits by a client, or a client catching up with every update so far) and
    return the updates of the local edits, in the order they were made."""
    docs = [new_doc(client_id=i + 1) for i in range(n_clients)]
    updates: list[bytes] = []
    have: list[set[int]] = [set() for _ in range(n_clients)]  # indices each client holds
    recording = [False]

    def keep(event: pycrdt.TransactionEvent) -> None:
        if recording[0]:
            updates.append(bytes(event.update))

    subs = [d.observe(keep) for d in docs]
    for kind, who, edit in script:
        before = len(updates)
        if kind == "catch_up":
            for i, u in enumerate(updates):
                if i not in have[who]:
                    docs[who].apply_update(u)
            have[who] = set(range(before))
        else:
            recording[0] = True
            apply_edit(docs[who], edit)
            recording[0] = False
            have[who].update(range(before, len(updates)))
    del subs
    return updates


@st.composite
def update_scripts(draw: st.DrawFn) -> tuple[int, list[tuple[Any, ...]]]:
    n = draw(st.integers(min_value=1, max_value=2))
    who = st.integers(min_value=0, max_value=n - 1)
    step = st.one_of(
        st.tuples(st.just("edit"), who, edits), st.tuples(st.just("catch_up"), who, st.none())
    )
    return n, draw(st.lists(step, min_size=5, max_size=15))


async def push_in_order(api: HeaperClient, updates: list[bytes], order: list[int]) -> None:
    heap = await new_heap(api)
    block_id = str(uuid.uuid4())
    reference = new_doc()
    for u in updates:
        reference.apply_update(u)
    for k, i in enumerate(order):
        r = await push(
            api, {"block_id": block_id, "workspace_id": heap["id"], "update": b64(updates[i])}
        )
        assert r.status_code == 200, r.text
        [answer] = r.json()["blocks"]
        assert answer["status"] == ("created" if k == 0 else "ok"), answer
    await assert_server_has(api, block_id, reference)


@compaction
async def test_out_of_order_pushes_complete_the_document(
    admin: HeaperClient, compact_every: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if compact_every is not None:
        monkeypatch.setattr(documents, "COMPACT_EVERY", compact_every)

    @EXAMPLES
    @given(update_scripts(), st.data())
    def check(script: tuple[int, list[tuple[Any, ...]]], data: st.DataObject) -> None:
        updates = record_updates(*script)
        if not updates:
            return
        order = data.draw(st.permutations(range(len(updates))), label="order")
        for i, at in data.draw(
            st.lists(st.tuples(st.integers(0, len(updates) - 1), st.integers(0, 1000)), max_size=5),
            label="duplicates",
        ):
            order.insert(at % (len(order) + 1), i)
        trio.from_thread.run(push_in_order, admin, updates, order)

    await run_examples(check)
