"""The push pipeline's working values: a pushed block checked, then applied in memory, then
settled. Each stage is a new frozen value, so a retry after a write conflict starts from the
checked batch again and nothing half-applied leaks into an answer."""

from __future__ import annotations

from dataclasses import dataclass, replace

from heaper_trio import crdt
from heaper_trio.records import BlockProjection
from heaper_trio.services.commits import Committed
from heaper_trio.services.doc_cache import DocumentBase
from heaper_trio.services.projection import projection_of
from heaper_trio.services.sync_types import PushItemRequest, PushOutcome, PushStatus, Undecodable


@dataclass(frozen=True)
class PushBatch:
    """Updates for one block, checked: what the push pipeline works on. ``index`` is its place
    in the request (answers keep the order, and a block id may come twice); ``seen_version``
    is the block's sync_version as last seen, told with a refusal after a retry."""

    index: int
    block_id: str
    heap_id: str
    updates: tuple[bytes, ...]
    state_vector: bytes | None
    sync_version: int | None
    seen_version: int = 1
    search_later: bool = False  # a live edit: ``BlockChange.search_later``
    heap_owner: str | None = None  # ``BlockChange.heap_owner``

    def refused(self, status: PushStatus, error: str) -> PushOutcome:
        return PushOutcome(self.block_id, status, self.seen_version, error)


@dataclass(frozen=True)
class Prepared:
    """A batch applied to its block's document in memory, not yet committed."""

    batch: PushBatch
    doc: crdt.BlockDocument
    base: DocumentBase | None  # None: the block does not exist yet
    changed: bool
    was_deleted: bool

    @property
    def version(self) -> int:
        return self.base.sync_version if self.base is not None else 1


@dataclass(frozen=True)
class Settled:
    """How a batch ended, with the document it ended on (for the HTTP answer's diff);
    ``gone_for_good``: the commit left ``meta_v0.permanently_deleted_at`` set, so the block
    is purged once the commit is durable."""

    outcome: PushOutcome
    doc: crdt.BlockDocument | None = None
    gone_for_good: bool = False


def projected(doc: crdt.BlockDocument) -> BlockProjection:
    """The columns a commit stores. A document with ``permanently_deleted_at`` and no
    ``deleted_at`` is stored as trashed too: storage purges only trashed blocks, and should
    the purge after the commit not happen (a crash in between), the block waits hidden in
    the trash, rather than showing up again, until the next start purges it
    (``HeapService.finish_purges``) or the trash is emptied."""
    p = projection_of(doc)
    if p.permanently_deleted_at is not None and p.deleted_at is None:
        return replace(p, deleted_at=p.permanently_deleted_at)
    return p


def checked(item: PushItemRequest, index: int) -> PushBatch | PushOutcome:
    """A pushed block's payload checked before anything is read: the update, then the state
    vector (whichever fails first names the error)."""

    def invalid(code: str) -> PushOutcome:
        return PushOutcome(item.block_id, PushStatus.invalid, error=code)

    if isinstance(item.update, Undecodable):
        return invalid(item.update.code)
    try:
        crdt.check_update(item.update)
        if isinstance(item.state_vector, Undecodable):
            return invalid(item.state_vector.code)
        if item.state_vector is not None:
            crdt.check_state_vector(item.state_vector)
    except crdt.InvalidUpdate as e:
        return invalid(e.code)
    return PushBatch(
        index, item.block_id, item.heap_id, (item.update,), item.state_vector, item.sync_version
    )


def with_diff(settled: Settled, state_vector: bytes | Undecodable | None) -> PushOutcome:
    """An accepted block's answer carries the document's state vector and what the client
    lacks given its own."""
    outcome, doc = settled.outcome, settled.doc
    if doc is None or outcome.status not in (PushStatus.ok, PushStatus.created):
        return outcome
    known = state_vector if isinstance(state_vector, bytes) else None
    with doc.reading():
        return replace(outcome, state_vector=doc.state_vector(), update=doc.diff(known))


def gone_for_good(
    committed: dict[int, Committed], done: dict[int, Settled]
) -> dict[str, list[str]]:
    """Per heap, the blocks a push purges: those whose last commit in it (by request order)
    left ``permanently_deleted_at`` set. The document service purges them as emptying the
    trash does, once the commit is durable and announced and still under the blocks' locks,
    so no push in this process slips in between."""
    last = {committed[i].block_id: (committed[i].heap_id, done[i]) for i in sorted(committed)}
    doomed: dict[str, list[str]] = {}
    for block_id, (heap_id, settled) in last.items():
        if settled.gone_for_good:
            doomed.setdefault(heap_id, []).append(block_id)
    return doomed
