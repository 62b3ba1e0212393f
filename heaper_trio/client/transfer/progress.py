"""A progress bar on a terminal (stderr), nothing otherwise: exports and imports run from cron
jobs and scripts too, whose logs should hold only what went wrong."""

from __future__ import annotations

import sys
import time
from typing import IO

WIDTH = 24


class Bar:
    def __init__(self, what: str, stream: IO[str] | None = None, *, quiet: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.on = not quiet and self.stream.isatty()
        self.what = what
        self._last = 0.0
        self._width = 0

    def show(self, done: int, total: int, label: str = "", *, force: bool = False) -> None:
        if not self.on:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1 and done < total:
            return
        self._last = now
        filled = WIDTH * done // total if total else WIDTH
        bar = "#" * filled + "-" * (WIDTH - filled)
        line = f"{self.what} [{bar}] {done}/{total} {label}"[:100]
        self.stream.write("\r" + line.ljust(self._width))
        self._width = len(line)
        self.stream.flush()

    def warn(self, text: str) -> None:
        """Shown whether or not on a terminal: a log should say what was left out."""
        if self.on and self._width:
            self.stream.write("\n")
            self._width = 0
        print(f"heaper_trio: {self.what}: warning: {text}", file=self.stream)

    def done(self, text: str) -> None:
        if self.on:
            self.stream.write("\r" + f"{self.what}: {text}".ljust(self._width) + "\n")
            self.stream.flush()
            self._width = 0
