"""The server process tunes the cyclic collector once serving (``gc_tuning``); servers
started inside the test process (run_server without the CLI) leave it alone."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from heaper_trio import gc_tuning


@pytest.fixture
def collector() -> Iterator[None]:
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
        gc_tuning._enabled = False


def test_only_the_cli_server_tunes_the_collector(collector: None) -> None:
    threshold = gc.get_threshold()
    frozen = gc.get_freeze_count()
    gc_tuning.after_start()  # run_server in a test process: nothing changes
    assert (gc.get_threshold(), gc.get_freeze_count()) == (threshold, frozen)
    gc_tuning.enable()
    assert gc.get_threshold() == (gc_tuning.YOUNG_THRESHOLD, *gc_tuning.OLDER_THRESHOLDS)
    gc_tuning.after_start()
    assert gc.get_freeze_count() > frozen
