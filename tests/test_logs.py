"""The log a self-hoster reads: its two formats, the request context, the outage lines."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from heaper_trio import logs
from heaper_trio.settings import load_settings
from heaper_trio.storage.postgres.outage import DatabaseOutage, quiet_pool_retries
from heaper_trio.web.access_log import remote_address
from heaper_trio.web.quart_compat import pings_end_with_the_stream


def record(msg: str, *, name: str = "heaper_trio.web", exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord(name, logging.WARNING, __file__, 1, msg, None, exc_info)
    logs.RequestContext().filter(rec)
    return rec


# -- formats (pure) ---------------------------------------------------------------------------
def test_json_line_has_time_level_logger_message_and_the_request() -> None:
    fields = logs.RequestFields("http", "POST", "/api/heaps", "10.0.0.7", user_id="u1")
    token = logs.CURRENT.set(fields)
    try:
        rec = record("slow disk", exc=True)
    finally:
        logs.CURRENT.reset(token)
    line = logs.JsonFormatter().format(rec)
    assert "\n" not in line  # one object per line, the traceback inside it
    out = json.loads(line)
    assert out["time"].endswith("Z") and out["time"][10] == "T"
    assert (out["level"], out["logger"], out["message"]) == (
        "WARNING",
        "heaper_trio.web",
        "slow disk",
    )
    assert out["request"] == {
        "method": "POST",
        "path": "/api/heaps",
        "remote": "10.0.0.7",
        "user_id": "u1",
    }
    assert "ValueError: boom" in out["error"]


def test_text_line_has_one_timestamp_and_names_the_request() -> None:
    fields = logs.RequestFields("websocket", "GET", "/ws", "10.0.0.7", user_id="u1")
    token = logs.CURRENT.set(fields)
    try:
        rec = record("frame refused", exc=True)
    finally:
        logs.CURRENT.reset(token)
    head, _, tail = logs.TextFormatter().format(rec).partition("\n")
    assert head.endswith("WARNING heaper_trio.web: frame refused (/ws, user u1)"), head
    assert head.count(":") == 3  # hh:mm:ss and the logger's colon: one timestamp
    assert "ValueError: boom" in tail
    # outside a request: the plain line; the pid when several processes share the log
    plain = logs.TextFormatter(with_pid=True).format(record("hello"))
    assert plain.endswith("]: hello") and "(" not in plain


def test_log_format_is_a_checked_setting() -> None:
    assert load_settings(environ={}).log_format == "text"
    assert load_settings(environ={"HEAPER_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(Exception, match=r"log_format|LOG_FORMAT"):
        load_settings(environ={"HEAPER_LOG_FORMAT": "xml"})


def test_configure_replaces_the_handler_instead_of_adding_one() -> None:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    try:
        logs.configure("info", "json")
        logs.configure("warning", "json")
        ours = [h for h in root.handlers if isinstance(h.formatter, logs.JsonFormatter)]
        assert len(ours) == len(root.handlers) == 1
        assert root.level == logging.WARNING
    finally:
        root.handlers, root.level = saved, level


# -- pure pieces ----------------------------------------------------------------------------------
def test_an_outage_is_one_error_and_one_info_however_many_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    outage = DatabaseOutage()
    outage.succeeded()  # up, and nothing to say
    for _ in range(50):
        outage.failed(ConnectionRefusedError(111, "Connect call failed\n('127.0.0.1', 5432)"))
    outage.failed("connection lost", "live LISTEN")
    outage.succeeded()
    outage.succeeded()
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert len(said) == 2, said
    assert said[0][0] == "ERROR" and "\n" not in said[0][1]
    assert said[0][1].startswith("postgres unavailable: ConnectionRefusedError: [Errno 111]")
    assert said[1][0] == "INFO" and said[1][1].startswith("postgres available again after")
    assert outage.outages == 1 and not outage.down


def test_asyncpg_pool_retries_lose_their_traceback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    quiet_pool_retries()
    quiet_pool_retries()  # idempotent
    pool_log = logging.getLogger("asyncpg.pool")
    try:
        raise ConnectionRefusedError(111, "Connect call failed")
    except ConnectionRefusedError:
        pool_log.warning("Failed to restore the pool connection floor; retrying", exc_info=True)
    try:
        raise ValueError("not a connection problem")
    except ValueError:
        pool_log.warning("something else", exc_info=True)
    assert [r.getMessage() for r in caplog.records] == ["something else"]  # kept, traceback too


def test_remote_address_trusts_forwarded_for_only_when_told() -> None:
    scope = {"client": ("10.0.0.2", 5555), "headers": [(b"x-forwarded-for", b"1.2.3.4, 5.6.7.8")]}
    assert remote_address(scope, trust_forwarded_for=False) == "10.0.0.2"
    assert remote_address(scope, trust_forwarded_for=True) == "5.6.7.8"
    assert remote_address({"headers": []}, trust_forwarded_for=False) is None


def test_websocket_pings_end_with_their_stream() -> None:
    assert pings_end_with_the_stream()  # patched on import of heaper_trio.app
