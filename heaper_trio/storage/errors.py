"""Named signals of storage and of the services reading it, for "that is not there".

Deliberately not ``LookupError`` subclasses: a handler written for these must never catch a
``KeyError`` or ``IndexError`` from a bug and turn it into a polite "denied" or "conflict".
Importable without an engine (services catch them; only engines and services raise them).
"""

from __future__ import annotations


class StorageSignal(Exception):
    """Something a caller asked about does not exist where it was looked for."""


class HeapNotFound(StorageSignal):
    """The heap of a change went away (deleted meanwhile): its change is refused as a
    conflict, the rest of the transaction goes on."""

    def __init__(self, heap_id: str) -> None:
        super().__init__(f"heap {heap_id} does not exist")
        self.heap_id = heap_id


class BlockInOtherHeap(StorageSignal):
    """A block id is held by another heap than the one addressed. Block ids are global and
    guessable, so nothing of that block may reach the address; ``str()`` is the code a live
    client is denied with."""

    code = "block_in_other_heap"

    def __init__(self, message: str = code) -> None:
        super().__init__(message)


class LastAdmin(StorageSignal):
    """The change would leave no approved admin (``keep_an_admin``): nothing was written."""

    def __init__(self, user_id: str) -> None:
        super().__init__(f"{user_id} is the last approved admin")
        self.user_id = user_id


__all__ = ["BlockInOtherHeap", "HeapNotFound", "LastAdmin", "StorageSignal"]
