-- Full-text search per line (issue 12 item 4): one row per distinct non-empty line of a
-- block's title and text, so that a push re-indexes the lines it changed, not the whole text
-- (storage/search_lines.py). Replaces blocks_fts (0003), which indexed title and text whole.
DROP TRIGGER IF EXISTS blocks_fts_insert;
DROP TRIGGER IF EXISTS blocks_fts_delete;
DROP TRIGGER IF EXISTS blocks_fts_update;
DROP TABLE IF EXISTS blocks_fts;

CREATE TABLE block_lines (
    n       INTEGER PRIMARY KEY,  -- the full-text index's rowid
    block_n INTEGER NOT NULL,     -- blocks.n
    key     INTEGER NOT NULL,     -- search_lines.line_key(body): finds a line without its text
    body    TEXT NOT NULL,
    uses    INTEGER NOT NULL      -- how many times the line occurs in title and text
);
CREATE INDEX block_lines_key ON block_lines (block_n, key);
CREATE VIRTUAL TABLE block_lines_fts USING fts5 (
    body, content = 'block_lines', content_rowid = 'n', tokenize = 'unicode61'
);
CREATE TRIGGER block_lines_fts_insert AFTER INSERT ON block_lines BEGIN
    INSERT INTO block_lines_fts (rowid, body) VALUES (new.n, new.body);
END;
CREATE TRIGGER block_lines_fts_delete AFTER DELETE ON block_lines BEGIN
    INSERT INTO block_lines_fts (block_lines_fts, rowid, body) VALUES ('delete', old.n, old.body);
END;
CREATE TRIGGER blocks_lines_delete AFTER DELETE ON blocks BEGIN
    DELETE FROM block_lines WHERE block_n = old.n;
END;

-- Existing blocks are indexed once, in Python, right after the migrations run
-- (sqlite/search.py: backfill), which empties this list.
CREATE TABLE block_lines_todo (block_n INTEGER PRIMARY KEY);
INSERT INTO block_lines_todo (block_n) SELECT n FROM blocks;
