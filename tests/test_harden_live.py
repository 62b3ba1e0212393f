"""Issue 9, items 10 and 11: live sync that stalls or loses acknowledged updates.

Item 10: the per-connection outbox admitted only the newest of several waiting putters, so a
provider opening many large documents on one socket waited forever. The outbox is tested here
in memory (no sockets, trio's autojump clock); the 20-documents-of-1-MB case runs end to end
with stock providers in tests/test_live_node.py.

Item 11: the PostgreSQL announcement of a commit travelled after the commit, so a kill -9
between the two left the other processes' subscribers without acknowledged updates; see
tests/test_live_processes.py for the end-to-end test.
"""

from __future__ import annotations

import base64
import gc
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pycrdt
import pytest
import trio
import trio.testing

from heaper_trio.client import HeaperClient, KeyPair
from heaper_trio.protocol import messages as m
from heaper_trio.protocol.names import BlockName
from heaper_trio.records import StoredBlock
from heaper_trio.services.commits import Committed
from heaper_trio.services.diagnostics import RealtimeCounters
from heaper_trio.services.live.hub import LiveHub, Subscription
from heaper_trio.services.live.outbox import Outbox

from . import test_crash as crash
from .live_client import live_client
from .test_cli import _env, _free_port
from .test_sync import ClientBlock, new_heap

KB = 1024


async def _drain(outbox: Outbox, taken: list[bytes | str], count: int, pause: float) -> None:
    for _ in range(count):
        await trio.sleep(pause)  # a slow socket
        taken.append(await outbox.take())


async def test_every_waiting_putter_completes_as_the_taker_drains(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbox = Outbox(100 * KB)
    outbox.offer(b"f" * (90 * KB))  # nearly full: each putter below has to wait
    done: list[int] = []

    async def putter(i: int) -> None:
        await outbox.put(bytes([i]) * (40 * KB))
        done.append(i)

    taken: list[bytes | str] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(putter, i)
                await trio.testing.wait_all_tasks_blocked()
            assert outbox.waiting == 5 and done == []  # five putters blocked at once
            nursery.start_soon(_drain, outbox, taken, 6, 1.0)
    assert sorted(done) == [0, 1, 2, 3, 4]
    # First come, first served (the order they are written in; tasks woken together may run
    # in any order).
    assert [t[:1] for t in taken] == [b"f", b"\x00", b"\x01", b"\x02", b"\x03", b"\x04"]
    assert outbox.size == 0 and outbox.waiting == 0


async def test_a_frame_larger_than_the_bound_goes_out_once_the_outbox_is_empty(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbox = Outbox(64 * KB)
    outbox.offer(b"a" * (10 * KB))
    big, small = b"B" * (200 * KB), b"s" * KB
    order: list[str] = []

    async def put(name: str, frame: bytes) -> None:
        await outbox.put(frame)
        order.append(name)

    taken: list[bytes | str] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(put, "big", big)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(put, "small", small)  # fits, but does not overtake the big one
            await trio.testing.wait_all_tasks_blocked()
            assert order == [] and outbox.waiting == 2
            nursery.start_soon(_drain, outbox, taken, 3, 0.5)
    assert order == ["big", "small"]
    assert taken == [b"a" * (10 * KB), big, small]


async def test_a_cancelled_waiter_neither_blocks_nor_loses_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbox = Outbox(100 * KB)
    outbox.offer(b"f" * (90 * KB))
    done: list[str] = []

    async def put(name: str, frame: bytes, scope: trio.CancelScope | None = None) -> None:
        with scope or trio.CancelScope():
            await outbox.put(frame)
            done.append(name)

    head = trio.CancelScope()
    taken: list[bytes | str] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(put, "head", b"h" * (95 * KB), head)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(put, "next", b"n" * (5 * KB))
            await trio.testing.wait_all_tasks_blocked()
            assert outbox.waiting == 2
            head.cancel()  # the document closed while its reply waited
            await trio.testing.wait_all_tasks_blocked()
            # "next" fits behind the 90 KB frame now that the head is gone.
            assert done == ["next"] and outbox.waiting == 0
            nursery.start_soon(_drain, outbox, taken, 2, 0.5)
    assert [t[:1] for t in taken] == [b"f", b"n"]


async def test_fan_out_to_a_full_outbox_is_refused_while_replies_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A slow consumer is still detected (the connection then closes with 1013)."""
    outbox = Outbox(64 * KB)
    assert outbox.offer(b"x" * (60 * KB))
    assert not outbox.offer(b"y" * (8 * KB))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.put, b"r" * (8 * KB))
        await trio.testing.wait_all_tasks_blocked()
        assert outbox.waiting == 1
        assert not outbox.offer(b"z" * (8 * KB))
        assert await outbox.take() == b"x" * (60 * KB)
    assert list(outbox.frames) == [b"r" * (8 * KB)]


@pytest.mark.parametrize("putters", [2, 7])
async def test_many_putters_with_a_fast_taker_all_complete(
    putters: int, autojump_clock: trio.testing.MockClock
) -> None:
    """The shape of the original stall: several documents' replies of ~1 MB each through an
    outbox of a few MB, the writer draining as fast as it can."""
    outbox = Outbox(3 * 1024 * KB)
    sent: list[int] = []

    async def document(i: int) -> None:
        for piece in range(4):
            await outbox.put(bytes([i]) * (256 * KB + piece))

    async def writer() -> None:
        while len(sent) < putters * 4:
            frame = await outbox.take()
            sent.append(frame[0] if isinstance(frame, bytes) else 0)
            await trio.sleep(0.01)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(putters):
                nursery.start_soon(document, i)
            nursery.start_soon(writer)
    assert sorted(sent) == sorted(i for i in range(putters) for _ in range(4))


# -- item 11: a process killed right after acknowledging ---------------------------------------


class _GatedStorage:
    """One block's stored log. Each ``load_block`` reads the log as it is when called (its
    snapshot) and then waits for the test to let it answer, as a slow read would."""

    def __init__(self, heap_id: str, block_id: str, first: bytes) -> None:
        self.heap_id, self.block_id = heap_id, block_id
        self.log = [first]
        self.reads = 0
        self.gate = trio.Event()

    def commit(self, update: bytes) -> int:
        self.log.append(update)
        return len(self.log)

    async def load_block(self, block_id: str) -> StoredBlock:
        self.reads += 1
        log = tuple(self.log)
        await self.gate.wait()
        return StoredBlock(block_id, self.heap_id, 1, None, 0, log, len(log), 0, 0)


class _Sink:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send_frame(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True


def _edit(doc: pycrdt.Doc, key: str) -> bytes:
    before = doc.get_state()
    doc.get("meta_v0", type=pycrdt.Map)[key] = 1
    return doc.get_update(before)


async def test_a_room_loading_or_catching_up_misses_no_announced_commit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """B's side of item 11, in memory: an announcement from another process that arrives while
    the room's document is being read from storage (load or catch-up) makes B read again, so
    the room ends with that commit (it used to be ignored until the block's next write)."""
    author = pycrdt.Doc()
    storage = _GatedStorage("h", "blk", _edit(author, "first"))
    documents = SimpleNamespace(storage=storage, listeners=[])
    hub = LiveHub(documents, RealtimeCounters())  # type: ignore[arg-type]
    sink = _Sink()
    sub = Subscription(sink, "h:blk", BlockName("h", "blk", None), "u")

    def keys() -> set[str]:
        room = hub.rooms["blk"]
        assert room.doc is not None
        doc = pycrdt.Doc()
        doc.apply_update(room.doc.full_state())
        return set(doc.get("meta_v0", type=pycrdt.Map).keys())

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.run)
            nursery.start_soon(hub.join, sub)
            await trio.testing.wait_all_tasks_blocked()
            assert storage.reads == 1  # reading the log as it was: "first" only
            seq = storage.commit(_edit(author, "second"))  # another process commits ...
            hub.on_remote(Committed("h", "blk", "changed", seq))  # ... and announces it
            storage.gate.set()
            await trio.testing.wait_all_tasks_blocked()
            assert keys() == {"first", "second"} and storage.reads == 2

            # A catch-up whose read predates a commit announced meanwhile reads once more.
            storage.gate = trio.Event()
            seq = storage.commit(_edit(author, "third"))
            hub.on_remote(Committed("h", "blk", "changed", seq))
            await trio.testing.wait_all_tasks_blocked()
            seq = storage.commit(_edit(author, "fourth"))
            hub.on_remote(Committed("h", "blk", "changed", seq))
            storage.gate.set()
            await trio.testing.wait_all_tasks_blocked()
            assert keys() == {"first", "second", "third", "fourth"}
            assert storage.reads == 4 and hub.rooms["blk"].last_seq == 4
            # The subscriber was sent what it lacked.
            mirror = pycrdt.Doc()
            mirror.apply_update(storage.log[0])  # what the joiner got from the load
            for frame in sink.frames:
                message = m.decode_server_frame(frame)
                if isinstance(message, m.SyncUpdate):
                    mirror.apply_update(message.update)
            assert set(mirror.get("meta_v0", type=pycrdt.Map).keys()) == keys()
            nursery.cancel_scope.cancel()


async def test_a_local_commit_during_the_load_does_not_hide_a_remote_one_before_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While B reads the block, another process commits row 2 and B itself row 3. The room
    gets row 3 from B's own commit; row 2's announcement, coming after the load, must not be
    taken as "already here" because row 3 is."""
    author = pycrdt.Doc()
    storage = _GatedStorage("h", "blk", _edit(author, "first"))
    hub = LiveHub(
        SimpleNamespace(storage=storage, listeners=[]),  # type: ignore[arg-type]
        RealtimeCounters(),
    )
    sub = Subscription(_Sink(), "h:blk", BlockName("h", "blk", None), "u")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.run)
            nursery.start_soon(hub.join, sub)
            await trio.testing.wait_all_tasks_blocked()
            remote = storage.commit(_edit(author, "second"))  # announced late, see below
            local = _edit(author, "third")
            seq = storage.commit(local)
            hub.on_commit([Committed("h", "blk", "changed", seq, updates=(local,))])
            storage.gate.set()
            await trio.testing.wait_all_tasks_blocked()
            hub.on_remote(Committed("h", "blk", "changed", remote))
            await trio.testing.wait_all_tasks_blocked()
            room = hub.rooms["blk"]
            assert room.doc is not None
            doc = pycrdt.Doc()
            doc.apply_update(room.doc.full_state())
            assert set(doc.get("meta_v0", type=pycrdt.Map).keys()) == {"first", "second", "third"}
            nursery.cancel_scope.cancel()


WRITERS = 6
WANT_ACKED = 40  # acknowledged pushes on A before the kill (it comes right after one)
PUSH_AT_MOST_S = 8.0


class BusyServer(crash.Server):
    """``python -m heaper_trio`` as process A, with a small pool: its connections are busy with
    commits, so anything it does after a commit waits its turn (it used to be the announcement
    of that commit to the other processes)."""

    def __init__(self, data_dir: Path, database_url: str, log_path: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        args = [
            sys.executable,
            "-m",
            "heaper_trio",
            "--port",
            str(self.port),
            "--data-dir",
            str(data_dir),
            "--database-url",
            database_url,
        ]
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env(
                    HEAPER_AUTH_RATE_LIMIT="100000", HEAPER_PG_POOL_MIN="1", HEAPER_PG_POOL_MAX="2"
                ),
            )


async def _subscribe(
    url: str,
    address: str,
    token: str,
    mirror: pycrdt.Doc,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A live subscriber on one block: its copy takes every update the server sends."""
    async with live_client(url) as c:
        mirror.apply_update(await c.sync(address, token))
        task_status.started()
        while True:
            message = await c.receive(timeout=3600)
            if isinstance(message, (m.SyncUpdate, m.SyncStep2)) and message.address == address:
                mirror.apply_update(message.update)


async def _writer(
    n: int,
    client: HeaperClient,
    run: crash.Run,
    tracked: list[crash.Tracked],
    kill: Callable[[], None],
) -> None:
    """Sequential pushes to A alternating between its own block and the shared one; A is
    killed the moment the WANT_ACKED-th acknowledgement arrives."""
    seq = 0
    while not run.killed:
        seq += 1
        t = tracked[seq % 2]
        t.add_marker(f"mk-{n}-{seq}", as_key=seq % 3 == 0)
        try:
            r = await client.post(
                "/api/sync/push",
                json={
                    "blocks": [
                        {
                            "block_id": t.block.id,
                            "workspace_id": run.heap_id,
                            "update": crash.b64(t.block.pending()),
                            "state_vector": crash.b64(t.block.doc.get_state()),
                        }
                    ]
                },
            )
        except httpx.TransportError:
            assert run.killed
            return
        assert r.status_code == 200, r.text
        [answer] = r.json()["blocks"]
        if answer["status"] not in ("ok", "created"):
            assert answer["status"] == "conflict", answer
            continue
        t.acked.update(t.unacked)
        run.acked += len(t.unacked)
        t.unacked.clear()
        if run.acked >= WANT_ACKED and not run.killed:
            run.killed = True
            kill()  # acknowledged a moment ago: the commit is there, A's aftermath is not
            return
        t.block.doc.apply_update(base64.b64decode(answer["update"]))
        t.block.synced = t.block.doc.get_state()


@pytest.mark.slow
@pytest.mark.engines("postgres")
@pytest.mark.filterwarnings(
    "ignore:Async generator 'httpx._content.ByteStream.__aiter__' was garbage collected"
    ":ResourceWarning"
)
async def test_sigkill_right_after_an_ack_leaves_no_subscriber_elsewhere_behind(
    engine: str, tmp_path: Path, database_url: str, start_server: Any
) -> None:
    """Issue 9, item 11. Process A (a subprocess) takes pushes and is killed -9 right after
    acknowledging one; process B (this test's server) has live subscribers on every block, some
    from the start and some joining while A writes (their documents load meanwhile). Every
    subscriber on B, and every provider opening a block on B afterwards, ends up with every
    update A acknowledged."""
    b = await start_server()
    a = BusyServer(tmp_path / "data", database_url, tmp_path / "a.log")
    key = KeyPair.generate()
    run = crash.Run()
    try:
        await a.wait_ready()
        async with HeaperClient(b.url, key) as on_b, HeaperClient(a.url, key) as on_a:
            await on_b.login()
            await on_a.login()
            assert on_b.access_token
            token = on_b.access_token
            run.heap_id = (await new_heap(on_b, "Two processes"))["id"]
            blocks = [ClientBlock() for _ in range(WRITERS + 1)]  # one each and a shared one
            for i, cb in enumerate(blocks):
                cb.write(f"Block {i}")
            r = await on_b.post(
                "/api/sync/push", json={"blocks": [cb.push_item(run.heap_id) for cb in blocks]}
            )
            assert [x["status"] for x in r.json()["blocks"]] == ["created"] * len(blocks)
            shared = blocks[-1].id
            streams = [
                [crash.Tracked(ClientBlock(blocks[n].id)), crash.Tracked(ClientBlock(shared))]
                for n in range(WRITERS)
            ]

            mirrors: list[tuple[str, pycrdt.Doc]] = []

            async def subscribe(block_id: str, nursery: trio.Nursery) -> None:
                mirror = pycrdt.Doc()
                mirrors.append((block_id, mirror))
                await nursery.start(_subscribe, b.url, f"{run.heap_id}:{block_id}", token, mirror)

            async with trio.open_nursery() as subscribers:
                # From the start: the shared block and every other writer's block.
                early = [shared] + [blocks[n].id for n in range(0, WRITERS, 2)]
                late = [blocks[n].id for n in range(1, WRITERS, 2)]
                for block_id in early:
                    await subscribe(block_id, subscribers)

                async def join_late() -> None:
                    """Blocks with nobody on B yet: their rooms load while A commits."""
                    for block_id in late:
                        while run.acked < WANT_ACKED * late.index(block_id) // len(late):
                            await trio.sleep(0.005)
                        await subscribe(block_id, subscribers)

                with trio.fail_after(PUSH_AT_MOST_S + 20):
                    async with trio.open_nursery() as writers:
                        writers.start_soon(join_late)
                        for n in range(WRITERS):
                            writers.start_soon(_writer, n, on_a, run, streams[n], a.proc.kill)
                assert run.killed, run
                a.proc.wait(30)
                assert a.proc.returncode == -signal.SIGKILL

                acked: dict[str, set[str]] = {}
                for tracked in streams:
                    for t in tracked:
                        acked.setdefault(t.block.id, set()).update(t.acked)
                assert sum(map(len, acked.values())) >= WANT_ACKED

                def behind() -> dict[str, list[str]]:
                    out = {}
                    for block_id, mirror in mirrors:
                        lacking = acked[block_id] - crash.markers_in(mirror)
                        if lacking:
                            out[block_id] = sorted(lacking)
                    return out

                with trio.move_on_after(10):
                    while behind():
                        await trio.sleep(0.05)
                assert not behind(), f"subscribers on B lack acknowledged updates: {behind()}"
                assert len(mirrors) == len(blocks)

                # Providers opening the blocks on B now get the rooms B holds: complete too.
                for block_id in acked:
                    async with live_client(b.url) as c:
                        doc = pycrdt.Doc()
                        doc.apply_update(await c.sync(f"{run.heap_id}:{block_id}", token))
                    assert acked[block_id] <= crash.markers_in(doc), block_id
                subscribers.cancel_scope.cancel()
        gc.collect()
    finally:
        a.sigkill()
    assert "Traceback" not in a.log(), a.log()
