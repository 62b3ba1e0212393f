"""Issue 12, item 1 (the live path), without a server: the writer's bounded batches, the
slow-consumer bound that stretches for a reader that keeps draining but still drops one that
stopped (item 5), and a closing connection that starts nothing new."""

from __future__ import annotations

import trio
import trio.testing

from heaper_trio.protocol import messages as m
from heaper_trio.services.live import connection
from heaper_trio.services.live import outbox as outbox_module
from heaper_trio.services.live.outbox import BATCH_BYTES, DRAINING_S, Outbox

from . import test_live_timers as timers

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


# -- a connection that is closing starts nothing new ---------------------------------------------
async def test_ticking_a_closing_connection_starts_nothing_and_keeps_the_hub_alive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The bench's 1,000 idle sockets closing at once crashed the server: a connection whose
    client had gone, waiting for its writer to finish a frame, was ticked, its account check
    was due, and starting it in the closing nursery raised in the hub's keepalive task."""
    ctx = timers.memory_context()
    hub = ctx.hub
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
