-- A push into a big document costs what the update costs (issue 12 item 4). SQLite rewrites a
-- whole row, overflow pages included, whenever one of its columns changes (a row of a
-- different size is written anew: 16 MB of WAL for one changed byte next to an 8 MB blob).
-- So the two big values of a block leave its row:
-- * texts of 256 Ki characters or more are kept in pieces (storage/sqlite/text_parts.py);
--   blocks.text holds '' and blocks.text_parts a token (not 0) for them;
-- * the compacted snapshot is kept in block_snapshots; blocks.snapshot stays NULL.
CREATE TABLE block_text_parts (
    block_n INTEGER NOT NULL REFERENCES blocks (n) ON DELETE CASCADE,
    pos     INTEGER NOT NULL,  -- orders the pieces; gaps leave room for pieces in between
    body    TEXT NOT NULL,
    PRIMARY KEY (block_n, pos)
);
ALTER TABLE blocks ADD COLUMN text_parts INTEGER NOT NULL DEFAULT 0;

CREATE TABLE block_snapshots (
    block_n  INTEGER PRIMARY KEY REFERENCES blocks (n) ON DELETE CASCADE,
    snapshot BLOB NOT NULL
);
INSERT INTO block_snapshots (block_n, snapshot)
    SELECT n, snapshot FROM blocks WHERE snapshot IS NOT NULL;
UPDATE blocks SET snapshot = NULL WHERE snapshot IS NOT NULL;
