"""hypercorn's keep-alive idle timer on one task per connection, not one per request
(hypercorn 0.18.0).

``TCPServer`` times an idle keep-alive connection with a ``TrioSingleTask``: every request
stops it (``Updated(idle=False)``: the timer task is cancelled) and every answer restarts it
(``Updated(idle=True)``: a new task is started with ``nursery.start``, the old one is
cancelled and unwinds). Per request that is a task spawned, a task cancelled, two lock
round trips and several passes of trio's run loop: in py-spy under wrk about a sixth of
what hypercorn spends on a bare hello (issue 12, item 3). ``IdleTimer`` keeps the same
contract on one task per connection: pausing sets its deadline to infinity, restarting moves
it to ``now + keep_alive_timeout``; when the deadline passes while the connection is idle, or
the server shuts down while it is idle, the connection is closed as upstream's
``_idle_timeout`` closes it. A deadline that passed while a request came in does not close:
the request moved it first (upstream's cancelled timer task did not close either).

``stop_idle_timer_at_eof`` (``web/quart_compat.py``) ends the task when the client has
gone, so the connection's task group can finish. The names used are in
``web/quart_compat.HOOKS``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import trio
from hypercorn.trio.tcp_server import TCPServer

_PATCHED = "_heaper_one_idle_task"


class IdleTimer:
    """What ``TCPServer`` asks of its ``idle_task``: ``restart`` and ``stop``; and ``end``."""

    def __init__(self, server: TCPServer) -> None:
        self.server = server
        self.deadline = math.inf  # idle until then; infinite while a request is in hand
        self._scope: trio.CancelScope | None = None
        self._started = False
        self._ended = False
        self._idle = trio.Event()  # set by restart: the connection is idle again

    async def restart(self, task_group: Any, action: Callable[..., Any]) -> None:
        self.deadline = trio.current_time() + self.server.config.keep_alive_timeout
        self._idle.set()
        if self._scope is not None:
            self._scope.deadline = self.deadline
        if not self._started:
            self._started = True
            await task_group._nursery.start(self._watch)

    async def stop(self) -> None:
        self.deadline = math.inf
        if self._idle.is_set():  # a new busy spell (the watcher may wait on the current one)
            self._idle = trio.Event()
        if self._scope is not None:
            self._scope.deadline = math.inf

    def end(self) -> None:
        """The connection is over: the task ends without closing anything."""
        self._ended = True
        self._idle.set()  # the watcher may be waiting for the connection to go idle
        if self._scope is not None:
            self._scope.cancel()

    async def _watch(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        terminated = self.server.context.terminated
        task_status.started()
        while not self._ended:
            with trio.CancelScope(deadline=self.deadline) as self._scope:
                await terminated.wait()
            self._scope = None
            if self._ended:
                return
            if self.deadline == math.inf:  # a request is in hand: wait until it is answered
                await self._idle.wait()
                continue
            if terminated.is_set() or trio.current_time() >= self.deadline:
                break  # idle past the timeout, or shutting down while idle
        if self._ended:
            return
        with trio.CancelScope(shield=True):  # as upstream's _idle_timeout
            await self.server._initiate_server_close()


def one_idle_task_per_connection() -> None:
    """Give every ``TCPServer`` an :class:`IdleTimer` as its ``idle_task``. Idempotent."""
    original: Callable[..., None] = TCPServer.__init__
    if getattr(original, _PATCHED, False):
        return

    def __init__(self: TCPServer, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.idle_task = IdleTimer(self)  # type: ignore[assignment]

    setattr(__init__, _PATCHED, True)
    __init__.__wrapped__ = original  # type: ignore[attr-defined]  # read by quart_compat.HOOKS
    TCPServer.__init__ = __init__  # type: ignore[method-assign]


def idle_task_per_connection() -> bool:
    return bool(getattr(TCPServer.__init__, _PATCHED, False))
