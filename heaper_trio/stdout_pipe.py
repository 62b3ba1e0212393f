"""A command whose reader went away (``users list --json | head``) ends quietly.

Python's documented recipe (the ``signal`` module's note on SIGPIPE): catch BrokenPipeError,
point stdout at /dev/null so the interpreter's last flush cannot fail again, and exit.
The exit status is 141 (128 + SIGPIPE), what ``cat``, ``grep`` and every other Unix filter
report when they die writing to a closed pipe: the output did not all arrive, so it is not a
success (a ``set -o pipefail`` script sees the same status as with any other tool), and the
shell itself prints nothing for it. Only a broken *stdout* is taken this way; a BrokenPipeError
from anywhere else (a socket, a child process) stays a traceback, since it is a bug.
"""

from __future__ import annotations

import functools
import os
import select
import sys
from collections.abc import Callable
from typing import ParamSpec

SIGPIPE_STATUS = 141

P = ParamSpec("P")


def quiet_on_broken_pipe(main: Callable[P, int]) -> Callable[P, int]:
    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            code = main(*args, **kwargs)
            sys.stdout.flush()  # inside the try: the last buffered output fails here
            return code
        except BaseException as e:
            if not (_is_broken_pipe(e) and _stdout_reader_gone()):
                raise
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            return SIGPIPE_STATUS

    return run


def _is_broken_pipe(e: BaseException) -> bool:
    """A BrokenPipeError, alone or the single leaf of exception groups (trio's nurseries)."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return isinstance(e, BrokenPipeError)


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe (or socket) whose reading end is closed: poll reports an
    error on such a writing end."""
    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False
