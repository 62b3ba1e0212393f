"""The per-document inbox of a live connection (services/live/inbox.py): bounded, in order,
cancellation-safe, and holding no buffer while idle (memory per idle WebSocket, issue 12)."""

from __future__ import annotations

import tracemalloc

import pytest
import trio
import trio.testing

from heaper_trio.services.live.inbox import Inbox


async def test_in_order_and_bounded(autojump_clock: trio.testing.MockClock) -> None:
    inbox = Inbox[int](3)
    sent: list[int] = []

    async def producer() -> None:
        for i in range(10):
            await inbox.send(i)
            sent.append(i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.sleep(1)
        assert sent == [0, 1, 2] and len(inbox) == 3  # the producer waits for room
        assert inbox.receive_nowait() == 0
        await trio.sleep(1)
        assert sent == [0, 1, 2, 3]
        got = [1, 2, 3]
        assert [await inbox.receive() for _ in range(3)] == got
        async for item in inbox:
            got.append(item)
            if item == 9:
                break
    assert got == list(range(1, 10)) and len(inbox) == 0
    with pytest.raises(trio.WouldBlock):
        inbox.receive_nowait()


async def test_a_waiting_receiver_wakes_and_cancelled_sends_queue_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inbox = Inbox[str](1)
    with trio.move_on_after(1):
        await inbox.receive()
        pytest.fail("nothing was sent")
    async with trio.open_nursery() as nursery:
        results: list[str] = []

        async def receiver() -> None:
            results.append(await inbox.receive())

        nursery.start_soon(receiver)
        await trio.sleep(1)
        await inbox.send("a")
    assert results == ["a"]
    await inbox.send("b")
    with trio.move_on_after(1) as scope:
        await inbox.send("c")  # full: waits, then is cancelled
    assert scope.cancelled_caught
    assert inbox.receive_nowait() == "b" and len(inbox) == 0
    with trio.CancelScope() as cancelled:
        cancelled.cancel()
        await inbox.send("d")  # a checkpoint: cancelled before queueing
    assert len(inbox) == 0


async def test_an_idle_inbox_is_small() -> None:
    """What the trio memory channel it replaces cost per open document: about 1.8 KiB."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        inboxes = [Inbox[bytes](64) for _ in range(1000)]
        for inbox in inboxes[:10]:
            await inbox.send(b"x")
            inbox.receive_nowait()  # drained: the buffer is dropped again
        per_inbox = (tracemalloc.get_traced_memory()[0] - before) / len(inboxes)
        channels = [trio.open_memory_channel[bytes](64) for _ in range(1000)]
        per_channel = (tracemalloc.get_traced_memory()[0] - before) / 1000 - per_inbox
    finally:
        tracemalloc.stop()
    assert per_inbox < 200 and per_channel > 5 * per_inbox, (per_inbox, per_channel)
    del channels
