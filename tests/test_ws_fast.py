"""Issue 12, item 1 (the live path), on a real server: no hypercorn ping task for ``/ws`` (its
protocol keeps its own time; item 2), and an idle open document holds no task (memory per idle
WebSocket). Without a server: ``test_live_outbox_batches.py``."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from trio_websocket import open_websocket_url

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.protocol import messages as m

from .live_client import UNCLOSED_SOCKETS, collect_closed_sockets, live_client  # noqa: F401 (autouse)
from .test_sync import ClientBlock, new_heap

pytestmark = [pytest.mark.engines("sqlite"), *UNCLOSED_SOCKETS]  # no storage involved


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
