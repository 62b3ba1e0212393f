"""Prometheus metrics: the one module that owns the metric objects (``GET /metrics``).

Every other module reaches prometheus through the small functions here, so the metric names,
labels and buckets are read in one place and label sets stay bounded: HTTP requests are
labelled by route rule (``/api/file/<key>/thumbnail/<size>/<slug>``), never by raw path;
methods outside the usual few are ``other``. Storage never imports this: it reports
through ``storage/observe.py``, and :func:`install` plugs :data:`STORAGE` in.

Hot paths count per batch, not per item: the live fan-out adds once per frame it sends to a
room (``deliveries(n)``), not once per subscriber.

Several processes (``--workers N``): the supervisor gives every worker one directory in
``PROMETHEUS_MULTIPROC_DIR`` (:func:`multiprocess_dir`); prometheus_client then keeps each
value in a file of that directory, and any worker's ``/metrics`` sums the files of all of them
(:func:`exposition`). Gauges count the live processes only (``livesum``): the supervisor
removes a dead worker's gauge files (:func:`worker_exited`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from heaper_trio.storage import observe

# No ``*_created`` series: a third of the answer, and Prometheus reads them only when a
# feature flag asks
disable_created_metrics()

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # any path no route serves: one label, whatever was asked for

# seconds: from a fast JSON answer to a long download
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
DB_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

HTTP_DURATION = Histogram(
    "heaper_http_request_duration_seconds",
    "HTTP requests by method, route rule and status: time until the answer's last byte was "
    "handed to the server (_count is the number of requests)",
    ("method", "route", "status"),
    buckets=HTTP_BUCKETS,
)
WS_CONNECTIONS = Gauge(
    "heaper_ws_connections",
    "Open WebSocket connections",
    ("path",),
    multiprocess_mode="livesum",
)
WS_OPENED = Counter("heaper_ws_connections_opened", "WebSocket connections accepted", ("path",))
DOCUMENTS_LOADED = Gauge(
    "heaper_live_documents_loaded",
    "Block documents held in memory for live subscribers",
    multiprocess_mode="livesum",
)
DELIVERIES = Counter("heaper_live_deliveries", "Frames queued to live subscribers by the fan-out")
COALESCED = Counter(
    "heaper_live_coalesced_updates",
    "Updates merged into another update's frame by the fan-out (frames not sent)",
)
SLOW_DROPPED = Counter(
    "heaper_live_slow_consumers_dropped",
    "Live connections closed because their outbox was full (they reconnect and resync)",
)
COMMIT_BATCH_SIZE = Histogram(
    "heaper_db_commit_batch_size",
    "Writes gathered into one group-commit transaction",
    ("engine",),
    buckets=BATCH_BUCKETS,
)
COMMIT_BATCH_SECONDS = Histogram(
    "heaper_db_commit_batch_seconds",
    "Time of one group-commit transaction, BEGIN to COMMIT",
    ("engine",),
    buckets=DB_BUCKETS,
)
DB_ROUND_TRIP = Histogram(
    "heaper_db_round_trip_seconds",
    "Database calls from the event loop's side, queueing included (SQLite's inline "
    "point reads are not timed)",
    ("engine", "kind"),
    buckets=DB_BUCKETS,
)
JOBS = Counter("heaper_jobs", "Background jobs finished, by kind and state", ("kind", "state"))
JOBS_RUNNING = Gauge(
    "heaper_jobs_running", "Background jobs running now", ("kind",), multiprocess_mode="livesum"
)
UPLOAD_BYTES = Counter(
    "heaper_upload_bytes", "File bytes received by uploads (direct or chunked)", ("kind",)
)
THUMBNAIL_CACHE_HITS = Counter(
    "heaper_thumbnail_cache_hits", "Thumbnails answered from the cache, not made"
)


_children: dict[tuple[str, ...], Any] = {}


def _labelled(metric: Counter | Gauge | Histogram, *values: str) -> Any:
    """``metric.labels(*values)``, looked up once: ``labels`` checks and locks on every call,
    which cost as much as the observation itself. Label sets are bounded, so is this."""
    key = (metric._name, *values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


# -- HTTP ---------------------------------------------------------------------------------------


def http_request(method: str, route: str, status: int | None, seconds: float) -> None:
    """One HTTP exchange; ``status`` None: no answer began (the client left, or a crash)."""
    _labelled(
        HTTP_DURATION,
        method if method in METHODS else "other",
        route,
        "none" if status is None else str(status),
    ).observe(seconds)


# -- live ---------------------------------------------------------------------------------------


@contextmanager
def ws_connection(path: str) -> Iterator[None]:
    """One accepted WebSocket, open for the duration."""
    _labelled(WS_OPENED, path).inc()
    _labelled(WS_CONNECTIONS, path).inc()
    try:
        yield
    finally:
        _labelled(WS_CONNECTIONS, path).dec()


def document_loaded() -> None:
    DOCUMENTS_LOADED.inc()


def document_dropped() -> None:
    DOCUMENTS_LOADED.dec()


def deliveries(n: int) -> None:
    if n:
        DELIVERIES.inc(n)


def coalesced(n: int) -> None:
    if n > 0:
        COALESCED.inc(n)


def slow_consumer_dropped() -> None:
    SLOW_DROPPED.inc()


# -- jobs, files --------------------------------------------------------------------------------


def job_started(kind: str) -> None:
    _labelled(JOBS_RUNNING, kind).inc()


def job_finished(kind: str, state: str) -> None:
    _labelled(JOBS_RUNNING, kind).dec()
    _labelled(JOBS, kind, state).inc()


@contextmanager
def job(kind: str) -> Iterator[None]:
    """A job's run: ``done`` when it returns, ``failed`` on an error, ``cancelled`` else."""
    job_started(kind)
    state = "cancelled"
    try:
        yield
        state = "done"
    except Exception:
        state = "failed"
        raise
    finally:
        job_finished(kind, state)


def upload_bytes(kind: str, n: int) -> None:
    _labelled(UPLOAD_BYTES, kind).inc(n)


def thumbnail_cache_hit() -> None:
    THUMBNAIL_CACHE_HITS.inc()


# -- storage ------------------------------------------------------------------------------------


class _StorageMetrics:
    """What ``storage/observe.py`` reports, as metrics."""

    def commit_batch(self, engine: str, size: int, seconds: float) -> None:
        _labelled(COMMIT_BATCH_SIZE, engine).observe(size)
        _labelled(COMMIT_BATCH_SECONDS, engine).observe(seconds)

    def round_trip(self, engine: str, kind: str, seconds: float) -> None:
        _labelled(DB_ROUND_TRIP, engine, kind).observe(seconds)


STORAGE = _StorageMetrics()


def install() -> None:
    """Storage's timings go to the metrics from now on (idempotent)."""
    observe.set_observer(STORAGE)


# -- exposition ---------------------------------------------------------------------------------


def exposition() -> bytes:
    """The text format of every metric: this process's, or with several workers, the sum
    over the directory they share."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path)
    return generate_latest(registry)


@contextmanager
def multiprocess_dir() -> Iterator[str]:
    """A fresh directory for the workers' metric files, removed when they are all gone."""
    path = tempfile.mkdtemp(prefix="heaper-metrics-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def worker_exited(pid: int, path: str) -> None:
    """Forget a dead worker's gauges (its counters stay: they still count)."""
    multiprocess.mark_process_dead(pid, path)
