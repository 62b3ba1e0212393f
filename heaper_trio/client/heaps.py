"""Heaps (workspaces): list and create. A heap's name is its root block's title."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from heaper_trio.client.session import HeaperClient


@dataclass(frozen=True, slots=True)
class Heap:
    id: str
    name: str
    root_block_id: str
    created_at: int
    updated_at: int

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Heap:
        return cls(
            id=str(raw["id"]),
            name=str(raw.get("name") or ""),
            root_block_id=str(raw["root_block_id"]),
            created_at=int(raw.get("created_at") or 0),
            updated_at=int(raw.get("updated_at") or 0),
        )


class Heaps:
    """``client.heaps``: ``POST /api/heaps`` and ``POST /api/heap/add``."""

    def __init__(self, client: HeaperClient) -> None:
        self._client = client

    async def list(self) -> builtins.list[Heap]:
        answer = await self._client.call("POST", "/api/heaps", json={})
        return [Heap.from_json(h) for h in answer["heaps"]]

    async def create(self, name: str, heap_id: str | None = None) -> Heap:
        """A new heap with its root ``index`` block titled ``name``; ``heap_id`` chooses its id
        (403 ``heap_exists`` if taken), else the server picks one."""
        body: dict[str, Any] = {"name": name}
        if heap_id is not None:
            body["id"] = heap_id
        answer = await self._client.call("POST", "/api/heap/add", json=body)
        return Heap.from_json(answer["heap"])

    async def delete(self, heap_id: str) -> None:
        """Delete a heap with its blocks, their history and relations."""
        await self._client.call("DELETE", f"/api/heap/{heap_id}")
