"""A Heaper client: log in with a key, heaps, blocks (build with pycrdt, push, pull, merge,
delta), resumable uploads with progress, live subscriptions over ``/ws``.

The tests, the benchmarks and scripts share it, so it is also the reference for how a client
talks to this server (docs/client.md walks through it)::

    from heaper_trio.client import HeaperClient, KeyPair, LocalBlock
    from heaper_trio.client.documents import new_block

    async with HeaperClient("http://127.0.0.1:8470", KeyPair.generate()) as c:
        await c.login()
        heap = await c.heaps.create("Notes")
        block = LocalBlock(heap.id, "my-first-block", new_block("document", "Hello"))
        await c.blocks.push(block)  # created; block.doc holds what the server answered

It runs under trio (httpx runs on anyio; live subscriptions use trio-websocket). It talks to
the server over the wire only: it imports none of the server's layers, only the pure wire
protocol (:mod:`heaper_trio.protocol`) and key handling (:mod:`heaper_trio.keys`).
"""

from heaper_trio.client.blocks import Delta, LocalBlock, SyncResult
from heaper_trio.client.errors import HeaperError, LoginPending
from heaper_trio.client.heaps import Heap
from heaper_trio.client.live import LiveBlock, LiveRefused, LiveUpdate, UpdateRefused
from heaper_trio.client.session import HeaperClient, load_or_create_keypair
from heaper_trio.client.uploads import UploadProgress, UploadResult, file_hash
from heaper_trio.keys import KeyPair

__all__ = [
    "Delta",
    "Heap",
    "HeaperClient",
    "HeaperError",
    "KeyPair",
    "LiveBlock",
    "LiveRefused",
    "LiveUpdate",
    "LocalBlock",
    "LoginPending",
    "SyncResult",
    "UpdateRefused",
    "UploadProgress",
    "UploadResult",
    "file_hash",
    "load_or_create_keypair",
]
