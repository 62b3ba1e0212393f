"""The application: a Quart-Trio app over the services, served by hypercorn's trio worker.

``run_server`` owns everything for one server's life, outermost first: the trio-asyncio loop
(it must wrap ``serve`` so request tasks can reach asyncpg; stack-pitfalls 7), the services and
their supervisor nursery, then hypercorn. Setting the shutdown event stops accepting, lets
requests finish for ``graceful_timeout``, cancels background work and closes the database.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import cast

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework
from quart_trio import QuartTrio

from heaper_trio import gc_tuning
from heaper_trio.aio import open_asyncio_loop
from heaper_trio.services.container import Services, open_services
from heaper_trio.settings import Settings
from heaper_trio.web import (
    routes_admin,
    routes_admin_page,
    routes_app,
    routes_auth,
    routes_blocks,
    routes_docs,
    routes_files,
    routes_heaps,
    routes_instance,
    routes_jobs,
    routes_metrics,
    routes_sync,
    routes_trash,
    routes_uploads,
    ws,
)
from heaper_trio.web.access_log import AccessLog
from heaper_trio.web.app_queue import queue_body_without_yield
from heaper_trio.web.cors import install_cors
from heaper_trio.web.errors import install_error_handlers
from heaper_trio.web.h11_reads import hand_the_buffer_over
from heaper_trio.web.h11_writes import write_head_with_body
from heaper_trio.web.hot_routes import HotRoutes
from heaper_trio.web.http_guard import ASGIApp, HttpGuard
from heaper_trio.web.idle_timer import one_idle_task_per_connection
from heaper_trio.web.quart_compat import (
    end_pings_with_the_stream,
    keep_json_key_order,
    leave_pings_to_the_app,
    set_ws_compression,
    stop_idle_timer_at_eof,
)
from heaper_trio.web.read_size import read_bulk_in_large_pieces
from heaper_trio.web.routes_metrics import HttpMetrics, install_route_labels
from heaper_trio.web.send_bound import bound_sends, set_send_limits
from heaper_trio.web.ws_asgi import LiveSockets

log = logging.getLogger("heaper_trio")
BLUEPRINTS = (
    routes_instance.bp,
    routes_docs.bp,
    routes_auth.bp,
    routes_heaps.bp,
    routes_blocks.bp,
    routes_sync.bp,
    routes_trash.bp,
    routes_uploads.bp,
    routes_files.bp,
    routes_jobs.bp,
    routes_app.bp,
    routes_metrics.bp,
    routes_admin.bp,
    routes_admin_page.bp,
    ws.bp,
)


class EveryFewSeconds(logging.Filter):
    """Lets one record through every ``seconds``, counting the ones it held back.

    Out of file descriptors, the accept loop hypercorn uses (``trio.serve_listeners``) does not
    spin: it logs ``accept returned EMFILE`` with a traceback, sleeps 0.1 s and retries, while
    new connections wait in the listen backlog. Ten tracebacks a second would bury the log
    (and its disk) exactly when someone needs to read it."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self._last = -seconds
        self._held_back = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._last < self.seconds:
            self._held_back += 1
            return False
        self._last = now
        if self._held_back:
            record.msg = f"{record.msg} ({self._held_back} more like it not logged)"
            self._held_back = 0
        return True


ACCEPT_LOG = logging.getLogger("trio.serve_listeners")
if not any(isinstance(f, EveryFewSeconds) for f in ACCEPT_LOG.filters):
    ACCEPT_LOG.addFilter(EveryFewSeconds(5.0))


# Patches hypercorn's TCPServer class (web/quart_compat.py): done on import, so every server
# in this process, ours or a test's own hypercorn, frees the socket of a client that left
# and lets a closed WebSocket's connection end at once (no ping sleep left to wait out).
read_bulk_in_large_pieces()  # before the EOF wrapper, which calls it (web/read_size.py)
stop_idle_timer_at_eof()
write_head_with_body()  # one socket write per small answer (web/h11_writes.py)
bound_sends()  # a client that stops reading is cut, not waited on for ever (web/send_bound.py)
hand_the_buffer_over()  # a body part leaves h11 without two copies (web/h11_reads.py)
queue_body_without_yield()  # body parts reach the app without a yield each (web/app_queue.py)
one_idle_task_per_connection()  # the keep-alive timer moved, not respawned (web/idle_timer.py)
end_pings_with_the_stream()
leave_pings_to_the_app(["/ws"])  # its own idle timeout and Pings (services/live)


def guarded(app: QuartTrio, settings: Settings) -> ASGIFramework:
    """What hypercorn serves: the access log and request context (web/access_log.py), the
    live WebSockets as raw ASGI (web/ws_asgi.py), then behind the keep-alive workarounds
    (web/http_guard.py) the hot JSON routes as raw ASGI (web/hot_routes.py) and the app."""
    guard = HttpGuard(
        cast(ASGIApp, HotRoutes(cast(ASGIApp, app), app)),
        read_timeout=settings.http_read_timeout,
        drain_bytes=settings.http_drain_bytes,
        min_body_rate=settings.http_min_body_rate,
    )
    services: Services = app.config["SERVICES"]
    edge = cast(ASGIApp, HttpMetrics(guard)) if settings.metrics else guard
    live = LiveSockets(edge, services.live)
    return cast(
        ASGIFramework,
        AccessLog(
            cast(ASGIApp, live),
            enabled=settings.access_log,
            trust_forwarded_for=settings.trust_forwarded_for,
        ),
    )


def create_app(services: Services) -> QuartTrio:
    app = QuartTrio("heaper_trio")
    app.config["SERVICES"] = services
    # The largest body any route takes; JSON routes lower it per request (routing.limit_body)
    settings = services.settings
    app.config["MAX_CONTENT_LENGTH"] = max(
        settings.max_request_bytes,
        settings.max_chunk_bytes + 65536,
        settings.max_direct_upload_bytes + 1024 * 1024,
    )
    app.config["JSON_SORT_KEYS"] = False
    keep_json_key_order(app)
    set_ws_compression(settings.ws_compression)  # process-wide: hypercorn's handshake
    install_cors(app)
    install_error_handlers(app)
    install_route_labels(app)
    for bp in BLUEPRINTS:
        app.register_blueprint(bp)
    return app


def hypercorn_config(settings: Settings) -> Config:
    cfg = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    cfg.bind = [f"{host}:{settings.port}"]
    cfg.graceful_timeout = settings.graceful_timeout
    cfg.accesslog = None  # ours: one line per request (web/access_log.py)
    cfg.errorlog = logging.getLogger("heaper_trio.hypercorn")
    # Idle keep-alive connections, and the time from connection (or the end of the previous
    # answer) until a request's head is complete: hypercorn's idle timer runs until h11 has
    # the whole head (H11Protocol: Updated(idle=False) at h11.Request). HttpGuard makes the
    # timer restart after each answer and applies the same timeout to stalled bodies.
    cfg.keep_alive_timeout = settings.http_read_timeout
    # Not hypercorn's read_timeout: TCPServer._read_data applies it to every receive, whatever
    # the connection is doing, so a client quietly reading a long download or waiting on a
    # slow answer would be cut off (its request cancelled) after that many seconds.
    cfg.read_timeout = None
    # ...but a write the client stops taking is bounded: http_read_timeout plus the bytes it
    # accepted meanwhile over http_min_body_rate (web/send_bound.py), as request bodies are.
    set_send_limits(cfg, settings.http_read_timeout, settings.http_min_body_rate)
    cfg.backlog = 1024  # hypercorn's 100 drops SYNs when many clients reconnect at once
    cfg.websocket_max_message_size = settings.ws_max_message_bytes
    cfg.websocket_ping_interval = 20  # notices dead peers; a stuck send is shielded otherwise
    return cfg


@dataclass(frozen=True)
class RunningServer:
    urls: list[str]
    services: Services

    @property
    def url(self) -> str:
        return self.urls[0]


async def run_server(
    settings: Settings,
    *,
    shutdown: trio.Event | None = None,
    listen_fd: int | None = None,
    task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``shutdown`` is set; report the bound URLs through ``task_status``.

    ``listen_fd``: serve on this bound socket (a worker's, workers.py) instead of binding
    host:port; hypercorn takes it over and closes it."""
    config = hypercorn_config(settings)
    if listen_fd is not None:
        config.bind = [f"fd://{listen_fd}"]
    # A worker of several (listen_fd) is not the lone process: storage.make_storage
    lone = listen_fd is None
    async with open_asyncio_loop(), open_services(settings, shutdown, lone=lone) as services:
        app = create_app(services)
        async with trio.open_nursery() as serving:
            urls = await serving.start(
                partial(
                    serve,
                    guarded(app, settings),
                    config,
                    shutdown_trigger=services.shutdown.wait,
                )
            )
            log.info(
                "heaper_trio %s serving on %s (%s database)",
                services.version,
                ", ".join(urls),
                services.storage.engine,
            )
            gc_tuning.after_start()
            task_status.started(RunningServer(list(urls), services))
        log.info("stopped accepting; closing down")
