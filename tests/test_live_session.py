"""The pure ``/ws`` session state machine, driven without sockets (and fuzzed)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from heaper_trio.protocol import messages as m
from heaper_trio.protocol import session as s
from heaper_trio.protocol.close_codes import CLOSE_RESET, CLOSE_TIMEOUT
from heaper_trio.protocol.names import BlockName, EventsName, parse_document_name

DOC = "heap-1:block-1"


def frame(message: m.Message) -> bytes:
    return m.encode(message)


def test_messages_wait_for_authorization_then_replay_in_order() -> None:
    sess = s.LiveSession(connection_token=False)
    assert sess.receive(frame(m.AuthToken(DOC, "tok", "4.8.0"))) == [
        s.Authorize(DOC, "tok", "4.8.0")
    ]
    step1 = m.SyncStep1(DOC, b"\x00")
    aw = m.Awareness(DOC, m.encode_awareness([]))
    assert sess.receive(frame(step1)) == []
    assert sess.receive(frame(aw)) == []
    assert sess.receive(frame(m.AuthToken(DOC, "tok", "4.8.0"))) == []  # one at a time
    actions = sess.authorized(DOC)
    assert actions == [
        s.Send(frame(m.Authenticated(DOC, "read-write"))),
        s.OpenDocument(DOC),
        s.Deliver(DOC, step1),
        s.Deliver(DOC, aw),
    ]
    assert sess.receive(frame(step1)) == [s.Deliver(DOC, step1)]
    assert sess.provider_version == "4.8.0" and sess.ever_authorized


def test_denial_forgets_the_queue_and_keeps_the_socket() -> None:
    sess = s.LiveSession(connection_token=False)
    sess.receive(frame(m.AuthToken(DOC, "bad", None)))
    sess.receive(frame(m.SyncStep1(DOC, b"\x00")))
    assert sess.denied(DOC, "token_invalid") == [
        s.Send(frame(m.PermissionDenied(DOC, "token_invalid")))
    ]
    assert not sess.closed and not sess.pending
    assert sess._queued_messages == 0 and sess._queued_bytes == 0


def test_an_open_document_can_lose_its_authorization() -> None:
    sess = s.LiveSession(connection_token=True)
    actions = sess.receive(frame(m.SyncStep1(DOC, b"\x00")))
    assert actions == [s.Authorize(DOC, None, None)]  # the upgrade request's token
    sess.authorized(DOC)
    assert sess.receive(frame(m.AuthToken(DOC, "fresh", "4.8.0"))) == [
        s.Authorize(DOC, "fresh", "4.8.0", renewal=True)
    ]
    assert sess.authorized(DOC) == []  # renewed quietly
    assert sess.denied(DOC, "token_expired") == [
        s.Send(frame(m.PermissionDenied(DOC, "token_expired"))),
        s.CloseDocument(DOC),
    ]
    assert sess.receive(frame(m.SyncStep1(DOC, b"\x00"))) == [s.Authorize(DOC, None, None)]


def test_client_close_ping_and_malformed_frames() -> None:
    sess = s.LiveSession(connection_token=True)
    sess.receive(frame(m.SyncStep1(DOC, b"\x00")))
    sess.authorized(DOC)
    assert sess.receive(m.encode_client_close(DOC)) == [s.CloseDocument(DOC)]
    assert sess.receive(frame(m.Ping())) == [s.Send(frame(m.Pong()))]
    assert sess.receive(frame(m.Pong())) == []
    actions = sess.receive(b"\x03ab")
    assert isinstance(actions[-1], s.Disconnect) and actions[-1].code == 1002
    assert sess.closed and sess.receive(frame(m.Ping())) == []


def test_unauthenticated_floods_reset_the_connection() -> None:
    limits = s.SessionLimits(
        max_pending_bytes=1000, max_pending_messages=5, max_pending_documents=3
    )
    sess = s.LiveSession(connection_token=False, limits=limits)
    for _ in range(5):
        assert sess.receive(frame(m.SyncStep1(DOC, b"\x00"))) == []
    assert sess.receive(frame(m.SyncStep1(DOC, b"\x00"))) == [
        s.Disconnect(CLOSE_RESET, "too much data before authentication")
    ]
    sess = s.LiveSession(connection_token=False, limits=limits)
    for i in range(3):
        sess.receive(frame(m.AuthToken(f"h:b{i}", "t", None)))
    actions = sess.receive(frame(m.AuthToken("h:b9", "t", None)))
    assert actions == [s.Disconnect(CLOSE_RESET, "too many documents waiting for auth")]
    sess = s.LiveSession(connection_token=False, limits=limits)
    actions = sess.receive(frame(m.SyncUpdate(DOC, b"\x00" * 2000)))
    assert actions[-1] == s.Disconnect(CLOSE_RESET, "too much data before authentication")


def test_document_names() -> None:
    assert parse_document_name("h:b") == BlockName("h", "b", None)
    assert parse_document_name("h:b:v12") == BlockName("h", "b", 12)
    assert parse_document_name("h:b:v3\x00session") == BlockName("h", "b", 3)
    assert parse_document_name("events") == EventsName()
    for bad in ("", "h", "h:b:x", "h:b:v", "h/x:b", "h:b:v1:extra", "a" * 129 + ":b"):
        assert parse_document_name(bad) is None, bad


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20), st.booleans())
def test_any_bytes_give_actions_never_exceptions(frames: list[bytes], token: bool) -> None:
    sess = s.LiveSession(connection_token=token)
    for data in frames:
        for action in sess.receive(data):
            if isinstance(action, s.Authorize):
                sess.authorized(action.address)
            assert isinstance(
                action,
                (s.Send, s.Authorize, s.OpenDocument, s.Deliver, s.CloseDocument, s.Disconnect),
            )
    assert sess._queued_bytes >= 0 and sess._queued_messages >= 0


def test_protocol_doc_lists_every_message_and_event_type() -> None:
    from pathlib import Path

    from heaper_trio.protocol.events import EVENT_FIELDS

    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    for name in (
        "Sync",
        "Awareness",
        "Auth",
        "QueryAwareness",
        "SyncReply",
        "Stateless",
        "BroadcastStateless",
        "Close",
        "SyncStatus",
        "Ping / Pong",
    ):
        assert f"| {name} |" in doc, name
    for type_, fields in EVENT_FIELDS.items():
        row = next((line for line in doc.splitlines() if line.startswith(f"| `{type_}` |")), None)
        assert row is not None, type_
        assert all(f"`{f}`" in row for f in fields), (type_, fields)
    for code in (1001, 1002, 1003, 1009, 1011, 1013, 4205, 4408):
        assert f"| {code} |" in doc, code


def test_protocol_doc_shows_events_commands_as_the_server_reads_them() -> None:
    """Every command example in the events section is one the server accepts (it once showed a
    ``command`` field, which the server answers with unknown_command), and every command the
    server knows has an example and a row."""
    import json
    from pathlib import Path

    from heaper_trio.protocol.events import COMMANDS, parse_command

    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    section = doc.split("## Events channel", 1)[1].split("\n## ", 1)[0]
    examples = [line.strip() for line in section.splitlines() if line.strip().startswith("{")]
    shown = set()
    for example in examples:
        command = parse_command(example)
        assert command is not None, f"the server refuses the documented {example}"
        shown.add(json.loads(example)["type"])
    assert shown == set(COMMANDS), shown
    for name in COMMANDS:
        assert f"| `{name}` | `heap_ids` |" in section, name
    assert "unknown_command" in section
    assert parse_command('{"command": "subscribe", "heap_ids": ["h"]}') is None


def test_timers_take_now_and_read_no_clock() -> None:
    t = s.Timeouts()
    sess = s.LiveSession(connection_token=False, now=1000.0)
    assert sess.tick(1000.0 + t.idle_s) == []  # exactly the limit is not past it
    sess.heard(1050.0)
    sess.wrote(1050.0)
    assert sess.tick(1000.0 + t.auth_s + 1) == [
        s.Disconnect(CLOSE_TIMEOUT, "no document authorized in time")
    ]
    assert sess.closed and sess.tick(5000.0) == []

    sess = s.LiveSession(connection_token=False, now=0.0)
    sess.receive(frame(m.AuthToken(DOC, "tok", "4.8.0")))
    sess.authorized(DOC)
    sess.heard(100.0)
    sess.wrote(100.0)
    assert sess.tick(100.0 + t.ping_after_s) == []
    assert sess.tick(100.0 + t.ping_after_s + 1) == [s.Send(frame(m.Ping()))]
    assert sess.tick(100.0 + t.idle_s + 1) == [
        s.CloseDocument(DOC),
        s.Disconnect(CLOSE_TIMEOUT, "no message for too long"),
    ]


def test_only_v4_providers_are_pinged() -> None:
    for version, pinged in (
        ("4.0.0", True),
        ("5.1", True),
        ("3.9.9", False),
        (None, False),
        ("next", False),
        ("", False),
    ):
        assert s.answers_ping(version) is pinged, version
        sess = s.LiveSession(connection_token=False, now=0.0)
        sess.receive(frame(m.AuthToken(DOC, "tok", version)))
        sess.authorized(DOC)
        assert (sess.tick(20.0) == [s.Send(frame(m.Ping()))]) is pinged, version
