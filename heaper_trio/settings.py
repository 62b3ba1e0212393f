"""Settings, declared once.

``SETTINGS`` (in ``settings_catalog``) is the single registry: the TOML loader, the
``HEAPER_*`` environment variables, the command-line flags, validation and
``docs/configuration.md`` all derive from it (a test checks the doc lists every entry).
Precedence, lowest first: default, config file, environment, command line. A bad value fails
at start with a message naming the key.

One rule per type wherever a value comes from: a boolean is ``true/false/yes/no/on/off/1/0`` in
any case (a TOML boolean, or the TOML integers 0 and 1, too); a choice matches in any case.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heaper_trio.errors import StartupError
from heaper_trio.settings_catalog import SETTINGS, Setting
from heaper_trio.settings_values import parse_bool, unknown_variables

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
# workers = 0 on PostgreSQL starts one process per usable CPU but one (left to the
# database), at least 1 and at most this many
AUTO_WORKERS_MAX = 4


@dataclass(frozen=True)
class Settings:
    """Resolved settings; defaults live only in SETTINGS (see load_settings)."""

    host: str
    port: int
    data_dir: str
    database_url: str
    workers: int
    name: str
    public_url: str
    auto_approve: bool
    auth_rate_limit: int
    trust_forwarded_for: bool
    access_token_ttl: int
    refresh_token_ttl: int
    challenge_ttl: int
    admin_session_ttl: int
    max_request_bytes: int
    max_sync_batch: int
    history_retention_days: int
    sqlite_synchronous: str
    pg_pool_min: int
    pg_pool_max: int
    graceful_timeout: float
    log_level: str
    log_format: str
    access_log: bool
    metrics: bool
    metrics_token: str
    max_upload_bytes: int
    max_direct_upload_bytes: int
    max_chunk_bytes: int
    upload_expiry_hours: int
    files_backend: str
    s3_endpoint: str
    s3_bucket: str
    s3_region: str
    s3_threads: int
    s3_bulk_threads: int
    s3_bulk_per_user: int
    files_presigned_redirect: bool
    scan_roots: str
    media_jobs: int
    scan_jobs: int
    job_heartbeat_timeout: float
    ws_outbox_bytes: int
    ws_max_message_bytes: int
    ws_max_connections_per_user: int
    ws_compression: bool
    http_read_timeout: float
    http_drain_bytes: int
    http_min_body_rate: int
    max_uploads_per_user: int

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def scan_root_paths(self) -> list[Path]:
        return [Path(p).expanduser().resolve() for p in self.scan_roots.split(":") if p.strip()]

    @property
    def engine(self) -> str:
        return "postgres" if self.database_url else "sqlite"

    @property
    def worker_count(self) -> int:
        """``workers`` resolved: 0 means 1 on SQLite, else one CPU fewer than this process may
        use (at least 1, at most a bound). The CPU left is the database's: with PostgreSQL on
        the same machine, 2 workers on 2 CPUs pushed 0.6x what 1 did, at twice the server and
        database CPU per update (bench_push, 16 streams into one heap: each worker's group
        commits are half as large, their event loops wake per request rather than per batch,
        and the two take turns on the heap's row lock across each other's WAL flush)."""
        if self.workers or self.engine == "sqlite":
            return self.workers or 1
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(1, min((cpus or 1) - 1, AUTO_WORKERS_MAX))

    def replace(self, **changes: Any) -> Settings:
        return load_settings(environ={}, overrides={**dataclasses.asdict(self), **changes})


def _coerce(setting: Setting, raw: Any, source: str) -> Any:
    """Turn a raw value (TOML value or string) into the setting's type, or fail naming it."""
    where = f"{source}: {setting.name}" if source != "env" else setting.env
    t = setting.type
    try:
        if t is bool:
            value: Any = parse_bool(raw)
        elif t is int:
            if isinstance(raw, (bool, float)):
                raise ValueError
            value = int(raw)
        elif t is float:
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)
        else:
            if not isinstance(raw, str):
                raise ValueError
            value = raw
    except (TypeError, ValueError):
        raise StartupError(f"{where}: expected {t.__name__}, got {raw!r}") from None
    if setting.choices is not None:  # any case; the value becomes the choice as spelt
        value = next((c for c in setting.choices if c.lower() == str(value).lower()), value)
    if setting.choices is not None and value not in setting.choices:
        raise StartupError(f"{where}: must be one of {', '.join(setting.choices)}, got {value!r}")
    if setting.minimum is not None and value < setting.minimum:
        raise StartupError(f"{where}: must be at least {setting.minimum}, got {value!r}")
    if setting.check is not None and (problem := setting.check(value)):
        raise StartupError(f"{where}: {problem}")
    return value


def unknown_env_warnings(environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per HEAPER_* variable no setting reads, naming the closest known one."""
    env = os.environ if environ is None else environ
    return unknown_variables(env, [s.env for s in SETTINGS])


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise StartupError(f"config file {p} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise StartupError(f"config file {p} is not valid TOML: {e}") from None
    # Allow either top-level keys or a [server] table, so one file can grow sections later.
    if "server" in data and isinstance(data["server"], dict):
        data = {**{k: v for k, v in data.items() if k != "server"}, **data["server"]}
    return data


def load_settings(
    *,
    config_path: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge default < config file < environment < overrides (command-line flags)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {s.name: s.default for s in SETTINGS}
    config_path = config_path or env.get("HEAPER_CONFIG") or None
    if config_path:
        source = f"config file {config_path}"
        for key, raw in read_config_file(config_path).items():
            setting = BY_NAME.get(key)
            if setting is None:
                raise StartupError(f"{source}: unknown key {key!r}")
            values[key] = _coerce(setting, raw, source)
    for setting in SETTINGS:
        if setting.env in env:
            values[setting.name] = _coerce(setting, env[setting.env], "env")
    for key, raw in (overrides or {}).items():
        if raw is None:
            continue
        setting = BY_NAME.get(key)
        if setting is None:
            raise StartupError(f"unknown setting {key!r}")
        values[key] = _coerce(setting, raw, "command line")
    if values["pg_pool_max"] < values["pg_pool_min"]:
        raise StartupError("pg_pool_max: must be at least pg_pool_min")
    if values["workers"] > 1 and not values["database_url"]:
        raise StartupError(
            f"workers: SQLite allows one server process (one writer), got {values['workers']}; "
            "use workers = 1, or PostgreSQL (database_url) for more"
        )
    if values["files_backend"] == "s3" and not values["s3_bucket"]:
        raise StartupError("s3_bucket: required with files_backend = s3")
    if values["files_backend"] == "s3" and values["max_chunk_bytes"] < 5 * 1024**2:
        raise StartupError("max_chunk_bytes: at least 5 MiB with files_backend = s3 (S3 parts)")
    return Settings(**values)
