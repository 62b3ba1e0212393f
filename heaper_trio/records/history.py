"""Block history: the rows kept apart from the load path (``block_history``) and the live log
rows after the snapshot, seen as one sequence."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class HistoryKind(str, Enum):
    update = "update"  # one pushed update, or consecutive ones merged by thinning
    restore = "restore"  # the full state a restore put in place (a base)
    snapshot = "snapshot"  # the full state of everything up to ``seq`` (a base)


@dataclass(frozen=True)
class HistoryRow:
    """Updates ``first_seq..seq`` of one block. A base row (restore, snapshot) is a full state:
    the state as of ``seq`` needs no row before it. ``level`` says how far thinning merged it:
    0 as pushed, 1 one row per hour, 2 per day, 3 the base of everything past the retention."""

    block_id: str
    seq: int
    first_seq: int
    kind: HistoryKind
    level: int
    sync_version: int
    created_at: int
    author_id: str | None
    size: int
    data: bytes | None = None  # only when asked for

    @property
    def base(self) -> bool:
        return self.kind is not HistoryKind.update


# Thinning levels
RAW, HOURLY, DAILY, EXPIRED = 0, 1, 2, 3
