"""Issue 12, ``services/live/fanout_pacing.py`` (both engines, real server): a room whose
fan-out took ``COOL_MIN_S`` or more holds its next one for as long, and what arrives meanwhile
goes out merged, once, to every subscriber; a cheap fan-out holds nothing back."""

from __future__ import annotations

import time

import pytest
import trio
import trio.lowlevel

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.protocol.names import parse_document_name
from heaper_trio.services.live import fanout_pacing
from heaper_trio.services.live.hub import Subscription

from .live_client import UNCLOSED_SOCKETS, collect_closed_sockets  # noqa: F401 (autouse)
from .test_live_fanout import RecordingSink
from .test_sync import ClientBlock, new_heap, push

pytestmark = [pytest.mark.slow, *UNCLOSED_SOCKETS]


class SlowSink(RecordingSink):
    """A sink whose first frame costs ``cost`` seconds of the loop (a big room's fan-out)."""

    def __init__(self, cost: float) -> None:
        super().__init__()
        self.cost = cost

    def send_frame(self, frame: bytes) -> bool:
        if not self.frames:
            time.sleep(self.cost)
        return super().send_frame(frame)


@pytest.mark.serial  # the rest is the fan-out's wall-clock cost
@pytest.mark.parametrize(("cost", "big"), [(0.0, True), (0.05, True), (0.05, False)])
async def test_a_costly_fan_out_holds_the_next_and_merges_what_came_meanwhile(
    admin: HeaperClient,
    server: RunningServer,
    cost: float,
    big: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``big``: the room's 3 subscribers count as a big room (the default threshold is 256);
    a small room is never held, however costly its fan-out."""
    if big:
        monkeypatch.setattr(fanout_pacing, "PACE_ABOVE_SUBS", 2)
    if not cost:  # "cheap" with a margin: a loaded machine may preempt the fan-out for a while
        monkeypatch.setattr(fanout_pacing, "COOL_MIN_S", 0.02)
    held = cost and big
    heap = await new_heap(admin)
    block = ClientBlock()
    block.write("Shared")
    await push(admin, block.push_item(heap["id"]))
    block.synced = block.doc.get_state()
    hub = server.services.hub
    address = f"{heap['id']}:{block.id}"
    name = parse_document_name(address)
    assert name is not None
    writer_sink, slow, other = RecordingSink(), SlowSink(cost), RecordingSink()
    subs = [Subscription(sink, address, name, "u") for sink in (writer_sink, slow, other)]
    for sub in subs:
        await hub.join(sub)
    try:
        updates = []
        for text in ("one", "two", "three"):
            block.meta[text] = text
            updates.append(block.pending())
            block.synced = block.doc.get_state()
        hub.rooms[block.id].flushed_at = -1.0  # (a relay right after the join goes direct)
        assert hub.relay(subs[0], [updates[0]]) is not None  # fanned out at once
        assert len(other.frames) == 1
        assert hub.relay(subs[0], [updates[1]]) is not None
        for _ in range(10):  # the flusher's turns (a few ms at most, under the rest)
            await trio.lowlevel.checkpoint()
        if held:
            assert len(other.frames) == 1  # held: the room rests after its costly fan-out
        else:
            assert len(other.frames) == 2  # nothing held
        assert hub.relay(subs[0], [updates[2]]) is not None
        with trio.fail_after(5):
            while not all(b"three" in sink.frames[-1] for sink in (slow, other)):
                await trio.sleep(0.001)
        if held:  # the two that came meanwhile, merged into one frame
            assert len(other.frames) == len(slow.frames) == 2
            assert b"two" in other.frames[1] and b"three" in other.frames[1]
        else:
            assert len(other.frames) == 3
        assert not writer_sink.frames  # the writer has its own updates
        assert all(b"one" in sink.frames[0] for sink in (slow, other))
    finally:
        for sub in subs:
            hub.leave(sub)
