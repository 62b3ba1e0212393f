-- Heaps, blocks (projections of their Yjs documents), the append-only update log, relations.
CREATE TABLE heaps (
    id            TEXT PRIMARY KEY,
    owner_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    root_block_id TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    -- The heap's change clock: every block change takes max(now, clock + 1), under this row's
    -- write lock, so change times are unique and commit-ordered within a heap.
    clock         INTEGER NOT NULL
);
CREATE INDEX heaps_owner ON heaps (owner_id);

CREATE TABLE blocks (
    -- A stable integer key for the full-text index (an implicit rowid may change on VACUUM).
    n                      INTEGER PRIMARY KEY,
    id                     TEXT NOT NULL UNIQUE,
    heap_id                TEXT NOT NULL REFERENCES heaps (id) ON DELETE CASCADE,
    sync_version           INTEGER NOT NULL DEFAULT 1,
    type                   TEXT,
    title                  TEXT NOT NULL DEFAULT '',
    text                   TEXT NOT NULL DEFAULT '',
    relations              TEXT NOT NULL DEFAULT '{}',
    files                  TEXT NOT NULL DEFAULT '{}',
    apps                   TEXT NOT NULL DEFAULT '{}',
    created_at             INTEGER NOT NULL,
    created_by             TEXT,
    updated_at             INTEGER NOT NULL,
    deleted_at             INTEGER,
    permanently_deleted_at INTEGER,
    state_vector           BLOB NOT NULL,
    size                   INTEGER NOT NULL DEFAULT 0,
    snapshot               BLOB,
    snapshot_seq           INTEGER NOT NULL DEFAULT 0,
    last_seq               INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX blocks_heap_updated ON blocks (heap_id, updated_at);

CREATE TABLE block_updates (
    block_id   TEXT NOT NULL REFERENCES blocks (id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    data       BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    author_id  TEXT,
    PRIMARY KEY (block_id, seq)
);

CREATE TABLE block_relations (
    block_id  TEXT NOT NULL REFERENCES blocks (id) ON DELETE CASCADE,
    kind      TEXT NOT NULL CHECK (kind IN ('tag', 'mention', 'link')),
    target_id TEXT NOT NULL,
    heap_id   TEXT NOT NULL,
    PRIMARY KEY (block_id, kind, target_id)
);
CREATE INDEX block_relations_target ON block_relations (target_id, kind);

-- Blocks removed for good (trash emptied, heap deleted): what delta reports as deleted.
CREATE TABLE block_tombstones (
    block_id   TEXT PRIMARY KEY,
    heap_id    TEXT NOT NULL,
    deleted_at INTEGER NOT NULL
);
CREATE INDEX block_tombstones_heap ON block_tombstones (heap_id, deleted_at);
