-- State of the object store that must hold across server processes (issue 14); see the
-- PostgreSQL file for the why (SQLite has one process per database, the same rules anyway).
ALTER TABLE uploads ADD COLUMN multipart_id TEXT;

CREATE TABLE file_claims (
    hash       TEXT NOT NULL,
    token      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (hash, token)
);
CREATE TABLE file_deletions (
    hash       TEXT PRIMARY KEY,
    started_at INTEGER NOT NULL
);

-- System jobs (upload expiry) belong to no user: owner_id becomes nullable, which SQLite
-- does by rebuilding the table (rowids kept: they order jobs of the same millisecond).
CREATE TABLE jobs_new (
    id              TEXT PRIMARY KEY,
    owner_id        TEXT REFERENCES users (id) ON DELETE CASCADE,
    heap_id         TEXT NOT NULL DEFAULT '',
    kind            TEXT NOT NULL,
    path            TEXT NOT NULL DEFAULT '',
    state           TEXT NOT NULL,
    files_seen      INTEGER NOT NULL DEFAULT 0,
    files_done      INTEGER NOT NULL DEFAULT 0,
    bytes           INTEGER NOT NULL DEFAULT 0,
    current_path    TEXT NOT NULL DEFAULT '',
    counters        TEXT NOT NULL DEFAULT '{}',
    error           TEXT,
    abort_requested INTEGER NOT NULL DEFAULT 0,
    process_id      TEXT NOT NULL,
    process_host    TEXT NOT NULL DEFAULT '',
    process_pid     INTEGER NOT NULL DEFAULT 0,
    heartbeat_at    INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    started_at      INTEGER,
    finished_at     INTEGER
);
INSERT INTO jobs_new (rowid, id, owner_id, heap_id, kind, path, state, files_seen, files_done,
    bytes, current_path, counters, error, abort_requested, process_id, process_host,
    process_pid, heartbeat_at, created_at, started_at, finished_at)
SELECT rowid, id, owner_id, heap_id, kind, path, state, files_seen, files_done, bytes,
    current_path, counters, error, abort_requested, process_id, process_host, process_pid,
    heartbeat_at, created_at, started_at, finished_at FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
CREATE INDEX jobs_owner_created ON jobs (owner_id, created_at);
CREATE INDEX jobs_active_heartbeat ON jobs (heartbeat_at)
    WHERE state IN ('queued', 'running', 'aborting', 'finishing');
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE UNIQUE INDEX jobs_one_active_scan ON jobs (heap_id, path)
    WHERE kind = 'scan' AND state IN ('queued', 'running', 'aborting', 'finishing');
CREATE UNIQUE INDEX jobs_one_active_reindex ON jobs (owner_id)
    WHERE kind = 'reindex' AND state IN ('queued', 'running', 'aborting', 'finishing');
CREATE UNIQUE INDEX jobs_one_active_system ON jobs (kind)
    WHERE owner_id IS NULL AND state IN ('queued', 'running', 'aborting', 'finishing');
