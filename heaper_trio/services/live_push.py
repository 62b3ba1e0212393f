"""Live pushes (``/ws``): stored like an HTTP push, one commit per batch, answered only once
durable, but without the reads an HTTP push makes ahead of its commit.

A live document commits many times a second, and at 100 subscribers what each commit costs
once counts (issue 12). An HTTP push first reads the heap (is it the user's?) and the
tombstones (was the block purged?), each a round trip to storage. For a live edit into a
document this process holds in its cache (its room has it open), the commit checks both in
its own transaction instead: the heap's owner (``BlockChange.heap_owner``) and the block's
log position (a purged block has no row, a deleted heap no heap). Anything the commit refuses,
and anything but a plain change (a stale sync version, an update that does not apply, no
change at all), goes the checked way (``DocumentService._push_items``), which reads afresh and
answers as an HTTP push does: a heap deleted or given away, or a block purged, by another
process is refused all the same.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from heaper_trio import crdt
from heaper_trio.records import User
from heaper_trio.services.push import PushBatch
from heaper_trio.services.push_unchecked import push_unchecked
from heaper_trio.services.sync_types import PushOutcome, PushStatus

if TYPE_CHECKING:
    from heaper_trio.services.documents import DocumentService

# Rooms larger than this take the checked path. bench_ws.py N=1000 under load (heaper_trio
# alone, 2 runs each, load 5-6): 6.3-7.2 us of server CPU per delivery with the unchecked path
# against 3.1-3.8 without; at 1,000 subscribers the fan-out, not the commit, is the cost, and
# a quicker commit leaves fewer updates to each fan-out. At N=100 it is the other way round.
LIVE_UNCHECKED_MAX_SUBS = 256


async def push_live(
    docs: DocumentService,
    user: User,
    heap_id: str,
    block_id: str,
    updates: list[bytes],
    sync_version: int | None,
    origin: object,
    unchecked: bool = True,
) -> PushOutcome:
    """The batch in one commit; the caller checked the heap when the document was opened,
    and the commit (or the checked path) checks it again, as it may have changed since.
    ``unchecked=False``: always the checked path (see ``LIVE_UNCHECKED_MAX_SUBS``)."""
    try:
        for update in updates:
            crdt.check_update(update)
    except crdt.InvalidUpdate as e:  # the whole batch is refused, as one push item is
        return PushOutcome(block_id, PushStatus.invalid, error=e.code)
    batch = PushBatch(0, block_id, heap_id, tuple(updates), None, sync_version, search_later=True)
    if unchecked:
        settled = await push_unchecked(docs, user, replace(batch, heap_owner=user.id), origin)
        if settled is not None:
            return settled.outcome
    [settled] = await docs._push_items(user, [batch], origin=origin)
    return settled.outcome
