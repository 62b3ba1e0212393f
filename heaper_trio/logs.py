"""The server's log: one format chosen at start (``log_format``), request context on every line.

``text`` is for a terminal or journald: ``time LEVEL logger[pid]: message``, one timestamp per
line. ``json`` is one object per line for a log collector (Loki, Elasticsearch, ``jq``), with
the same time, level, logger and message as fields, plus ``request`` (an HTTP request) or
``connection`` (a WebSocket) when the line was written while serving one, and ``error`` (the
traceback as one string) when it carries one.

The request context travels in a context variable: the access-log middleware
(``web/access_log.py``) sets it for each ASGI call, and every task the call starts (Quart's
request task, a WebSocket's reader and writer) inherits it, so a warning written deep in a
service names the request it happened in without being handed it. The fields object is shared,
not copied, so the user id the route's authentication learns (``note_user``) reaches the
access line written when the call ends.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

ACCESS_LOGGER = "heaper_trio.access"
FORMATS = ("text", "json")


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str) -> str:
    """``text`` with control characters as ``\\xNN`` escapes: a client's path (percent-
    decoded by the server: ``%0A`` is a newline) must not start a forged line of its own in a
    text log, nor carry terminal escapes to whoever reads it."""
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


@dataclass(slots=True)
class RequestFields:
    """What is known of the request or WebSocket being served; filled in as it is learned."""

    kind: str  # "http" or "websocket"
    method: str
    path: str
    remote: str | None
    user_id: str | None = None
    started: float = field(default_factory=time.monotonic)
    status: int | None = None
    bytes_sent: int = 0
    close_code: int | None = None
    duration_ms: float | None = None  # set when the request or connection ends

    def finish(self) -> float:
        """Stop the clock (once); the duration in milliseconds."""
        if self.duration_ms is None:
            self.duration_ms = round((time.monotonic() - self.started) * 1000, 1)
        return self.duration_ms

    def as_dict(self, *, finished: bool = False) -> dict[str, Any]:
        """The JSON fields: a request's (or a connection's); its outcome once ``finished``."""
        out: dict[str, Any] = {"method": self.method, "path": self.path, "remote": self.remote}
        if self.kind == "websocket":
            del out["method"]
        if self.user_id is not None:
            out["user_id"] = self.user_id
        if finished:
            out["status"] = self.status
            out["duration_ms"] = self.finish()
            if self.kind == "http":
                out["bytes"] = self.bytes_sent
            elif self.close_code is not None:
                out["close_code"] = self.close_code
        return out


CURRENT: ContextVar[RequestFields | None] = ContextVar("heaper_request", default=None)


def current_request() -> RequestFields | None:
    return CURRENT.get()


def note_user(user_id: str) -> None:
    """Record the authenticated user of the request or connection being served (if any)."""
    fields = CURRENT.get()
    if fields is not None and fields.user_id is None:
        fields.user_id = user_id


def _context_key(fields: RequestFields) -> str:
    return "connection" if fields.kind == "websocket" else "request"


class TextFormatter(logging.Formatter):
    """``2026-01-31 12:00:00,123 INFO heaper_trio.web: message (GET /api/heaps, user u1)``.

    The context in parentheses is added to lines written during a request, not to the access
    line, whose message already is the request."""

    def __init__(self, *, with_pid: bool = False) -> None:
        pid = "[%(process)d]" if with_pid else ""  # several processes write to one log
        super().__init__(f"%(asctime)s %(levelname)s %(name)s{pid}: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields: RequestFields | None = getattr(record, "heaper_request", None)
        if fields is None or record.name == ACCESS_LOGGER:
            return line
        what = f"{fields.method} {fields.path}" if fields.kind == "http" else fields.path
        who = f", user {fields.user_id}" if fields.user_id else ""
        head, sep, tail = line.partition("\n")  # after the message, before any traceback
        return f"{head} ({what}{who}){sep}{tail}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601, milliseconds), level, logger, message,
    pid, and ``request`` / ``connection`` and ``error`` when there are any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self._time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        fields: RequestFields | None = getattr(record, "heaper_request", None)
        if fields is not None:
            finished = record.name == ACCESS_LOGGER
            out[_context_key(fields)] = fields.as_dict(finished=finished)
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["error"] = record.exc_text
        return json.dumps(out, default=str, ensure_ascii=False)

    @staticmethod
    def _time(record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


class RequestContext(logging.Filter):
    """Attaches the request being served (if any) to a record that lacks it (one made before
    ``with_request_context`` was installed)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "heaper_request"):
            record.heaper_request = CURRENT.get()
        return True


def with_request_context() -> None:
    """Make every log record carry the request being served, whichever handler formats it
    (ours, pytest's, one a deployment adds): the record factory runs in the task that logs,
    where the context variable is the request's. Idempotent; done on import."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "heaper_request_context", False):
        return

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        record.heaper_request = CURRENT.get()
        return record

    make_record.heaper_request_context = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_record)


with_request_context()


HANDLER_NAME = "heaper_trio"


def make_handler(log_format: str, *, with_pid: bool = False) -> logging.Handler:
    if log_format not in FORMATS:
        raise ValueError(f"log_format must be one of {FORMATS}, not {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(HANDLER_NAME)  # found again by name (tests remove it after a CLI run)
    formatter: logging.Formatter = (
        JsonFormatter() if log_format == "json" else TextFormatter(with_pid=with_pid)
    )
    handler.setFormatter(formatter)
    handler.addFilter(RequestContext())
    return handler


def configure(level: str, log_format: str, *, with_pid: bool = False) -> None:
    """Route every logger (ours, hypercorn's, asyncpg's, trio's) to one stderr handler.

    Replaces the root logger's handlers, so calling it again (a test, a worker) does not
    double the lines."""
    root = logging.getLogger()
    root.handlers = [make_handler(log_format, with_pid=with_pid)]
    root.setLevel(level.upper())
