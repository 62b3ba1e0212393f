"""How a block's old history is thinned (pure: rows in, a plan out; ``HistoryService`` reads
and writes).

Rows older than a day are merged into one row per hour, older than a week into one per day
(UTC), and everything older than ``history_retention_days`` into a single base row, the full
state as of its last update. Merging is lossless (``crdt.merge_updates``): the state as of a
kept row's ``seq`` is the same before and after; only the points in between are gone. A base
row (a restore, an earlier base) is never merged into the rows before it, so a merged row never
spans two ``sync_version``\\ s; a base row merged with the updates after it stays a base.
The cut-offs are aligned to whole hours and days, so a bucket is thinned once, complete.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from heaper_trio import crdt
from heaper_trio.records.history import DAILY, EXPIRED, HOURLY, HistoryKind, HistoryRow

HOUR_MS = 3600 * 1000
DAY_MS = 24 * HOUR_MS


@dataclass(frozen=True)
class Cuts:
    """Rows created before ``day`` are thinned per hour, before ``week`` per day, before
    ``gone`` folded into the base."""

    day: int
    week: int
    gone: int

    @classmethod
    def at(cls, now_ms: int, retention_days: int) -> Cuts:
        day = (now_ms - DAY_MS) // HOUR_MS * HOUR_MS
        week = min(day, (now_ms - 7 * DAY_MS) // DAY_MS * DAY_MS)
        gone = min(week, (now_ms - retention_days * DAY_MS) // DAY_MS * DAY_MS)
        return cls(day, week, gone)

    def level(self, created_at: int) -> int:
        return EXPIRED if created_at < self.gone else DAILY if created_at < self.week else HOURLY

    def bucket(self, created_at: int) -> tuple[int, int]:
        level = self.level(created_at)
        size = {EXPIRED: 0, DAILY: DAY_MS, HOURLY: HOUR_MS}[level]
        return level, created_at // size if size else 0


@dataclass(frozen=True)
class Plan:
    spans: list[tuple[int, int, int]]  # (first seq, last seq, rows): rows replaced
    rows: list[HistoryRow]  # what replaces them


def _groups(rows: list[HistoryRow], cuts: Cuts) -> Iterator[list[HistoryRow]]:
    """Consecutive rows of one bucket; a base row starts a new group, but for the rows past
    the retention, which fold into one group from the latest base among them."""
    group: list[HistoryRow] = []
    for row in rows:
        key = cuts.bucket(row.created_at)
        if group and (key != cuts.bucket(group[0].created_at) or (row.base and key[0] != EXPIRED)):
            yield group
            group = []
        group.append(row)
    if group:
        yield group


def _merged(group: list[HistoryRow], level: int) -> HistoryRow:
    if level == EXPIRED:  # everything before the latest base is in it, so dropped
        start = max((i for i, r in enumerate(group) if r.base), default=0)
        parts, kind = group[start:], HistoryKind.snapshot
    else:
        parts, kind = group, group[0].kind
    data = crdt.merge_updates([r.data or b"" for r in parts])
    authors = {r.author_id for r in parts}
    last = group[-1]
    return HistoryRow(
        block_id=last.block_id,
        seq=last.seq,
        first_seq=group[0].first_seq,
        kind=kind,
        level=level,
        sync_version=last.sync_version,
        created_at=last.created_at,
        author_id=authors.pop() if len(authors) == 1 else None,
        size=len(data),
        data=data,
    )


def plan(rows: list[HistoryRow], cuts: Cuts) -> Plan:
    """What to replace among ``rows`` (a block's history rows created before ``cuts.day``,
    oldest first) so each holds one row per bucket of its age."""
    spans: list[tuple[int, int, int]] = []
    added: list[HistoryRow] = []
    for group in _groups(rows, cuts):
        level = cuts.level(group[0].created_at)
        if len(group) == 1 and group[0].level >= level:
            continue
        if level == EXPIRED and not (any(r.base for r in group) or group[0].first_seq == 1):
            continue  # not a full history from its start: it cannot become a base
        spans.append((group[0].seq, group[-1].seq, len(group)))
        added.append(_merged(group, level))
    return Plan(spans, added)
