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

import pytest
import trio
import trio.testing

from heaper_trio.services.live_connection import Outbox

KB = 1024


async def _drain(outbox: Outbox, taken: list[bytes | str], count: int, pause: float) -> None:
    for _ in range(count):
        await trio.sleep(pause)  # a slow socket
        taken.append(await outbox.take())


async def test_every_waiting_putter_completes_as_the_taker_drains(
        autojump_clock: trio.testing.MockClock) -> None:
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
    assert done == [0, 1, 2, 3, 4]  # first come, first served
    assert [t[:1] for t in taken] == [b"f", b"\x00", b"\x01", b"\x02", b"\x03", b"\x04"]
    assert outbox.size == 0 and outbox.waiting == 0


async def test_a_frame_larger_than_the_bound_goes_out_once_the_outbox_is_empty(
        autojump_clock: trio.testing.MockClock) -> None:
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
        autojump_clock: trio.testing.MockClock) -> None:
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
        autojump_clock: trio.testing.MockClock) -> None:
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
        putters: int, autojump_clock: trio.testing.MockClock) -> None:
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
