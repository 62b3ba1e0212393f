"""The announcement between server processes: typed, and the same text as before on the wire
(processes of two versions share a database during a rolling restart)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heaper_trio.protocol import announce as a
from heaper_trio.protocol.events import BLOCK_KINDS

ids = st.text(min_size=0, max_size=40)
ints = st.integers(min_value=0, max_value=2**53 - 1)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
blocks = st.builds(
    a.BlockAnnouncement, ids, st.sampled_from(sorted(BLOCK_KINDS)), ids, ids, ints, ints, ints
)
user_events = st.builds(
    a.UserEventAnnouncement,
    ids,
    ids,
    st.dictionaries(st.text(max_size=10), json_values, max_size=6),
)

job_aborts = st.builds(a.JobAbortAnnouncement, ids, ids)


@settings(max_examples=300, deadline=None)
@given(st.one_of(blocks, user_events, job_aborts))
def test_round_trip(announcement: a.Announcement) -> None:
    assert a.decode(a.encode(announcement)) == announcement


def test_the_text_is_what_earlier_versions_write_and_read() -> None:
    """Byte for byte the payloads ``services/live/bridge`` and the PostgreSQL commit wrote
    before the codec (``json.dumps`` of these dicts, compact separators)."""
    block = a.BlockAnnouncement("p1", "changed", "h", "b", 7, 2, 1700000000000)
    assert a.encode(block) == (
        '{"o":"p1","k":"changed","h":"h","b":"b","s":7,"v":2,"t":1700000000000}'
    )
    evt = {
        "type": "scan.done",
        "scan_id": "s",
        "heap_id": "h",
        "path": "/x",
        "files_seen": 1,
        "files_done": 1,
        "bytes": 5,
    }
    user = a.UserEventAnnouncement("p1", "u1", evt)
    assert a.encode(user) == json.dumps({"o": "p1", "u": "u1", "e": evt}, separators=(",", ":"))
    assert a.decode(
        '{"o":"p2","k":"heap_deleted","h":"h","b":"","s":0,"v":1,"t":0}'
    ) == a.BlockAnnouncement("p2", "heap_deleted", "h")
    abort = a.JobAbortAnnouncement("p1", "j1")  # new in 0012's version; older ones skip it
    assert a.encode(abort) == '{"o":"p1","j":"j1"}' and a.decode(a.encode(abort)) == abort


def test_the_storage_announcement_decodes() -> None:
    """What PostgreSQL's committing transaction sends (storage/postgres/notify.py)."""
    notify = pytest.importorskip("heaper_trio.storage.postgres.notify")
    text = notify.block_pointer("p1", "purged", "h", "b", updated_at=5)
    assert a.decode(text) == a.BlockAnnouncement("p1", "purged", "h", "b", updated_at=5)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "null",
        "[]",
        "42",
        "{",
        '"o"',
        "{}",
        '{"o":"p","k":"changed","h":"h","b":"b","s":1,"v":1}',  # a key missing
        '{"o":"p","k":"changed","h":"h","b":"b","s":1,"v":1,"t":1,"x":1}',  # one too many
        '{"o":"p","k":"renamed","h":"h","b":"b","s":1,"v":1,"t":1}',  # unknown kind
        '{"o":"p","k":"changed","h":"h","b":"b","s":"1","v":1,"t":1}',  # a number as text
        '{"o":"p","k":"changed","h":"h","b":"b","s":true,"v":1,"t":1}',
        '{"o":"p","k":"changed","h":"h","b":"b","s":1.5,"v":1,"t":1}',
        '{"o":1,"k":"changed","h":"h","b":"b","s":1,"v":1,"t":1}',
        '{"o":"p","k":"changed","h":null,"b":"b","s":1,"v":1,"t":1}',
        '{"o":"p","u":"u","e":[1]}',
        '{"o":"p","u":5,"e":{}}',
        '{"u":"u","e":{}}',
        '{"o":"p","u":"u","e":{},"k":"changed"}',
        '{"o":"p","j":5}',  # a job id as a number
        '{"o":"p","j":"j","u":"u"}',
        "[" * 100_000,
    ],
)
def test_malformed_text_is_refused(text: str) -> None:
    with pytest.raises(a.MalformedAnnouncement):
        a.decode(text)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=80),
        st.dictionaries(
            st.sampled_from(["o", "k", "h", "b", "s", "v", "t", "u", "e", "j"]), json_values
        ).map(json.dumps),
    )
)
def test_any_text_decodes_or_is_refused_cleanly(text: str) -> None:
    try:
        a.decode(text)
    except a.MalformedAnnouncement:
        pass
