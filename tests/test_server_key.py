"""The server key is the server's identity: kept, checked against the database, never lost."""

from __future__ import annotations

from collections.abc import Callable

import trio

from heaper_trio.aio import open_asyncio_loop
from heaper_trio.errors import StartupError
from heaper_trio.keys import SERVER_KEY_FILE, KeyPair
from heaper_trio.services.container import open_services
from heaper_trio.settings import Settings


async def _start_once(settings: Settings) -> str:
    async with open_asyncio_loop(), open_services(settings) as services:
        return services.server_key.public_key


async def _startup_error(settings: Settings) -> StartupError:
    """The StartupError a start fails with, unwrapped from trio's exception groups."""
    try:
        await _start_once(settings)
    except BaseException as e:
        leaf: BaseException = e
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        assert isinstance(leaf, StartupError), e
        return leaf
    raise AssertionError("the server started")


async def test_key_survives_restarts(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    first = await _start_once(settings)
    assert await _start_once(settings) == first
    key_file = settings.data_path / SERVER_KEY_FILE
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert KeyPair.load(key_file).public_key == first


async def test_missing_key_file_is_refused_not_regenerated(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    owner = await _start_once(settings)
    (settings.data_path / SERVER_KEY_FILE).unlink()
    error = await _startup_error(settings)
    assert "missing" in str(error) and owner in str(error)
    assert not (settings.data_path / SERVER_KEY_FILE).exists()


async def test_foreign_key_file_is_refused(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    await _start_once(settings)
    key_file = settings.data_path / SERVER_KEY_FILE
    key_file.unlink()
    KeyPair.generate().save(key_file)
    assert "is not the key this database belongs to" in str(await _startup_error(settings))


async def test_two_processes_starting_together_agree(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    keys: list[str] = []

    async def start() -> None:
        keys.append(await _start_once(settings))

    async with trio.open_nursery() as n:
        n.start_soon(start)
        n.start_soon(start)
    assert len(set(keys)) == 1
