"""The server process freezes what start-up made once serving (``gc_tuning``); servers
started inside the test process (run_server without the CLI) leave the collector alone."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from heaper_trio import gc_tuning


@pytest.fixture
def collector() -> Iterator[None]:
    try:
        yield
    finally:
        gc.unfreeze()
        gc_tuning._enabled = False


def test_only_the_cli_server_freezes(collector: None) -> None:
    frozen = gc.get_freeze_count()
    gc_tuning.after_start()  # run_server in a test process: nothing changes
    assert gc.get_freeze_count() == frozen
    gc_tuning.enable()
    gc_tuning.after_start()
    assert gc.get_freeze_count() > frozen
