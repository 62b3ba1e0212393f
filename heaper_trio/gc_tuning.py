"""The cyclic garbage collector, tuned for a long-running server process.

Measured under ``bench_push.py --engine postgres`` (16 streams, one worker): with CPython's
default thresholds (700, 10, 10) the collector took 6-9 % of the server's CPU in steady
pushing (~0.5 ms per young collection, ~4 ms per middle one) and each full collection 150 ms,
most of it walking the same long-lived objects (modules, routes, caches made at start).

* ``gc.freeze()`` once serving: what exists at start is moved to the permanent generation,
  which no collection walks again (CPython's documented use: freeze after start-up).
* A larger first threshold: a request's short-lived cycles die between two young
  collections instead of being walked and promoted, so fewer collections run and less reaches
  the older generations. With both, the collector's share fell to 2-4 % in the same bench.
  A young collection then takes longer (~1 µs per object on this VM: ~10 ms at 10,000), a
  pause like the others the event loop already has; the full ones it replaces took 150 ms.

Only the real server process does this (``cli`` calls :func:`enable`); servers started by the
tests share one process for many servers, where freezing would keep every earlier server's
objects for good.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000  # allocations minus deallocations between young collections (700)
OLDER_THRESHOLDS = (10, 10)  # CPython's defaults for the older generations

_enabled = False


def enable() -> None:
    global _enabled
    _enabled = True
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)


def after_start() -> None:
    """Once serving: collect what start-up left, then freeze the survivors."""
    if _enabled:
        gc.collect()
        gc.freeze()
