"""The one object holding every service, created at start and handed to the web layer.

``open_services`` owns their lifetime: it prepares the data directory and server key, opens
storage (migrations included), checks the database belongs to this server key, runs the
housekeeping task in the caller's nursery, and closes storage on the way out.

It is also the only place that wires services together: who hears about commits and user
events is decided in ``_wire`` and nowhere else, and ``Services`` is frozen, so nothing swaps a
service or attaches a hook once the server runs. Reading one function tells the whole graph.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path

import trio

from heaper_trio import __version__
from heaper_trio.errors import StartupError
from heaper_trio.keys import SERVER_KEY_FILE, KeyPair, load_or_create_server_key
from heaper_trio.services import metrics
from heaper_trio.services.accounts import AccountService
from heaper_trio.services.admin import UserAdmin
from heaper_trio.services.admin_console import AdminConsole
from heaper_trio.services.admin_links import AdminSignIn
from heaper_trio.services.diagnostics import RealtimeCounters
from heaper_trio.services.documents import DocumentService
from heaper_trio.services.file_claims import sweep_claims_forever
from heaper_trio.services.files import FileService
from heaper_trio.services.heaps import HeapService
from heaper_trio.services.live.account_watch import watch_accounts_forever
from heaper_trio.services.live.bridge import ProcessBridge
from heaper_trio.services.live.context import LiveContext
from heaper_trio.services.live.hub import LiveHub
from heaper_trio.services.media.client_thumbnails import ClientThumbnails
from heaper_trio.services.media.service import MediaService
from heaper_trio.services.query import QueryService
from heaper_trio.services.ratelimit import AuthRateLimits
from heaper_trio.services.scans.service import ScanService
from heaper_trio.services.search_catchup import SearchCatchUp
from heaper_trio.services.tokens import TokenService
from heaper_trio.services.upload_expiry import UploadExpiry
from heaper_trio.settings import Settings
from heaper_trio.storage import Storage, make_storage
from heaper_trio.storage.blobs import make_object_store

log = logging.getLogger(__name__)
PURGE_INTERVAL_S = 300


@dataclass(frozen=True)
class Services:
    settings: Settings
    storage: Storage
    server_key: KeyPair
    tokens: TokenService
    accounts: AccountService
    admin: UserAdmin
    admin_console: AdminConsole
    admin_sign_in: AdminSignIn
    auth_limits: AuthRateLimits
    documents: DocumentService
    heaps: HeapService
    query: QueryService
    realtime: RealtimeCounters
    hub: LiveHub
    files: FileService
    client_thumbnails: ClientThumbnails
    media: MediaService
    scans: ScanService
    started_at: float = field(default_factory=time.time)
    version: str = __version__
    shutdown: trio.Event = field(default_factory=trio.Event)

    @cached_property
    def live(self) -> LiveContext:
        """The narrow view live connections get (built once, on first use): they cannot reach
        storage writes, files or scans through it."""
        return LiveContext.of(self)


def prepare_data_dir(settings: Settings) -> None:
    path = settings.data_path
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise StartupError(f"data_dir: cannot use {path}: {e.strerror or e}") from None


@asynccontextmanager
async def open_storage(settings: Settings, *, lone: bool = True) -> AsyncIterator[Storage]:
    """Open the configured engine or fail with a StartupError that names the setting.
    ``lone``: this process is not one of ``--workers``' (``make_storage``)."""
    storage = make_storage(settings, lone=lone)
    try:
        await storage.open()
    except StartupError:
        raise
    except Exception as e:
        where = "database_url" if settings.database_url else "data_dir"
        raise StartupError(f"{where}: cannot open the {storage.engine} database: {e}") from None
    try:
        yield storage
    finally:
        with trio.CancelScope(shield=True):
            await storage.close()


@asynccontextmanager
async def open_services(
    settings: Settings, shutdown: trio.Event | None = None, *, lone: bool = True
) -> AsyncIterator[Services]:
    """Services plus their supervisor nursery; background work is cancelled before storage
    closes, so no task ever sees a closed database."""
    prepare_data_dir(settings)
    if settings.metrics:
        metrics.install()  # storage's timings (storage/observe.py) become metrics
    objects = make_object_store(settings)
    if objects is not None:
        await objects.check()
    async with open_storage(settings, lone=lone) as storage:
        server_key = await bind_server_key(storage, settings.data_path)
        tokens = TokenService(
            server_key, access_ttl=settings.access_token_ttl, refresh_ttl=settings.refresh_token_ttl
        )
        services = Services(
            settings=settings,
            storage=storage,
            server_key=server_key,
            tokens=tokens,
            accounts=AccountService(storage, tokens, server_key, settings),
            admin=(admin := UserAdmin(storage)),
            auth_limits=AuthRateLimits(settings.auth_rate_limit),
            documents=(documents := DocumentService(storage, settings)),
            query=QueryService(documents, catchup := SearchCatchUp(storage)),
            realtime=(counters := RealtimeCounters()),
            hub=(hub := LiveHub(documents, counters)),
            media=(
                media := MediaService(
                    settings.data_path / "thumbnails" / "generated", max_jobs=settings.media_jobs
                )
            ),
            files=(
                files := FileService(
                    storage,
                    documents,
                    settings,
                    hub.publish_user_event,
                    probe=media.probe,
                    objects=objects,
                )
            ),
            scans=(
                scans := ScanService(
                    storage, documents, files, settings, hub.publish_user_event, media
                )
            ),
            admin_console=AdminConsole(admin, storage, scans, media, settings.data_path),
            admin_sign_in=AdminSignIn(storage, tokens, settings.admin_session_ttl),
            client_thumbnails=(thumbs := ClientThumbnails(storage, settings.data_path, objects)),
            heaps=HeapService(documents, files, thumbs),
            shutdown=shutdown if shutdown is not None else trio.Event(),
        )
        bridge = ProcessBridge(storage, hub) if storage.shares_processes else None
        _wire(documents, services.heaps, hub, bridge, admin, services.scans, catchup)
        async with trio.open_nursery() as supervisor:
            supervisor.start_soon(_purge_expired_forever, storage)
            supervisor.start_soon(sweep_claims_forever, storage, files.finish_interrupted_deletions)
            await supervisor.start(services.hub.run)
            await supervisor.start(catchup.run)
            supervisor.start_soon(UploadExpiry(services.files, services.scans.table).run)
            supervisor.start_soon(documents.history.maintain_forever)
            supervisor.start_soon(_finish_purges, services.heaps)
            await supervisor.start(services.scans.run)
            if bridge is not None:
                await supervisor.start(bridge.run)
            else:  # SQLite: the command line's account changes, polled while sockets are open
                await supervisor.start(partial(watch_accounts_forever, storage, hub))
            try:
                yield services
            finally:
                supervisor.cancel_scope.cancel()
                with trio.CancelScope(shield=True):
                    await services.media.aclose()
                    if objects is not None:
                        await objects.aclose()


def _wire(
    documents: DocumentService,
    heaps: HeapService,
    hub: LiveHub,
    bridge: ProcessBridge | None,
    admin: UserAdmin,
    scans: ScanService,
    catchup: SearchCatchUp,
) -> None:
    """Who hears what, in one place. Every stored change reaches the hub (this process's
    subscribers) and, with processes sharing a database, the bridge (the other processes);
    user events (scan progress, file ready) the hub delivers to its own sinks, and the bridge
    carries them to the other processes, and brings this process the aborts of its jobs
    asked through another (the jobs table). Pushes that set ``permanently_deleted_at`` purge
    through the heap service, as emptying the trash does. An account whose tokens an admin
    revokes has its live connections re-checked at once: in this process by ``UserAdmin``,
    in the others (and after the command line's ``users``) as their storage hears the row
    change (PostgreSQL's NOTIFY; on SQLite, which has one process, the command line's
    change is polled for while live sockets are open: ``live/account_watch.py``). Live
    commits leave their blocks' search rows to ``SearchCatchUp``.

    The lists are assigned whole rather than appended to, so this is the complete statement
    of the wiring: no constructor's own registration can add to it or double it.
    """
    documents.listeners[:] = [hub.on_commit, catchup.on_commit] + (
        [bridge.on_commit] if bridge else []
    )
    hub.user_event_hooks[:] = [bridge.on_user_event] if bridge else []
    if bridge is not None:
        bridge.job_abort_hooks[:] = [scans.table.abort_local]
    documents.purger = heaps.purge
    admin.on_revoked = hub.recheck_account  # revoked or rejected: live sockets re-check now
    documents.storage.watch_user_rows(hub.recheck_account)  # ... also when another process did


async def bind_server_key(storage: Storage, data_dir: Path) -> KeyPair:
    """The server key, checked against the one the database was created with.

    Tokens and clients trust this key, so a mismatch is refused rather than papered over:
    a missing key file is never silently regenerated for an existing database.
    """
    key_path = data_dir / SERVER_KEY_FILE
    owner = await storage.get_meta("server_public_key")
    if owner is not None and not key_path.exists():
        raise StartupError(
            f"data_dir: the server key file {key_path} is missing, but this database belongs "
            f"to server key {owner}. Restore the key file from a backup (see "
            "docs/self-hosting.md); a new key would log every client out."
        )
    server_key = load_or_create_server_key(data_dir)
    owner = await storage.claim_meta("server_public_key", server_key.public_key)
    if owner != server_key.public_key:
        raise StartupError(
            f"data_dir: the key in {key_path} ({server_key.public_key}) is not the key this "
            f"database belongs to ({owner}). Restore the right key file, or point data_dir and "
            "database_url at a matching pair; processes sharing a database must share its key "
            f"(the same {SERVER_KEY_FILE} in every data_dir)."
        )
    return server_key


async def _finish_purges(heaps: HeapService) -> None:
    try:
        if purged := await heaps.finish_purges():
            log.info("purged %d blocks marked permanently deleted before the last stop", purged)
    except Exception:  # the blocks stay in the trash; the next start tries again
        log.exception("finishing interrupted purges failed")


async def _purge_expired_forever(storage: Storage) -> None:
    """Housekeeping: drop expired challenges and refresh tokens so tables stay small."""
    while True:
        try:
            removed = await storage.purge_expired(int(time.time() * 1000))
            if removed:
                log.debug("purged %d expired auth rows", removed)
        except Exception:  # a failing purge must not take the server down; retry later
            log.exception("purging expired auth rows failed")
        await trio.sleep(PURGE_INTERVAL_S)
