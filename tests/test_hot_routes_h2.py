"""HTTP/2 requests on the raw-ASGI hot routes: a body may come without Content-Length (h2 has
no chunked encoding), and the hot path must read it as Quart does (found in review: a pull
sent so was answered ``400 invalid_json`` by the hot path, ``200`` by Quart)."""

from __future__ import annotations

import json
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.web import hot_routes


async def h2_post(url: str, path: str, body: bytes, token: str) -> tuple[int, dict[str, Any]]:
    """One POST over h2c with prior knowledge, its body sent without a length."""
    host, _, port = url.split("//")[1].rstrip("/").rpartition(":")
    stream = await trio.open_tcp_stream(host, int(port))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(
        sid,
        [
            (":method", "POST"),
            (":path", path),
            (":scheme", "http"),
            (":authority", host),
            ("authorization", f"Bearer {token}"),
            ("content-type", "application/json"),
        ],
    )
    conn.send_data(sid, body, end_stream=True)
    status, data = 0, b""
    async with stream:
        await stream.send_all(conn.data_to_send())
        while chunk := await stream.receive_some(65536):
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, sid)
                elif isinstance(event, h2.events.StreamEnded):
                    return status, json.loads(data)
            await stream.send_all(conn.data_to_send())
    raise AssertionError(f"the stream ended without an answer ({status})")


@pytest.mark.engines("sqlite")  # the HTTP layer only
async def test_an_h2_body_without_a_length_is_read_by_the_hot_path(
    admin: HeaperClient, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = str(admin.access_token)
    hot = await h2_post(server.url, "/api/sync/pull", b'{"blocks": []}', token)
    monkeypatch.setattr(hot_routes, "SERVED", {})  # the same request through Quart
    quart = await h2_post(server.url, "/api/sync/pull", b'{"blocks": []}', token)
    for _, answer in (hot, quart):
        answer.pop("server_time", None)
    assert hot == quart == (200, {"success": True, "blocks": []})
