-- Files by content hash, which blocks hold them, and resumable uploads in progress.
CREATE TABLE files (
    hash        TEXT PRIMARY KEY,          -- lowercase hex SHA-256 of the whole content
    id          TEXT NOT NULL UNIQUE,      -- file_id, for URLs
    size        INTEGER NOT NULL,
    mime_type   TEXT NOT NULL,
    name        TEXT NOT NULL DEFAULT '',
    source_path TEXT,                      -- a scanned file, served in place; NULL: in the store
    meta        TEXT NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL
);

-- Maintained with the projections from each block's files_v0.
CREATE TABLE block_files (
    block_id TEXT NOT NULL REFERENCES blocks (id) ON DELETE CASCADE,
    hash     TEXT NOT NULL,
    heap_id  TEXT NOT NULL,
    PRIMARY KEY (block_id, hash)
);
CREATE INDEX block_files_hash ON block_files (hash);
CREATE INDEX block_files_heap ON block_files (heap_id);
INSERT OR IGNORE INTO block_files (block_id, hash, heap_id)
    SELECT b.id, lower(substr(j.key, 1, 64)), b.heap_id FROM blocks b, json_each(b.files) j
    WHERE length(j.key) >= 64;

CREATE TABLE uploads (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    heap_id    TEXT NOT NULL,
    block_id   TEXT NOT NULL,
    hash       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    chunk_size INTEGER NOT NULL,
    name       TEXT NOT NULL DEFAULT '',
    mime_type  TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    UNIQUE (heap_id, block_id, hash)
);
CREATE INDEX uploads_expiry ON uploads (expires_at);
