-- Folder scans: what each scanned path of a heap became (a file or folder block) and what it
-- was when last seen, so a rescan skips unchanged files (same size and mtime: no re-hash) and
-- marks those gone from disk. Written in the same transaction as the blocks it points at.
CREATE TABLE scan_entries (
    heap_id    TEXT NOT NULL REFERENCES heaps (id) ON DELETE CASCADE,
    path       TEXT NOT NULL,              -- absolute real path on the server
    kind       TEXT NOT NULL,              -- 'file' or 'folder'
    block_id   TEXT NOT NULL,
    folder_id  TEXT,                       -- the folder block it is tagged with
    size       INTEGER NOT NULL DEFAULT 0,
    mtime_ns   INTEGER NOT NULL DEFAULT 0,
    hash       TEXT NOT NULL DEFAULT '',   -- lowercase hex SHA-256 (files)
    missing    INTEGER NOT NULL DEFAULT 0, -- gone from disk at the last complete scan
    scan_id    TEXT NOT NULL,              -- the last scan that saw it
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (heap_id, path)
);
CREATE INDEX scan_entries_hash ON scan_entries (hash);
CREATE INDEX scan_entries_block ON scan_entries (block_id);
