"""Block sync over HTTP: push a local pycrdt document, pull what it lacks, list a heap's changes.

A :class:`LocalBlock` is one block as a client keeps it: its Yjs document, the ``sync_version``
the server last gave, and the state vector the server was last known to have, so that a push
sends only what the server lacks. Answers are merged into the local document as they come.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pycrdt import Doc

from heaper_trio.client.errors import HeaperError

if TYPE_CHECKING:
    from heaper_trio.client.session import HeaperClient

EMPTY_STATE_VECTOR = b"\x00"


def b64(data: bytes) -> str:
    """Standard base64 with padding: how ``update`` and ``state_vector`` travel."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


@dataclass
class LocalBlock:
    """One block as a client holds it. ``doc`` may be replaced by :meth:`Blocks.pull` (when the
    server's ``sync_version`` moved on, the contract says: replace the local document)."""

    heap_id: str
    block_id: str
    doc: Doc = field(default_factory=Doc)
    sync_version: int | None = None  # None: never synced
    server_state: bytes = EMPTY_STATE_VECTOR  # what the server was last known to have
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class SyncResult:
    """One block's answer: ``status`` as the server gave it (push: ``created``, ``ok``,
    ``version_mismatch``, ``forbidden``, ``deleted``, ``invalid``, ``conflict``; pull: ``ok``,
    ``version_mismatch``, ``deleted``, ``not_found``), ``error`` when it says why, ``raw``."""

    status: str
    sync_version: int | None
    error: str | None
    raw: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "created")


@dataclass(frozen=True, slots=True)
class Delta:
    """A page of ``GET /api/sync/delta``: ask again from ``server_time`` while ``has_more``."""

    changed_blocks: list[dict[str, Any]]
    deleted_blocks: list[dict[str, Any]]
    server_time: int
    has_more: bool


class Blocks:
    """``client.blocks``: push, pull, fetch, delta."""

    def __init__(self, client: HeaperClient) -> None:
        self._client = client

    async def _sync(self, route: str, item: dict[str, Any]) -> dict[str, Any]:
        r = await self._client.post(route, json={"blocks": [item]})
        body: Any = (
            r.json() if r.headers.get("content-type", "").startswith("application/json") else None
        )
        # 422 invalid_update still lists the block's own status; other errors raise
        if not (isinstance(body, dict) and isinstance(body.get("blocks"), list) and body["blocks"]):
            raise HeaperError(r)
        return dict(body["blocks"][0])

    async def push(self, block: LocalBlock) -> SyncResult:
        """Send what the server lacks of ``block.doc``; merge what the document lacks (the
        answer's ``update``) into it. A ``version_mismatch`` changes nothing: pull, which
        replaces the document with the server's, and make the change again."""
        item: dict[str, Any] = {
            "block_id": block.block_id,
            "workspace_id": block.heap_id,
            "update": b64(block.doc.get_update(block.server_state)),
            "state_vector": b64(block.doc.get_state()),
        }
        if block.sync_version is not None:
            item["sync_version"] = block.sync_version
        answer = await self._sync("/api/sync/push", item)
        result = _result(answer)
        if result.ok:
            block.doc.apply_update(unb64(answer["update"]))
            block.server_state = unb64(answer["state_vector"])
            block.sync_version = result.sync_version
        elif result.status == "deleted":
            block.deleted = True
        return result

    async def pull(self, block: LocalBlock) -> SyncResult:
        """Merge what ``block.doc`` lacks into it. On ``version_mismatch`` (the block's
        document was replaced on the server: a restore) ``block.doc`` becomes a new document
        holding the server's full state; changes never pushed are not in it."""
        item: dict[str, Any] = {
            "block_id": block.block_id,
            "state_vector": b64(block.doc.get_state()),
        }
        if block.sync_version is not None:
            item["sync_version"] = block.sync_version
        answer = await self._sync("/api/sync/pull", item)
        result = _result(answer)
        if result.status == "ok":
            block.doc.apply_update(unb64(answer["update"]))
            block.sync_version = result.sync_version
        elif result.status == "version_mismatch":
            block.doc = Doc()
            block.doc.apply_update(unb64(answer["full_state"]))
            block.server_state = block.doc.get_state()
            block.sync_version = result.sync_version
        elif result.status == "deleted":
            block.deleted = True
        return result

    async def fetch(self, heap_id: str, block_id: str) -> LocalBlock:
        """A block as the server has it, in a new local document (``sync_version`` None and an
        empty document if the server does not know it: ``not_found``)."""
        block = LocalBlock(heap_id, block_id)
        block.sync_version = 0  # "never saw it": the full state and the current version
        result = await self.pull(block)
        if result.status != "version_mismatch":
            block.sync_version = None
        return block

    async def delta(self, heap_id: str, since: int = 0, limit: int | None = None) -> Delta:
        """One page of the blocks changed and removed in a heap after ``since`` (Unix ms)."""
        params: dict[str, Any] = {"workspace_id": heap_id, "since": since}
        if limit is not None:
            params["limit"] = limit
        answer = await self._client.call("GET", "/api/sync/delta", params=params)
        return Delta(
            changed_blocks=list(answer["changed_blocks"]),
            deleted_blocks=list(answer["deleted_blocks"]),
            server_time=int(answer["server_time"]),
            has_more=bool(answer["has_more"]),
        )

    async def changes(self, heap_id: str, since: int = 0) -> AsyncIterator[Delta]:
        """Every page after ``since``, until ``has_more`` is false; the last page's
        ``server_time`` is the ``since`` of the next catch-up."""
        while True:
            page = await self.delta(heap_id, since)
            yield page
            if not page.has_more:
                return
            since = page.server_time


def _result(answer: dict[str, Any]) -> SyncResult:
    version = answer.get("sync_version")
    return SyncResult(
        status=str(answer["status"]),
        sync_version=int(version) if isinstance(version, int) else None,
        error=answer.get("error"),
        raw=answer,
    )
