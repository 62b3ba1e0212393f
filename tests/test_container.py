"""The service container: frozen once built, wired in ``open_services`` alone (container._wire).

A listener registered twice would send every commit to live clients twice; one missing would
leave them without updates, or other processes without announcements."""

from __future__ import annotations

import dataclasses

import pytest

from heaper_trio.app import RunningServer


async def test_services_cannot_be_swapped_after_start(server: RunningServer) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        server.services.hub = server.services.hub  # type: ignore[misc]


async def test_each_listener_is_wired_once(server: RunningServer) -> None:
    services = server.services
    listeners = services.documents.listeners
    hooks = services.hub.user_event_hooks
    assert listeners[0] == services.hub.on_commit
    catchup = services.query.catchup
    assert catchup is not None and listeners[1] == catchup.on_commit  # live edits' search rows
    if services.storage.shares_processes:  # PostgreSQL: the process bridge hears both
        assert len(listeners) == 3 and len(hooks) == 1
        bridge = listeners[2].__self__  # type: ignore[attr-defined]
        assert hooks[0] == bridge.on_user_event
    else:
        assert len(listeners) == 2 and hooks == []
