"""What an idle ``/ws`` connection holds (issue 12, memory per idle socket): idle outboxes
share one empty deque, which nothing may change, and the access log's ``send`` wrapper has
no ``__dict__``."""

from __future__ import annotations

import pytest

from heaper_trio.logs import RequestFields
from heaper_trio.services.live import outbox as outbox_module
from heaper_trio.services.live.outbox import Outbox
from heaper_trio.web.access_log import _WatchingSend


async def test_idle_outboxes_share_an_empty_deque_that_stays_empty() -> None:
    idle = outbox_module._IDLE
    a, b = Outbox(1024), Outbox(1024)
    assert a.frames is idle and b.frames is idle
    a.offer(b"1")
    a.offer(b"2")
    assert list(a.frames) == [b"1", b"2"] and b.frames is idle and not idle
    assert await a.take() == b"1"
    assert await a.take() == b"2"
    assert a.frames is idle and a.size == 0
    await a.put(b"3")
    b.offer(b"4")
    assert a.take_ready() == [b"3"] and b.take_ready() == [b"4"]
    assert a.frames is idle and b.frames is idle and not idle
    with pytest.raises(RuntimeError):
        idle.append(b"x")


async def test_the_access_log_send_wrapper_is_slotted() -> None:
    sent: list[object] = []

    async def send(message: object) -> None:
        sent.append(message)

    fields = RequestFields("websocket", "GET", "/ws", None)
    wrapper = _WatchingSend(fields, send)  # type: ignore[arg-type]
    assert not hasattr(wrapper, "__dict__") and wrapper.__wrapped__ is send
    await wrapper({"type": "websocket.accept"})
    await wrapper({"type": "websocket.close", "code": 4001})
    assert fields.status == 101 and fields.close_code == 4001 and len(sent) == 2
