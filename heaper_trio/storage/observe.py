"""Where storage reports its timings: group-commit batches and database round trips.

Storage must not know who listens (the metrics live in ``services/metrics.py``, above it), so
the engines call :data:`observer`, which does nothing until the services install a listener.
One process has one listener: the metrics are process-wide as well.
"""

from __future__ import annotations

from typing import Protocol


class StorageObserver(Protocol):
    def commit_batch(self, engine: str, size: int, seconds: float) -> None:
        """One group commit: ``size`` writes in one transaction that took ``seconds``."""

    def round_trip(self, engine: str, kind: str, seconds: float) -> None:
        """One database call (``kind``: read or write), from the event loop's side."""


class _Nobody:
    def commit_batch(self, engine: str, size: int, seconds: float) -> None:
        pass

    def round_trip(self, engine: str, kind: str, seconds: float) -> None:
        pass


observer: StorageObserver = _Nobody()


def set_observer(listener: StorageObserver) -> None:
    global observer
    observer = listener
