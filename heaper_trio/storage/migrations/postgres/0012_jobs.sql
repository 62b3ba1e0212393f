-- Background jobs (scans, reindexes) of every server process on this database (issue 14):
-- listed and aborted from any process; a job whose process stopped beating (heartbeat_at) is
-- failed by another. Progress columns are what the scan.progress events carry; the other
-- counters are one JSON object. Times are Unix ms.
CREATE TABLE jobs (
    id              TEXT PRIMARY KEY,
    owner_id        TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    heap_id         TEXT NOT NULL DEFAULT '',   -- '' for a reindex of all the owner's heaps
    kind            TEXT NOT NULL,              -- 'scan' or 'reindex'
    path            TEXT NOT NULL DEFAULT '',
    state           TEXT NOT NULL,              -- queued running aborting finishing done aborted failed
    files_seen      BIGINT NOT NULL DEFAULT 0,
    files_done      BIGINT NOT NULL DEFAULT 0,
    bytes           BIGINT NOT NULL DEFAULT 0,
    current_path    TEXT NOT NULL DEFAULT '',
    counters        TEXT NOT NULL DEFAULT '{}',
    error           TEXT,
    abort_requested BOOLEAN NOT NULL DEFAULT FALSE,
    process_id      TEXT NOT NULL,              -- random per server start
    process_host    TEXT NOT NULL DEFAULT '',
    process_pid     INTEGER NOT NULL DEFAULT 0,
    heartbeat_at    BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    started_at      BIGINT,
    finished_at     BIGINT,
    seq             BIGSERIAL                   -- insertion order: ties of created_at (SQLite: rowid)
);
-- A user's jobs, newest first (active_scans, GET /api/scans).
CREATE INDEX jobs_owner_created ON jobs (owner_id, created_at);
-- The reaper's look-up: active jobs by heartbeat (few rows: only active ones are indexed).
CREATE INDEX jobs_active_heartbeat ON jobs (heartbeat_at)
    WHERE state IN ('queued', 'running', 'aborting', 'finishing');
-- Forgetting finished jobs after a day.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
-- One active scan per folder of a heap, one active reindex per owner, whichever process asks
-- (overlapping folders are checked by the server before; this closes the race between two
-- processes starting the same job at once).
CREATE UNIQUE INDEX jobs_one_active_scan ON jobs (heap_id, path)
    WHERE kind = 'scan' AND state IN ('queued', 'running', 'aborting', 'finishing');
CREATE UNIQUE INDEX jobs_one_active_reindex ON jobs (owner_id)
    WHERE kind = 'reindex' AND state IN ('queued', 'running', 'aborting', 'finishing');
