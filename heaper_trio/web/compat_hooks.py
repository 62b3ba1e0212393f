"""The hypercorn internals the per-request shortcuts rely on (``web/h11_writes.py``,
``web/app_queue.py``, ``web/idle_timer.py``, and the guard's ``receive_nowait``), and the
``Hook`` record every entry of ``web/quart_compat.HOOKS`` is: kept apart so that module stays
small. ``tests/test_quart_compat.py`` checks each entry against the installed versions."""

from __future__ import annotations

from dataclasses import dataclass

from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import HTTPStream
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import TCPServer


@dataclass(frozen=True)
class Hook:
    """One thing we rely on: ``name`` on ``owner`` (a class attribute; with ``instance`` an
    attribute its ``__init__`` assigns; with ``used_by`` a global or attribute that method's
    code names), and why."""

    owner: type
    name: str
    why: str
    instance: bool = False
    used_by: str = ""

    def present(self) -> bool:
        if self.instance or self.used_by:
            method = getattr(self.owner, self.used_by or "__init__", None)
            method = getattr(method, "__wrapped__", method)  # upstream's, under our patch
            code = getattr(method, "__code__", None)
            return code is not None and self.name in code.co_names
        return hasattr(self.owner, self.name)


PER_REQUEST_HOOKS: tuple[Hook, ...] = (
    Hook(
        TaskGroup,
        "receive",
        used_by="spawn_app",
        why="web/http_guard.py: an app's ASGI receive is its queue's MemoryReceiveChannel"
        ".receive, so what is queued is taken with receive_nowait",
    ),
    Hook(
        TCPServer,
        "_initiate_server_close",
        why="web/idle_timer.py closes an idle connection with it, as _idle_timeout does",
    ),
    Hook(
        TCPServer,
        "_idle_timeout",
        used_by="run",
        why="web/idle_timer.py: the idle action run() hands idle_task.restart, replaced by "
        "one task per connection",
    ),
    Hook(
        TaskGroup,
        "_nursery",
        instance=True,
        why="web/idle_timer.py starts its one task per connection in the connection's nursery",
    ),
    Hook(
        HTTPStream,
        "handle",
        why="web/app_queue.py wraps it: body parts are queued for the app with send_nowait",
    ),
    Hook(
        HTTPStream,
        "app_put",
        used_by="handle",
        why="web/app_queue.py: the app queue's MemorySendChannel.send (TaskGroup.spawn_app)",
    ),
    Hook(
        TaskGroup,
        "send",
        used_by="spawn_app",
        why="web/app_queue.py: spawn_app hands HTTPStream its app queue's send channel's send",
    ),
    Hook(
        H11Protocol,
        "_send_h11_event",
        why="web/h11_writes.py replaces it: a fixed-length answer's head is written with its "
        "body, in one socket write",
    ),
    Hook(
        H11Protocol,
        "stream_send",
        why="web/h11_writes.py wraps it: an event other than a body part writes a held head first",
    ),
    Hook(
        H11Protocol,
        "connection",
        instance=True,
        why="web/h11_writes.py: the h11 connection the held head is produced by",
    ),
)
