"""``GET /metrics``: real work moves the right numbers (both engines), the token guards the
route, labels stay bounded; parsed with prometheus_client's own parser.

The metrics are process-wide (one prometheus registry per process, as in production), and
other tests' servers ran in this process before: every check is a difference between two
scrapes of the same server."""

from __future__ import annotations

import httpx
import pytest
import trio

from heaper_trio.app import RunningServer
from heaper_trio.client import HeaperClient
from heaper_trio.protocol import messages as m
from heaper_trio.services import metrics
from heaper_trio.services.diagnostics import RealtimeCounters

from .conftest import StartServer, assert_error
from .live_client import UNCLOSED_SOCKETS, collect_closed_sockets, live_client  # noqa: F401
from .metrics_support import Samples, scrape, value
from .test_file_serving import png_bytes, upload
from .test_scans import finished
from .test_sync import ClientBlock, new_heap, push

pytestmark = [*UNCLOSED_SOCKETS]


class Delta:
    def __init__(self, before: Samples, after: Samples) -> None:
        self.before, self.after = before, after

    def __call__(self, name: str, **labels: str) -> float:
        return value(self.after, name, **labels) - value(self.before, name, **labels)


async def test_real_work_moves_the_numbers(
    admin: HeaperClient, server: RunningServer, engine: str
) -> None:
    heap = await new_heap(admin)
    before = await scrape(server.url)

    # an HTTP push
    block = ClientBlock()
    block.write("pushed")
    r = await push(admin, block.push_item(heap["id"]))
    assert r.status_code == 200, r.text
    # a live sync: a writes, b gets the frame (one delivery)
    live = ClientBlock()
    live.write("live")
    address = f"{heap['id']}:{live.id}"
    async with live_client(server.url) as a, live_client(server.url) as b:
        await a.sync(address, admin.access_token)
        await b.sync(address, admin.access_token)
        await a.expect(m.SyncStep1)
        during = await scrape(server.url)
        await a.send(m.SyncUpdate(address, live.pending()))
        assert (await a.expect(m.SyncStatus)).applied
        await b.expect(m.SyncUpdate)
    # an upload, then one thumbnail made and one from the cache
    data = png_bytes()
    answer = await upload(admin, heap["id"], "blk-img", data, "red.png", "image/png")
    chunked = bytes(range(256)) * 700  # a resumable upload of three chunks
    await admin.uploads.upload(heap["id"], "blk-bin", chunked, chunk_size=65536)
    for _ in range(2):
        r = await admin.get(f"/api/file/{answer['file_hash']}/thumbnail/small/red.webp")
        assert r.status_code == 200, r.text
    # a background job (reindexing the heap's files)
    r = await admin.post("/api/reindex_files", json={"heap_id": heap["id"]})
    assert r.status_code == 200, r.text
    assert (await finished(admin, r.json()["scan_id"]))["state"] == "done"
    # an unknown path: one label whatever the path
    for path in ("/no/such/1", "/no/such/2"):
        assert (await admin.get(path)).status_code == 404
    # a CORS preflight (answered before any view) still names its route
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    r = await admin.http.options("/api/sync/push", headers=preflight)
    assert r.status_code == 204
    with trio.fail_after(5):  # the connections close on their own time
        while value(await scrape(server.url), "heaper_ws_connections", path="/ws") != value(
            before, "heaper_ws_connections", path="/ws"
        ):
            await trio.sleep(0.02)
    after = await scrape(server.url)
    d = Delta(before, after)

    push_count = "heaper_http_request_duration_seconds_count"
    assert d(push_count, method="POST", route="/api/sync/push", status="200") == 1
    assert d(push_count, method="GET", route=metrics.UNMATCHED, status="404") == 2
    assert d(push_count, method="OPTIONS", route="/api/sync/push", status="204") == 1
    thumb_route = "/api/file/<key>/thumbnail/<size>/<slug>"
    assert d(push_count, method="GET", route=thumb_route, status="200") == 2
    assert not any("/no/such" in str(labels) for _, labels in after)
    assert d("heaper_ws_connections_opened_total", path="/ws") == 2
    assert (
        value(during, "heaper_ws_connections", path="/ws")
        - value(before, "heaper_ws_connections", path="/ws")
        == 2
    )
    assert (
        value(during, "heaper_live_documents_loaded")
        - value(before, "heaper_live_documents_loaded")
        == 1
    )
    assert d("heaper_live_documents_loaded") == 0  # dropped when the last one left
    assert d("heaper_live_deliveries_total") == 1  # the update, to b (a wrote it)
    assert d("heaper_upload_bytes_total", kind="direct") == len(data)
    assert d("heaper_upload_bytes_total", kind="chunk") == len(chunked)
    assert d("heaper_thumbnail_cache_hits_total") == 1
    assert d("heaper_jobs_total", kind="thumbnail", state="done") == 1
    assert d("heaper_jobs_total", kind="reindex", state="done") == 1
    assert d("heaper_jobs_running") == 0
    # storage: the push and the live edit committed, in batches; reads and writes timed
    assert d("heaper_db_commit_batch_size_count", engine=engine) >= 1
    assert d("heaper_db_commit_batch_size_sum", engine=engine) >= 2
    assert d("heaper_db_commit_batch_seconds_count", engine=engine) >= 1
    assert d("heaper_db_round_trip_seconds_count", engine=engine, kind="write") >= 2
    assert d("heaper_db_round_trip_seconds_count", engine=engine, kind="read") >= 1


@pytest.mark.engines("sqlite")
async def test_the_token_guards_the_route(start_server: StartServer) -> None:
    server = await start_server(metrics_token="s3cret-token")
    async with httpx.AsyncClient(base_url=server.url) as c:
        assert_error(await c.get("/metrics"), 401, "token_missing")
        bad = {"Authorization": "Bearer s3cret-tokeN"}
        assert_error(await c.get("/metrics", headers=bad), 401, "token_invalid")
        assert_error(await c.get("/metrics?token=s3cret-token"), 401, "token_missing")
    samples = await scrape(server.url, "s3cret-token")
    assert value(samples, "heaper_http_request_duration_seconds_count", status="401") >= 3


@pytest.mark.engines("sqlite")
async def test_metrics_off_is_a_404(start_server: StartServer) -> None:
    server = await start_server(metrics=False)
    async with httpx.AsyncClient(base_url=server.url) as c:
        assert_error(await c.get("/metrics"), 404, "not_found")


def test_labels_stay_bounded() -> None:
    before = metrics.HTTP_DURATION.labels("other", metrics.UNMATCHED, "none")._sum.get()
    metrics.http_request("BREW", metrics.UNMATCHED, None, 0.5)
    after = metrics.HTTP_DURATION.labels("other", metrics.UNMATCHED, "none")._sum.get()
    assert after - before == 0.5


async def test_job_states_and_slow_consumers() -> None:
    """A job that raises is ``failed``, one cancelled ``cancelled``; either way it no longer
    runs. A dropped slow consumer counts for /api/health and for /metrics alike."""

    def total(state: str) -> float:
        return float(metrics.JOBS.labels("probe-test", state)._value.get())

    with pytest.raises(ValueError), metrics.job("probe-test"):
        raise ValueError("bad file")
    with trio.CancelScope() as scope, metrics.job("probe-test"):
        scope.cancel()
        await trio.sleep(1)
    with metrics.job("probe-test"):
        pass
    assert [total(s) for s in ("failed", "cancelled", "done")] == [1, 1, 1]
    assert metrics.JOBS_RUNNING.labels("probe-test")._value.get() == 0
    counters = RealtimeCounters()
    before = metrics.SLOW_DROPPED._value.get()
    counters.dropped_slow_consumer()
    assert counters.dropped_slow_consumers == 1
    assert metrics.SLOW_DROPPED._value.get() - before == 1
