"""heaper_trio.client against a real server, on both engines: heaps, block sync (build, push,
pull, merge, version mismatch, delta), resumable uploads with progress and resume, live
subscriptions over /ws, error answers."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from heaper_trio.app import RunningServer, run_server
from heaper_trio.client import (
    HeaperClient,
    HeaperError,
    LiveRefused,
    LocalBlock,
    UpdateRefused,
    UploadProgress,
)
from heaper_trio.client import documents as d
from heaper_trio.services.upload_disk import UploadSlots
from heaper_trio.settings import Settings
from tests.conftest import StartServer


def new_id() -> str:
    return str(uuid.uuid4())


async def test_heaps_list_and_create(admin: HeaperClient) -> None:
    before = await admin.heaps.list()
    heap = await admin.heaps.create("Reading list", heap_id="reading-list")
    assert heap.id == "reading-list" and heap.name == "Reading list" and heap.root_block_id
    after = await admin.heaps.list()
    assert [h.id for h in after if h not in before] == ["reading-list"]
    with pytest.raises(HeaperError) as taken:
        await admin.heaps.create("Again", heap_id="reading-list")
    assert (taken.value.status, taken.value.code) == (403, "heap_exists")


async def test_two_devices_push_pull_and_merge(admin: HeaperClient) -> None:
    heap = await admin.heaps.create("Sync")
    tag_id, block_id, other = new_id(), new_id(), new_id()
    phone = LocalBlock(heap.id, block_id, d.new_block("document", "Grüße", created_at=1))
    with phone.doc.transaction():
        d.append_paragraph(
            phone.doc, "See ", d.mention(other, "Other"), " and ", ("this", {"strong": {}})
        )
        d.append_paragraph(phone.doc, "Linked: ", d.pagelink(other))
        d.add_tag(phone.doc, tag_id)
    created = await admin.blocks.push(phone)
    assert (created.status, created.sync_version) == ("created", 1)

    laptop = await admin.blocks.fetch(heap.id, block_id)
    assert laptop.sync_version == 1
    assert d.read_block(laptop.doc) == d.read_block(phone.doc)
    # both edit offline, then sync: each ends with both edits
    d.append_paragraph(laptop.doc, "from the laptop")
    d.append_paragraph(phone.doc, "from the phone")
    assert (await admin.blocks.push(laptop)).status == "ok"
    assert (await admin.blocks.push(phone)).ok  # its answer brings the laptop's paragraph
    assert (await admin.blocks.pull(laptop)).status == "ok"
    read = d.read_block(laptop.doc)
    assert read == d.read_block(phone.doc)
    assert read.title == "Grüße" and read.tags == (tag_id,)
    assert read.mentions == (other,) and read.links == (other,)
    # concurrent inserts at one place: Yjs orders them by client id, the same everywhere
    assert sorted(read.text.splitlines()[-2:]) == ["from the laptop", "from the phone"]
    # the server projects the same text
    got = (await admin.post(f"/api/block/{block_id}")).json()
    assert got["block"]["title"] == "Grüße" and "See Other and this" in got["text"]

    pages = [page async for page in admin.blocks.changes(heap.id)]
    assert block_id in {b["block_id"] for p in pages for b in p.changed_blocks}
    later = await admin.blocks.delta(heap.id, since=pages[-1].server_time)
    assert later.changed_blocks == [] and not later.has_more


async def test_pull_with_another_version_replaces_the_document(admin: HeaperClient) -> None:
    heap = await admin.heaps.create("Versions")
    block = LocalBlock(heap.id, new_id(), d.new_block("document", "Server copy"))
    await admin.blocks.push(block)
    stale = LocalBlock(heap.id, block.block_id, d.new_block("document", "Local only"))
    stale.sync_version = 7
    old_doc = stale.doc
    pushed = await admin.blocks.push(stale)
    assert (pushed.status, pushed.sync_version) == ("version_mismatch", 1)
    pulled = await admin.blocks.pull(stale)
    assert (pulled.status, stale.sync_version) == ("version_mismatch", 1)
    assert stale.doc is not old_doc and d.read_block(stale.doc).title == "Server copy"
    missing = await admin.blocks.fetch(heap.id, new_id())
    assert missing.sync_version is None and d.read_block(missing.doc).title == ""


async def test_trash_and_permanent_delete_from_the_document(admin: HeaperClient) -> None:
    heap = await admin.heaps.create("Trash")
    block = LocalBlock(heap.id, new_id(), d.new_block("document", "Old note"))
    await admin.blocks.push(block)
    d.move_to_trash(block.doc, at=1_700_000_000_000)
    await admin.blocks.push(block)
    trash = (await admin.get(f"/api/trash/{heap.id}")).json()
    assert block.block_id in str(trash)
    d.delete_permanently(block.doc)
    assert (await admin.blocks.push(block)).ok
    delta = await admin.blocks.delta(heap.id)
    assert block.block_id in {b["block_id"] for b in delta.deleted_blocks}
    again = await admin.blocks.push(block)
    assert again.status == "deleted" and block.deleted


async def test_resumable_upload_with_progress_resumes_after_interruption(
    admin: HeaperClient, tmp_path: Path
) -> None:
    heap = await admin.heaps.create("Files")
    block_id, chunk = new_id(), 65_536
    data = os.urandom(chunk * 3 + 123)
    path = tmp_path / "photo.bin"
    path.write_bytes(data)
    seen: list[UploadProgress] = []

    class Interrupted(Exception):
        pass

    def stop_after_two(p: UploadProgress) -> None:
        seen.append(p)
        if p.chunks_sent == 2:
            raise Interrupted

    with pytest.RaisesGroup(Interrupted, flatten_subgroups=True, allow_unwrapped=True):
        await admin.uploads.upload(
            heap.id, block_id, path, chunk_size=chunk, progress=stop_after_two
        )
    assert [p.bytes_done for p in seen] == [0, chunk, 2 * chunk]
    status = await admin.uploads.status(heap.id, block_id, hashlib.sha256(data).hexdigest())
    assert status["status"] == "uploading" and sorted(status["received"]) == [0, 1]

    resumed: list[UploadProgress] = []
    result = await admin.uploads.upload(
        heap.id, block_id, path, chunk_size=chunk, parallel=2, progress=resumed.append
    )
    assert (result.status, result.chunks_resumed, result.chunks_sent) == ("complete", 2, 2)
    assert resumed[0].bytes_done == 2 * chunk and resumed[-1].bytes_done == len(data)
    assert resumed[-1].fraction == 1.0 and result.file_hash == hashlib.sha256(data).hexdigest()
    raw = await admin.get(f"/api/file/{result.file_id}/raw/photo.bin")
    assert raw.status_code == 200 and raw.content == data
    block = await admin.blocks.fetch(heap.id, block_id)
    [entry] = d.read_block(block.doc).files.values()
    assert entry["name"] == "photo.bin" and entry["file_size"] == len(data)

    again = await admin.uploads.upload(heap.id, new_id(), data, name="copy.bin")
    assert (again.status, again.chunks_sent) == ("exists", 0)


async def test_live_subscription_receives_and_sends(admin: HeaperClient) -> None:
    heap = await admin.heaps.create("Live")
    block_id = new_id()
    http_side = LocalBlock(heap.id, block_id, d.new_block("document", "Shared"))
    await admin.blocks.push(http_side)
    watcher = LocalBlock(heap.id, block_id, sync_version=1)
    with trio.fail_after(20):
        async with admin.live.subscribe(watcher) as live:
            assert d.read_block(live.doc).title == "Shared"  # the first sync is done
            d.append_paragraph(http_side.doc, "pushed over HTTP")
            await admin.blocks.push(http_side)
            await live.next_update()
            assert d.read_block(live.doc).text == "pushed over HTTP"
            d.append_paragraph(live.doc, "typed live")  # sent as it is made
            await live.wait_stored()
            await admin.blocks.pull(http_side)
            assert d.read_block(http_side.doc).text == "pushed over HTTP\ntyped live"


async def test_live_subscription_refused_for_a_foreign_heap(
    admin: HeaperClient, eve: HeaperClient
) -> None:
    heap = await admin.heaps.create("Private")
    with trio.fail_after(20), pytest.raises(LiveRefused) as refused:
        async with eve.live.subscribe(LocalBlock(heap.id, new_id())):
            pass
    assert refused.value.reason


async def test_error_answers_raise_with_their_code(admin: HeaperClient) -> None:
    with pytest.raises(HeaperError) as err:
        await admin.blocks.delta("no-such-heap")
    assert err.value.status == 403 and err.value.code == "heap_forbidden"


async def test_live_subscription_on_a_stale_version(admin: HeaperClient) -> None:
    heap = await admin.heaps.create("Stale")
    block = LocalBlock(heap.id, new_id(), d.new_block("document", "Current"))
    await admin.blocks.push(block)
    stale = LocalBlock(heap.id, block.block_id, d.new_block("document", "Old copy"))
    stale.sync_version = 7
    with trio.fail_after(20):
        async with admin.live.subscribe(stale) as live:
            assert live.stale_version == 1  # the sync_version_mismatch event came
            assert "Current" in d.read_block(live.doc).title  # the full state came too
            d.append_paragraph(live.doc, "not stored")
            with pytest.raises(UpdateRefused):
                await live.wait_stored()
    assert (
        "not stored"
        not in d.read_block((await admin.blocks.fetch(heap.id, block.block_id)).doc).text
    )


async def test_live_subscription_renews_its_token_when_asked(
    start_server: StartServer, make_client: Callable[..., HeaperClient]
) -> None:
    """The server asks for the token a minute before it expires (here: at once, the token
    lives 10 s): the subscription refreshes the pair and sends the new one; edits go on."""
    server = await start_server(access_token_ttl=10)
    client = make_client(url=server.url)
    await client.login()
    heap = await client.heaps.create("Renewal")
    block = LocalBlock(heap.id, new_id(), d.new_block("document", "Long open"))
    await client.blocks.push(block)
    first = client.access_token
    with trio.fail_after(20):
        async with client.live.subscribe(block) as live:
            while live.token_renewals == 0:  # the server looks at tokens every 2 s
                await trio.sleep(0.05)
            assert client.access_token != first and live.token == client.access_token
            d.append_paragraph(live.doc, "still here")
            await live.wait_stored()
    stored = await client.blocks.fetch(heap.id, block.block_id)
    assert d.read_block(stored.doc).text == "still here"


class DropsChunks(httpx.AsyncBaseTransport):
    """A network that loses the connection of the first ``drops`` chunk PUTs (before they
    reach the server); everything else goes to the real server."""

    def __init__(self, drops: int) -> None:
        self.real, self.drops, self.dropped = httpx.AsyncHTTPTransport(), drops, 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and self.dropped < self.drops:
            self.dropped += 1
            raise httpx.ConnectError("connection lost", request=request)
        return await self.real.handle_async_request(request)

    async def aclose(self) -> None:
        await self.real.aclose()


async def test_upload_sends_a_chunk_again_after_a_network_error(
    server: RunningServer, admin: HeaperClient
) -> None:
    network = DropsChunks(drops=2)
    async with httpx.AsyncClient(base_url=server.url, transport=network) as http:
        client = HeaperClient(server.url, admin.key, http=http)
        await client.login()
        heap = await client.heaps.create("Flaky")
        data = os.urandom(65_536 * 2)
        result = await client.uploads.upload(heap.id, new_id(), data, chunk_size=65_536)
        assert (result.status, result.chunks_sent, network.dropped) == ("complete", 2, 2)
        network.drops = 10  # more than the retries: the upload stops with the error
        with pytest.raises(httpx.ConnectError):
            await client.uploads.upload(heap.id, new_id(), os.urandom(70_000), retries=1)
        assert network.dropped == 4


async def test_upload_waits_retry_after_when_the_server_is_full(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every upload slot of the user taken, a chunk is answered 429 with Retry-After;
    the client waits that long and sends it again."""
    monkeypatch.setattr(UploadSlots, "RETRY_AFTER_S", 1)
    server = await start_server(max_uploads_per_user=1)
    seen: list[int] = []
    release = trio.Event()

    async def on_response(response: httpx.Response) -> None:
        seen.append(response.status_code)
        if response.status_code == 429:
            release.set()  # the slow upload gives its slot back now

    hooks = {"response": [on_response]}
    async with httpx.AsyncClient(base_url=server.url, event_hooks=hooks) as http:
        client = HeaperClient(server.url, http=http)
        await client.login()
        heap = await client.heaps.create("Busy")
        slow_block, data = new_id(), os.urandom(65_536)
        digest = hashlib.sha256(data).hexdigest()
        await client.call(
            "POST",
            f"/api/upload/init/{heap.id}/{slow_block}",
            json={"hash": digest, "size": len(data), "chunk_size": 65_536},
        )

        async def slow_body() -> AsyncIterator[bytes]:
            yield data[:1000]
            await release.wait()  # then end short: the server drops it, freeing the slot

        async def slow_chunk() -> None:
            url = f"/api/upload/chunk/{heap.id}/{slow_block}/{digest}/0"
            await client.put(url, content=slow_body())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow_chunk)
            slots = server.services.files.slots
            while not slots.held(str(client.user_id)):
                await trio.sleep(0.01)
            started = trio.current_time()
            result = await client.uploads.upload(heap.id, new_id(), os.urandom(1000))
            waited = trio.current_time() - started
        assert result.status == "complete" and 429 in seen and waited >= 1


async def test_live_subscription_ends_when_the_server_goes_away(
    nursery: trio.Nursery, make_settings: Callable[..., Settings]
) -> None:
    shutdown = trio.Event()
    server = await nursery.start(partial(run_server, make_settings(), shutdown=shutdown))
    async with HeaperClient(server.url) as client:
        await client.login()
        heap = await client.heaps.create("Going")
        block = LocalBlock(heap.id, new_id(), d.new_block("document", "Bye"))
        await client.blocks.push(block)
        with trio.fail_after(20):
            async with client.live.subscribe(block) as live:
                shutdown.set()  # the server closes every socket (1001) as it stops
                with pytest.raises(LiveRefused) as ended:
                    await live.next_update()
                assert ended.value.reason == "connection closed"
                d.append_paragraph(block.doc, "too late")
                with pytest.raises(LiveRefused):
                    await live.wait_stored()
