"""The cyclic garbage collector in a long-running server process: what start-up made is
frozen once serving.

Measured under ``bench_push.py --engine postgres`` (16 streams, one worker, ``gc.callbacks``):
with CPython's default thresholds (700, 10, 10) the collector took 6-9 % of the server's CPU
in steady pushing, and each full collection ~150 ms, much of it walking the same long-lived
objects (modules, routes, settings, caches made at start). ``gc.freeze()`` moves what exists
once serving to the permanent generation, which no collection walks again (CPython's
documented use: freeze after start-up).

Tried and left out: a larger young threshold (10,000-20,000). It cut the collector's share
to 3-5 %, but a middle collection then took up to 190 ms (ten young collections' survivors
at once) and the same-run A/B of bench_push showed no change in CPU per update within the
noise of a loaded machine.

The cost: an object frozen at start that later becomes part of a garbage cycle is never
collected (nor what it holds then). Each such object can be lost once, so the cost is bounded
by what start-up made; objects freed by reference counting (most, such as a closed
connection) are freed as usual.

Only the real server process does this (``cli`` calls :func:`enable`); servers started by the
tests share one process for many servers, where freezing would keep every earlier server's
objects for good.
"""

from __future__ import annotations

import gc

_enabled = False


def enable() -> None:
    global _enabled
    _enabled = True


def after_start() -> None:
    """Once serving: collect what start-up left, then freeze the survivors."""
    if _enabled:
        gc.collect()
        gc.freeze()
