"""Issue 12, item 1 (the live path): the writer's bounded batches, no hypercorn ping task for
``/ws`` (its protocol keeps its own time), and the slow-consumer bound that stretches for a
reader that keeps draining but still drops one that stopped."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import trio
import trio.testing
from trio_websocket import open_websocket_url

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.protocol import messages as m
from heaper_trio.services.diagnostics import RealtimeCounters
from heaper_trio.services.live import connection
from heaper_trio.services.live import outbox as outbox_module
from heaper_trio.services.live.context import LiveContext
from heaper_trio.services.live.hub import LiveHub
from heaper_trio.services.live.outbox import BATCH_BYTES, DRAINING_S, Outbox

from . import test_live_timers as timers
from .live_client import UNCLOSED_SOCKETS, collect_closed_sockets, live_client  # noqa: F401 (autouse)
from .test_sync import ClientBlock, new_heap

pytestmark = [pytest.mark.engines("sqlite"), *UNCLOSED_SOCKETS]  # no storage involved
KB = 1024


# -- the writer's batches ----------------------------------------------------------------------
async def test_take_many_takes_what_is_queued_up_to_the_batch_bound() -> None:
    outbox = Outbox(4 * BATCH_BYTES)
    quarter = BATCH_BYTES // 4
    frames = [bytes([i]) * quarter for i in range(6)]
    for frame in frames:
        assert outbox.offer(frame)
    assert await outbox.take_many() == frames[:4]  # 4 quarters fill one batch
    assert outbox.size == 2 * quarter
    assert await outbox.take_many() == frames[4:]
    assert outbox.size == 0 and not outbox.frames


async def test_a_frame_larger_than_a_batch_goes_alone_and_whole() -> None:
    outbox = Outbox(4 * BATCH_BYTES)
    big, small = b"b" * (BATCH_BYTES + 1), b"s" * 10
    assert outbox.offer(big) and outbox.offer(small)
    assert await outbox.take_many() == [big]
    assert await outbox.take_many() == [small]


async def test_taking_a_batch_admits_waiting_putters_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbox = Outbox(64 * KB)
    assert outbox.offer(b"x" * (60 * KB))
    done: list[int] = []

    async def put(i: int) -> None:
        await outbox.put(bytes([i]) * (30 * KB))
        done.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(put, i)
            await trio.testing.wait_all_tasks_blocked()
        assert outbox.waiting == 3
        assert await outbox.take_many() == [b"x" * (60 * KB)]
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(done) == [0, 1] and outbox.waiting == 1  # two fit, the third waits
        assert [f[:1] for f in await outbox.take_many()] == [b"\0", b"\1"]
    assert sorted(done) == [0, 1, 2]


# -- the slow-consumer bound (item 5) ------------------------------------------------------------
async def test_fan_out_stretches_the_bound_while_the_writer_keeps_taking(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A provider's big initial sync fills the outbox with its own paced replies; a fan-out
    frame then must not drop a reader that is draining them."""
    outbox = Outbox(64 * KB)
    assert outbox.offer(b"r" * (40 * KB)) and outbox.offer(b"r" * (20 * KB))
    await outbox.take()  # the writer is busy on the socket: it took a frame just now
    assert outbox.offer(b"r" * (40 * KB))  # refilled by a reply (60 KiB queued)
    assert outbox.offer(b"p" * (8 * KB))  # fan-out past the bound: stretched
    assert outbox.size == 68 * KB
    assert not outbox.offer(b"p" * (64 * KB))  # never past STRETCH times the bound


async def test_a_reader_that_stopped_is_still_dropped_at_the_bound(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbox = Outbox(64 * KB)
    assert outbox.offer(b"r" * (60 * KB))
    assert not outbox.offer(b"p" * (8 * KB))  # never taken: no stretch
    await outbox.take()
    assert outbox.offer(b"r" * (60 * KB))
    await trio.sleep(DRAINING_S + 0.1)  # the writer is stuck on a socket nobody reads
    assert not outbox.offer(b"p" * (8 * KB))


async def test_stretch_bounds_memory_at_stretch_times_the_bound(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbox = Outbox(64 * KB)
    outbox.offer(b"r")
    await outbox.take()
    offered = 0
    while outbox.offer(b"p" * KB):
        offered += 1
    assert offered == outbox_module.STRETCH * 64


# -- hypercorn's ping task (item 2) --------------------------------------------------------------
def _task_names(task: trio.lowlevel.Task) -> list[str]:
    names = [task.name]
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            names += _task_names(child)
    return names


def _ping_tasks() -> int:
    return sum("_send_pings" in n for n in _task_names(trio.lowlevel.current_root_task()))


async def test_ws_sockets_get_no_hypercorn_ping_task_other_websockets_do(
    server: RunningServer,
) -> None:
    """/ws times out silent peers and pings providers itself; /api/ws relies on hypercorn's
    pings to notice a dead peer, so it keeps them."""
    url = server.url.replace("http", "ws", 1)
    assert _ping_tasks() == 0
    async with open_websocket_url(url + "/ws"), open_websocket_url(url + "/ws?token=x"):
        await trio.sleep(0.2)
        assert _ping_tasks() == 0
        async with open_websocket_url(url + "/api/ws"):
            with trio.fail_after(5):
                while _ping_tasks() != 1:
                    await trio.sleep(0.01)


# -- an idle open document holds no task -------------------------------------------------------
def _worker_tasks() -> int:
    return sum("DocumentWorker.run" in n for n in _task_names(trio.lowlevel.current_root_task()))


async def test_an_idle_document_has_no_task_and_wakes_for_the_next_message(
    server: RunningServer,
) -> None:
    async with HeaperClient(server.url) as client:
        await client.login()
        heap = await new_heap(client)
        block = ClientBlock()
        block.write("Idle")
        address = f"{heap['id']}:{block.id}"
        hub = server.services.hub
        async with live_client(server.url) as a, live_client(server.url) as b:
            await a.sync(address, client.access_token)
            await b.sync(address, client.access_token)
            await a.expect(m.SyncStep1)
            with trio.fail_after(5):
                while _worker_tasks():
                    await trio.sleep(0.01)
            assert len(hub.rooms[block.id].subs) == 2  # subscribed all the same
            for i in range(3):  # each message starts the worker again, in order
                block.meta[f"n{i}"] = i
                await a.send(m.SyncUpdate(address, block.pending()))
                block.synced = block.doc.get_state()
                assert (await a.expect(m.SyncStatus)).applied
                await b.expect(m.SyncUpdate)
            await a.send(m.Awareness(address, b"\x00"))  # malformed presence: dropped, served
        with trio.fail_after(5):  # both sockets gone: the subscriptions ended with them
            while block.id in hub.rooms:
                await trio.sleep(0.01)
        assert _worker_tasks() == 0


# -- a connection that is closing starts nothing new ---------------------------------------------
async def test_ticking_a_closing_connection_starts_nothing_and_keeps_the_hub_alive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The bench's 1,000 idle sockets closing at once crashed the server: a connection whose
    client had gone, waiting for its writer to finish a frame, was ticked, its account check
    was due, and starting it in the closing nursery raised in the hub's keepalive task."""
    storage = timers.Storage()
    hub = LiveHub(SimpleNamespace(storage=storage, listeners=[]), RealtimeCounters())  # type: ignore[arg-type]
    ctx = LiveContext(
        hub=hub,
        counters=hub.counters,
        shutdown=trio.Event(),
        verify_token=timers.Accounts().verify,
        heaps=storage,
        push_live=timers._no_push,
        max_connections_per_user=10,
        outbox_bytes=1024 * 1024,
        wall_clock=lambda: timers.EPOCH + trio.current_time(),
    )
    transport = timers.MemoryTransport()
    writing = trio.Event()

    async def slow_write(frames: object) -> None:  # a frame half on the wire: finished, shielded
        writing.set()
        with trio.CancelScope(shield=True):
            await trio.sleep(2 * connection.RECHECK_ACCOUNT_S)

    transport.send_many = slow_write  # type: ignore[method-assign]
    conn = connection.LiveConnection(transport, ctx, None)
    gone, ended = trio.CancelScope(), trio.Event()

    async def run() -> None:
        with gone:  # the client leaves: the transport cancels the connection's scope
            await conn.run()
        ended.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        nursery.start_soon(run)
        await transport.inbound.send(m.encode(m.Ping()))  # answered: the writer starts a write
        await writing.wait()
        gone.cancel()
        with trio.fail_after(10 * connection.RECHECK_ACCOUNT_S):
            await ended.wait()  # ticked meanwhile, with its account check due
        assert conn._nursery is None
        assert "keepalive" in hub._singletons  # the timers of every other connection run on
        nursery.cancel_scope.cancel()
