-- Block history kept apart from the load path (issue 10). Compaction moves the log rows it
-- folds into the snapshot here instead of deleting them; loading a block never reads this table.
-- A row covers the updates first_seq..seq of one block: one pushed update (level 0), or
-- consecutive ones merged by the thinning pass (level 1: one row per hour, 2: per day).
-- kind 'update' rows are Yjs updates; 'restore' and 'snapshot' rows are full states (bases):
-- the state as of seq S is the merge of the rows from the latest base at or before S up to S.
-- A 'snapshot' row (level 3) holds everything older than the retention, or, for blocks that
-- existed before this migration, the snapshot their compacted history was folded into.
CREATE TABLE block_history (
    block_id     TEXT NOT NULL REFERENCES blocks (id) ON DELETE CASCADE,
    seq          INTEGER NOT NULL,
    first_seq    INTEGER NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('update', 'restore', 'snapshot')),
    level        INTEGER NOT NULL DEFAULT 0,
    sync_version INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    author_id    TEXT,
    data         BLOB NOT NULL,
    PRIMARY KEY (block_id, seq)
);
-- The thinning pass looks for rows older than a cut-off that are not thinned to their age yet.
CREATE INDEX block_history_age ON block_history (created_at, level);

INSERT INTO block_history (block_id, seq, first_seq, kind, level, sync_version, created_at,
                           author_id, data)
SELECT b.id, b.snapshot_seq, 1, 'snapshot', 0, b.sync_version,
       COALESCE((SELECT MIN(u.created_at) FROM block_updates u WHERE u.block_id = b.id),
                b.updated_at),
       NULL, b.snapshot
FROM blocks b WHERE b.snapshot IS NOT NULL AND b.snapshot_seq > 0;
