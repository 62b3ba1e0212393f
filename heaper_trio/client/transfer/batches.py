"""Many blocks per sync request: an export reads a heap, an import writes one, block by
block would cost a round trip each (and a commit each: the server commits a push's blocks
together). A server configured with a smaller ``max_sync_batch`` answers 413
``batch_too_large``; the batch is then halved until it fits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from pycrdt import Doc

from heaper_trio.client.blocks import b64, unb64
from heaper_trio.client.errors import HeaperError
from heaper_trio.client.session import HeaperClient

BATCH = 50
T = TypeVar("T")
R = TypeVar("R")


async def _in_batches(
    items: Sequence[T], send: Callable[[Sequence[T]], Awaitable[list[R]]], size: int = BATCH
) -> list[R]:
    out: list[R] = []
    i = 0
    while i < len(items):
        chunk = items[i : i + size]
        try:
            out += await send(chunk)
        except HeaperError as e:
            if e.code != "batch_too_large" or size == 1:
                raise
            size = max(1, size // 2)
            continue
        i += len(chunk)
    return out


async def pull_full(client: HeaperClient, block_ids: Sequence[str]) -> dict[str, Doc | None]:
    """Each block's whole document as the server has it now (None: gone, or not yours)."""

    async def send(ids: Sequence[str]) -> list[tuple[str, Doc | None]]:
        body = {"blocks": [{"block_id": i, "sync_version": 0} for i in ids]}
        answer = await client.call("POST", "/api/sync/pull", json=body)
        out: list[tuple[str, Doc | None]] = []
        for row in answer["blocks"]:
            doc: Doc | None = None
            if isinstance(row.get("full_state"), str):
                doc = Doc()
                doc.apply_update(unb64(row["full_state"]))
            out.append((str(row["block_id"]), doc))
        return out

    return dict(await _in_batches(block_ids, send))


async def push_new(
    client: HeaperClient, heap_id: str, blocks: Sequence[tuple[str, Doc]]
) -> dict[str, dict[str, Any]]:
    """Push whole documents; each block's answer (``status``, ``error``) by id."""

    async def send(chunk: Sequence[tuple[str, Doc]]) -> list[tuple[str, dict[str, Any]]]:
        items = [
            {"block_id": bid, "workspace_id": heap_id, "update": b64(doc.get_update())}
            for bid, doc in chunk
        ]
        r = await client.post("/api/sync/push", json={"blocks": items})
        body: Any = (
            r.json() if r.headers.get("content-type", "").startswith("application/json") else None
        )
        if not (isinstance(body, dict) and isinstance(body.get("blocks"), list)):
            raise HeaperError(r)
        return [(str(row["block_id"]), dict(row)) for row in body["blocks"]]

    return dict(await _in_batches(blocks, send))
