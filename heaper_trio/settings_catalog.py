"""Every setting, declared once: name, type, default, help, and how it is checked.

``heaper_trio.settings`` resolves them (file, environment, flags); the TOML loader, the
``HEAPER_*`` variables, the ``serve`` flags and ``docs/configuration.md`` all derive from this
table, so a new setting is one entry here plus its field on ``Settings``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from heaper_trio.settings_values import check_data_dir


@dataclass(frozen=True)
class Setting:
    name: str
    type: type
    default: Any
    help: str
    cli: bool = False  # also a `serve` flag (--name-with-dashes)
    choices: tuple[str, ...] | None = None
    minimum: int | float | None = None
    check: Callable[[Any], str | None] | None = None  # returns an error text or None

    @property
    def env(self) -> str:
        return "HEAPER_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _check_url(value: str) -> str | None:
    if value and not value.startswith(("postgresql://", "postgres://")):
        return "must be empty (embedded SQLite) or start with postgresql:// or postgres://"
    return None


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "host",
        str,
        "127.0.0.1",
        "Address to listen on. Use 0.0.0.0 to accept connections "
        "from other machines (usually a reverse proxy sits in front).",
        cli=True,
    ),
    Setting(
        "port",
        int,
        8470,
        "TCP port to listen on.",
        cli=True,
        minimum=0,
        check=lambda v: None if v <= 65535 else "must be at most 65535",
    ),
    Setting(
        "data_dir",
        str,
        "./data",
        "Directory holding the server key, the embedded SQLite "
        "database and uploaded files. Back this directory up.",
        cli=True,
        check=check_data_dir,
    ),
    Setting(
        "database_url",
        str,
        "",
        "Empty for the embedded SQLite database in data_dir, or a "
        "postgresql:// URL. Several server processes may share one PostgreSQL database "
        "(and must then share data_dir, or only its server key when files are in a bucket).",
        cli=True,
        check=_check_url,
    ),
    Setting(
        "workers",
        int,
        0,
        "Server processes sharing the port (SO_REUSEPORT), watched by one parent that "
        "restarts a worker that dies. 0: automatic, 1 on SQLite (one writer process) and on "
        "PostgreSQL the CPUs this process may use but one (left to the database), at least 1 "
        "and at most 4 (each process holds up to pg_pool_max + 1 database connections). More "
        "than 1 needs PostgreSQL.",
        cli=True,
        minimum=0,
    ),
    Setting("name", str, "Heaper", "Instance name shown to clients by GET /api/."),
    Setting(
        "public_url",
        str,
        "",
        "The URL clients use to reach this server (behind a proxy, "
        "the proxy's URL). Shown by GET /api/.",
    ),
    Setting(
        "auto_approve",
        bool,
        False,
        "Approve new accounts at their first login. When false, "
        "the first account becomes the admin and later ones wait for approval.",
    ),
    Setting(
        "auth_rate_limit",
        int,
        60,
        "Auth requests per minute per client address; per "
        "public key and address the limit is a fifth of this (at least 1), so nobody "
        "can spend another key's budget.",
        minimum=1,
    ),
    Setting(
        "trust_forwarded_for",
        bool,
        False,
        "Take the client address from the last "
        "X-Forwarded-For entry, the one your reverse proxy appends (set only behind a "
        "proxy you control).",
    ),
    Setting("access_token_ttl", int, 900, "Lifetime of access tokens, in seconds.", minimum=10),
    Setting(
        "refresh_token_ttl",
        int,
        30 * 24 * 3600,
        "Lifetime of refresh tokens, in seconds.",
        minimum=60,
    ),
    Setting("challenge_ttl", int, 300, "Lifetime of a login challenge, in seconds.", minimum=1),
    Setting(
        "admin_session_ttl",
        int,
        2 * 3600,
        "How long a session opened with an `admin-link` lasts, in seconds, refreshes included.",
        minimum=60,
    ),
    Setting(
        "max_request_bytes",
        int,
        16 * 1024 * 1024,
        "Largest request body accepted outside of file uploads; larger ones get 413.",
        minimum=1024,
    ),
    Setting(
        "max_sync_batch",
        int,
        1000,
        "Most blocks in one sync push or pull; more get 413.",
        minimum=1,
    ),
    Setting(
        "history_retention_days",
        int,
        30,
        "Days a block's version history is kept (thinned past a day to one version per "
        "hour, past a week to one per day); older history folds into one base version.",
        minimum=1,
    ),
    Setting(
        "sqlite_synchronous",
        str,
        "FULL",
        "SQLite synchronous mode. FULL makes every "
        "acknowledged write survive power loss; commits are grouped, so it costs little.",
        choices=("FULL", "NORMAL"),
    ),
    Setting("pg_pool_min", int, 2, "PostgreSQL: connections kept open per process.", minimum=1),
    Setting("pg_pool_max", int, 10, "PostgreSQL: most connections per process.", minimum=1),
    Setting(
        "graceful_timeout",
        float,
        5.0,
        "Seconds to let requests finish at shutdown before they are cancelled.",
        minimum=0,
    ),
    Setting(
        "log_level", str, "info", "Logging level.", choices=("debug", "info", "warning", "error")
    ),
    Setting(
        "log_format",
        str,
        "text",
        "Log lines as text, or as one JSON object per line (time, level, logger, message, "
        "and the request or connection a line was written for).",
        choices=("text", "json"),
    ),
    Setting(
        "access_log", bool, False, "Log one line per HTTP request and per WebSocket connection."
    ),
    Setting(
        "metrics",
        bool,
        True,
        "Serve Prometheus metrics at GET /metrics (false: that route answers 404).",
    ),
    Setting(
        "metrics_token",
        str,
        "",
        "Empty: GET /metrics is open to anyone who can reach it. Otherwise a scrape must "
        "send Authorization: Bearer <this value> (401 without it).",
    ),
    Setting(
        "max_upload_bytes",
        int,
        20 * 1024**3,
        "Largest file accepted by an upload (direct or resumable); larger ones get 413.",
        minimum=1,
    ),
    Setting(
        "max_direct_upload_bytes",
        int,
        256 * 1024**2,
        "Largest file accepted by the "
        "one-request upload (POST /api/upload/file); bigger files use resumable uploads.",
        minimum=1,
    ),
    Setting(
        "max_chunk_bytes",
        int,
        64 * 1024**2,
        "Largest chunk_size of a resumable upload.",
        minimum=65536,
    ),
    Setting(
        "upload_expiry_hours",
        int,
        168,
        "Hours before an unfinished resumable upload and its chunks are removed.",
        minimum=1,
    ),
    Setting(
        "files_backend",
        str,
        "local",
        "Where uploaded files and generated thumbnails live: local (the data directory) or "
        "s3 (an S3-compatible bucket: AWS S3, MinIO, Garage, Ceph RGW; credentials from the "
        "environment, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY). Files of folder scans "
        "stay where they are.",
        choices=("local", "s3"),
    ),
    Setting("s3_endpoint", str, "", "The store's URL (empty: AWS S3 itself)."),
    Setting("s3_bucket", str, "", "The bucket files go to (required with files_backend = s3)."),
    Setting("s3_region", str, "us-east-1", "The bucket's region."),
    Setting(
        "s3_threads",
        int,
        8,
        "Interactive requests to the bucket at once (HEAD, a Range read's GETs, small PUTs); "
        "never shared with bulk transfers.",
        minimum=1,
    ),
    Setting(
        "s3_bulk_threads",
        int,
        4,
        "Pieces (8 MiB) of whole-object transfers in flight at once: staging a file for a "
        "thumbnail, hashing a completed upload, large PUTs and copies, upload chunks.",
        minimum=1,
    ),
    Setting(
        "s3_bulk_per_user",
        int,
        2,
        "Whole-object transfers one user may run at once (a thumbnail's staging, a "
        "complete); the next one waits for a turn, so one user cannot take all of "
        "s3_bulk_threads.",
        minimum=1,
    ),
    Setting(
        "files_presigned_redirect",
        bool,
        False,
        "With files_backend = s3, answer file downloads (raw and stream) with a 307 to a "
        "presigned URL valid 5 minutes, so the bytes go from the store to the client "
        "directly; the store must then be reachable by clients at s3_endpoint.",
    ),
    Setting(
        "scan_roots",
        str,
        "",
        "Folders on the server that POST /api/scan_folder may "
        "index in place, separated by ':'. Admins may scan anywhere under them, other users "
        "only under <root>/<their user id>/. Empty: scanning is off.",
    ),
    Setting(
        "media_jobs",
        int,
        2,
        "Thumbnails and video frames made at once (each takes a core while it runs).",
        minimum=1,
    ),
    Setting("scan_jobs", int, 2, "Files hashed and probed at once by a folder scan.", minimum=1),
    Setting(
        "job_heartbeat_timeout",
        float,
        10.0,
        "Seconds after which a scan or reindex whose server process stopped sending "
        "heartbeats (it died or hangs) is marked failed, so it can be started again. Each "
        "process beats about every second.",
        minimum=0.3,
    ),
    Setting(
        "ws_outbox_bytes",
        int,
        8 * 1024 * 1024,
        "Live sync: most bytes waiting to be sent "
        "to one WebSocket connection. A client that falls further behind is disconnected "
        "(close code 1013) and resyncs when it reconnects.",
        minimum=65536,
    ),
    Setting(
        "ws_max_message_bytes",
        int,
        16 * 1024 * 1024,
        "Live sync: largest WebSocket "
        "message accepted from a client (larger ones close the connection with 1009).",
        minimum=65536,
    ),
    Setting(
        "ws_max_connections_per_user",
        int,
        64,
        "Live sync: most WebSocket connections "
        "(/ws and /api/ws together) one account may hold at once. The connection that would "
        "exceed it is closed with 4429 once its first document is authorized. Times "
        "ws_outbox_bytes, this bounds what one account can make the server buffer for "
        "clients that stop reading (64 x 8 MiB = 512 MiB by default); older providers open "
        "one socket per document, so keep it above the documents a user has open at once.",
        minimum=1,
    ),
    Setting(
        "ws_compression",
        bool,
        False,
        "Live sync: accept the permessage-deflate "
        "WebSocket extension when a client offers it (Node and browser clients do). Off, "
        "frames go out uncompressed, as Hocuspocus's own server sends them: compressing "
        "costs the server CPU for every frame to every subscriber (about a fifth of its "
        "time in fan-out). Turn it on when bandwidth, not CPU, is scarce. Applies to the "
        "whole server process.",
    ),
    Setting(
        "http_read_timeout",
        float,
        30.0,
        "Seconds the server waits on a silent HTTP "
        "client: for the next request on an idle keep-alive connection, for a request's "
        "head to be complete, and between the pieces of a request body (a stalled body is "
        "answered 408). The connection is then closed. A slow answer is not affected; a "
        "download (any answer) the client stops reading is: a write the client takes "
        "nothing of for this long (plus what it did take, over http_min_body_rate) ends "
        "the connection, so it cannot hold a socket and an open file for ever.",
        minimum=0.1,
    ),
    Setting(
        "http_drain_bytes",
        int,
        1024 * 1024,
        "When an answer (an error, usually) is ready "
        "before the request body has been read, at most this many unread body bytes are "
        "read and discarded so the connection can carry the next request; with more left "
        "the answer says Connection: close and the connection is closed.",
        minimum=0,
    ),
    Setting(
        "http_min_body_rate",
        int,
        16 * 1024,
        "Slowest average rate, in bytes per second, "
        "at which a request body must arrive: a body of N bytes has http_read_timeout + "
        "N / http_min_body_rate seconds in all (a body of unknown length, sent chunked, "
        "must keep up with the same rate), then it is answered 408 and the connection "
        "closed. Bounds how long any request can hold a socket and a temporary file. The "
        "same rate bounds answers: once a write to a client has to wait, the client has "
        "http_read_timeout plus the bytes it accepts from then on over this rate (across "
        "writes, until one goes out without waiting), then the connection is reset. On "
        "links slower than this, lower it or upload smaller chunks.",
        minimum=1,
    ),
    Setting(
        "max_uploads_per_user",
        int,
        8,
        "Upload requests (chunks and one-request "
        "uploads) one user may have in progress at once, per server process; more get "
        "429 with Retry-After before any of their body is stored. Keeps one user from "
        "holding the server's sockets and files.",
        minimum=1,
    ),
)
