"""Push and pull as values: the pure rules of the document service, the JSON the web layer
shapes from its outcomes, and what the live connection reads back from ``push_live``."""

from __future__ import annotations

import base64
import itertools
from typing import Any

import pycrdt
import pytest

from heaper_trio import crdt
from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.errors import BadRequest
from heaper_trio.records.changes import ChangeKind, change_kind
from heaper_trio.services.push import PushBatch, Settled, checked, with_diff
from heaper_trio.services.query import QueryRequest, parse_query
from heaper_trio.services.sync_types import (
    PullOutcome,
    PullStatus,
    PushItemRequest,
    PushOutcome,
    PushStatus,
    Undecodable,
)
from heaper_trio.web.json_sync import pull_json, pull_request, push_json, push_request
from heaper_trio.web.routes_heaps import query_request


def _update(title: str = "Hello", client_id: int = 7) -> tuple[pycrdt.Doc, bytes]:
    doc: pycrdt.Doc = pycrdt.Doc(client_id=client_id)
    meta = doc.get("meta_v0", type=pycrdt.Map)
    meta["type"] = "document"
    meta["title"] = title
    return doc, doc.get_update()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- change_kind ------------------------------------------------------------------------------


@pytest.mark.parametrize(("was", "now"), list(itertools.product([False, True], repeat=2)))
def test_a_new_block_is_created_whatever_it_holds(was: bool, now: bool) -> None:
    assert change_kind(created=True, was_deleted=was, now_deleted=now) is ChangeKind.created


@pytest.mark.parametrize(
    ("was", "now", "kind"),
    [
        (False, False, ChangeKind.changed),
        (False, True, ChangeKind.deleted),
        (True, False, ChangeKind.restored),
        (True, True, ChangeKind.changed),  # edited while in the trash
    ],
)
def test_entering_or_leaving_the_trash_names_the_change(
    was: bool, now: bool, kind: ChangeKind
) -> None:
    assert change_kind(created=False, was_deleted=was, now_deleted=now) is kind


def test_statuses_read_as_their_wire_strings() -> None:
    """The live connection compares ``item.status`` with strings and logs it."""
    outcome = PushOutcome("b", PushStatus.forbidden, error="heap_forbidden")
    assert outcome.status == "forbidden" and outcome.status in ("forbidden", "deleted")
    assert f"{outcome.status}" == "forbidden"
    assert (outcome.error or outcome.status) == "heap_forbidden"
    assert ChangeKind.purged == "purged" and {"purged": 1}[ChangeKind.purged] == 1


# -- checking a pushed block ------------------------------------------------------------------


def test_a_checked_item_becomes_a_batch() -> None:
    doc, update = _update()
    sv = doc.get_state()
    batch = checked(PushItemRequest("blk", "heap", update, sv, 3), 4)
    assert batch == PushBatch(4, "blk", "heap", (update,), sv, 3)


@pytest.mark.parametrize(
    ("update", "sv", "error"),
    [
        (Undecodable("invalid_base64"), None, "invalid_base64"),
        (Undecodable("invalid_base64"), Undecodable("invalid_base64"), "invalid_base64"),
        (b"\x01\x02\x03", None, "invalid_update"),
        # the update is checked before the state vector, whichever the web layer failed to decode
        (b"\x01\x02\x03", Undecodable("invalid_base64"), "invalid_update"),
        (b"\x00\x00", Undecodable("invalid_base64"), "invalid_base64"),
        (b"\x00\x00", b"\x05", "invalid_state_vector"),
    ],
)
def test_the_first_fault_of_an_item_names_its_error(update: Any, sv: Any, error: str) -> None:
    outcome = checked(PushItemRequest("blk", "heap", update, sv), 0)
    assert outcome == PushOutcome("blk", PushStatus.invalid, 1, error)


def test_only_accepted_blocks_carry_a_diff() -> None:
    _, update = _update()
    doc = crdt.BlockDocument.load(None, [update])
    for status in PushStatus:
        settled = Settled(PushOutcome("blk", status, 2), doc)
        outcome = with_diff(settled, None)
        if status in (PushStatus.ok, PushStatus.created):
            assert outcome.state_vector == doc.state_vector()
            assert outcome.update == doc.diff(None)
        else:
            assert outcome == settled.outcome
    assert with_diff(Settled(PushOutcome("blk", PushStatus.ok)), None).update is None
    known = with_diff(Settled(PushOutcome("blk", PushStatus.ok), doc), doc.state_vector())
    assert known.update == doc.diff(doc.state_vector()) != doc.diff(None)


# -- the wire, both ways ----------------------------------------------------------------------


def test_requests_decode_base64_and_keep_failures_in_place() -> None:
    req = push_request(
        {
            "block_id": "b",
            "workspace_id": "h",
            "update": "***",
            "state_vector": b64(b"\x00"),
            "sync_version": 2,
        }
    )
    assert req == PushItemRequest("b", "h", Undecodable("invalid_base64"), b"\x00", 2)
    assert (
        push_request(
            {"block_id": "b", "workspace_id": "h", "update": "AAA=", "state_vector": ""}
        ).state_vector
        is None
    )
    assert pull_request({"block_id": "b", "state_vector": "!!"}).state_vector == Undecodable(
        "invalid_base64"
    )
    assert (
        pull_request({"block_id": "b", "state_vector": "", "sync_version": 1}).state_vector is None
    )


def test_push_answers_keep_their_keys_and_tell_nothing_of_refused_blocks() -> None:
    assert list(push_json(PushOutcome("b", PushStatus.created, 1, None, b"\x00", b"\x00\x00"))) == [
        "block_id",
        "status",
        "sync_version",
        "state_vector",
        "update",
    ]
    forbidden = push_json(PushOutcome("b", PushStatus.forbidden, 9, "block_in_other_heap"))
    assert forbidden == {"block_id": "b", "status": "forbidden", "error": "block_in_other_heap"}
    assert type(forbidden["status"]) is str


def test_pull_answers_keep_their_keys() -> None:
    shapes = {
        PullOutcome("b", PullStatus.deleted, deleted_at=5): [
            "block_id",
            "status",
            "deleted",
            "deleted_at",
        ],
        PullOutcome("b", PullStatus.not_found, error="block_not_found"): [
            "block_id",
            "status",
            "error",
        ],
        PullOutcome("b", PullStatus.invalid, 2, "invalid_base64"): [
            "block_id",
            "sync_version",
            "status",
            "error",
        ],
        PullOutcome("b", PullStatus.version_mismatch, 2, full_state=b"", state_vector=b"\x00"): [
            "block_id",
            "sync_version",
            "status",
            "full_state",
            "state_vector",
        ],
        PullOutcome("b", PullStatus.ok, 2, update=b"\x00\x00", state_vector=b"\x00"): [
            "block_id",
            "sync_version",
            "status",
            "update",
            "state_vector",
        ],
    }
    for outcome, keys in shapes.items():
        assert list(pull_json(outcome)) == keys
    assert pull_json(PullOutcome("b", PullStatus.deleted, deleted_at=5))["deleted"] is True


def test_query_bodies_become_requests_and_queries() -> None:
    req = query_request(
        {"heap_id": "h", "type": "photo", "query": "Red red fox", "in_trash": True, "sort": "title"}
    )
    assert req == QueryRequest(types=("photo",), text="Red red fox", trash=True, sort="title")
    q = parse_query(req)
    assert (q.terms, q.descending, q.trash) == (("red", "fox"), False, True)
    assert parse_query(query_request({"order": "asc"})).descending is False
    assert parse_query(QueryRequest()).descending is True
    with pytest.raises(BadRequest):
        parse_query(QueryRequest(sort="title", cursor="W10"))


# -- through the service and the server ---------------------------------------------------------


async def test_a_block_twice_in_one_push_is_answered_twice(
    admin: HeaperClient, server: RunningServer
) -> None:
    """Both items are applied in order: the first creates the block, the second finds its
    update already there. (Both answers used to be keyed by block id: one was left blank.)"""
    heap = (await admin.post("/api/heap/add", json={"name": "N"})).json()["heap"]
    _, update = _update()
    item = {"block_id": "twice", "workspace_id": heap["id"], "update": b64(update)}
    _, other = _update("Other", client_id=8)
    r = await admin.post(
        "/api/sync/push", json={"blocks": [item, item, {**item, "update": b64(other)}]}
    )
    assert [b["status"] for b in r.json()["blocks"]] == ["created", "ok", "ok"]
    stored = await server.services.storage.load_block("twice")
    assert stored is not None and len(stored.updates) == 2


async def test_push_live_answers_what_the_connection_reads(
    admin: HeaperClient, server: RunningServer
) -> None:
    heap = (await admin.post("/api/heap/add", json={"name": "N"})).json()["heap"]
    owner = await server.services.storage.get_heap(heap["id"])
    user = await server.services.storage.get_user(owner.owner_id) if owner else None
    assert user is not None
    documents = server.services.documents
    _, update = _update()
    heard: list[Any] = []
    documents.listeners.append(heard.extend)
    try:
        made = await documents.push_live(user, heap["id"], "live", [update], None, origin="me")
        again = await documents.push_live(user, heap["id"], "live", [update], 1, origin="me")
        bad = await documents.push_live(user, heap["id"], "live", [b"\x01"], 1, origin="me")
        stale = await documents.push_live(user, heap["id"], "live", [update], 5, origin="me")
    finally:
        documents.listeners.remove(heard.extend)
    assert (made.status, made.error) == ("created", None)
    assert (again.status, again.error) == ("ok", None)
    assert (bad.status, bad.error) == ("invalid", "invalid_update")
    assert (stale.status, stale.error) == ("version_mismatch", "sync_version_mismatch")
    assert [(c.block_id, c.kind, c.origin) for c in heard] == [("live", "created", "me")]
